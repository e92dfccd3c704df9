# SPDX-License-Identifier: MIT
"""libquota for Python: share one LLM API's rate limits and spend budget
between every process and thread of a host, through the segment quotad serves.

A thin layer over the C library (libquota.so.2, loaded with ctypes): the
library does all the accounting, this package adds context managers,
exceptions, timeouts in seconds, interruptible waits, asyncio and fork safety.

    import libquota
    with libquota.Client() as c:                # segment: argument, $QUOTA_SEGMENT, "quota"
        q = c.quota("llama-4-scout")
        with q.reserve(input_tokens=700, output_tokens=1000, timeout=5.0) as t:
            resp = call_the_api()
            t.commit(input_tokens=resp.usage.prompt_tokens,
                     output_tokens=resp.usage.completion_tokens)

libquota 2.1: priority lanes (``q.reserve(..., lane="interactive")``),
learned output estimates (``output_tokens=0, max_output_tokens=N``),
reservations that follow a stream (``t.extend()``, ``t.settle_partial()``).

See python-libquota(3) (docs/man/python-libquota.3) for the whole API.
"""

import asyncio
import contextlib
import ctypes
import errno as _errno
import math
import os
import re
import threading
import time
import weakref

from . import _lib

__all__ = [
    "Client", "Quota", "Ticket",
    "QuotaError", "RetryLater", "TooBig", "BudgetExhausted", "NoSuchQuota", "NoSuchLane",
]
__version__ = "2.2.0"

# A blocking reserve sleeps in the C library at most this long at a time, so
# that a signal (Ctrl-C) is handled within about this delay.
_SLICE_NS = 50_000_000
# areserve's polls while only an in-flight slot is missing (the library says
# "retry after 1 ms"): from 1 ms, doubling, to this.
_POLL_MAX_NS = 50_000_000
_NS = 1_000_000_000
# Largest count the library accepts in a cost (QC_COST_MAX).
_COST_MAX = 2**62
# Lane names as quotad accepts them.
_LANE_NAME = re.compile(r"[A-Za-z0-9._-]{1,15}\Z")


# ---- Errors -----------------------------------------------------------------

class QuotaError(Exception):
    """A libquota call failed. ``errno`` is the positive errno value the C
    library returned (negated there), ``strerror`` its quota_strerror()
    text."""

    def __init__(self, err, message=None):
        self.errno = err
        self.strerror = _strerror(err)
        super().__init__(message or self.strerror)

    def __str__(self):
        return self.args[0] if self.args else self.strerror


class RetryLater(QuotaError):
    """Not admissible within the timeout (EAGAIN); nothing was charged.
    ``retry_after``: seconds until a retry is worth it."""

    def __init__(self, retry_after_ns, message=None):
        self.retry_after = retry_after_ns / _NS
        super().__init__(_errno.EAGAIN, message or
                         "not admissible within the timeout; retry after %.3f s" % self.retry_after)


class TooBig(QuotaError):
    """Can never be admitted (E2BIG): a cost above a limit's capacity, input +
    output above the context window, or a spend above the budget."""


class BudgetExhausted(QuotaError):
    """The spend budget of the current day or month is reached (EDQUOT)."""


class NoSuchQuota(QuotaError, KeyError):
    """No quota of that name, or a reload removed it (ENOENT). Also a
    KeyError, as a missing key of a mapping."""


class NoSuchLane(QuotaError, ValueError):
    """The quota has no priority lane of that name (ENOENT): a quota
    without lanes has none, and a lane name is 1 to 15 characters of
    A-Z a-z 0-9 . _ -. Also a ValueError (a bad argument). ``quota`` and
    ``lane``: the names asked for."""

    def __init__(self, quota, lane, message):
        self.quota = quota
        self.lane = lane
        super().__init__(_errno.ENOENT, message)


_BY_ERRNO = {_errno.E2BIG: TooBig, _errno.EDQUOT: BudgetExhausted, _errno.ENOENT: NoSuchQuota}


def _strerror(err):
    try:
        s = _lib.load().quota_strerror(-err)
        return s.decode() if s else os.strerror(err)
    except OSError:
        return os.strerror(err)


def _error(rc, what):
    """The exception for the negative errno @rc returned while doing @what."""
    err = -rc
    cls = _BY_ERRNO.get(err, QuotaError)
    return cls(err, "%s: %s" % (what, _strerror(err)))


def _seconds_to_ns(seconds, what):
    if seconds is None:
        return None
    if seconds != seconds or seconds < 0:
        raise ValueError("%s must be None or a number of seconds >= 0" % what)
    return min(int(seconds * _NS), 2**62)


def _count(v, what):
    """@v checked as a token or request count."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _COST_MAX:
        raise ValueError("%s must be an integer from 0 to 2**62, not %r" % (what, v))
    return v


# ---- Waiting ----------------------------------------------------------------
# One copy of each way to wait, for reservations and extensions alike: an
# attempt(timeout_ns) returns (0, result) or (negative errno, retry_after_ns).

def _wait_in_slices(attempt, timeout, what):
    """Call @attempt until it succeeds, the library sleeping at most one
    slice (50 ms) at a time and Python sleeping (interruptibly, GIL
    released) in between, so that a signal lands within about a slice.
    ``timeout``: None, 0 or seconds. Raises RetryLater as soon as the wait
    cannot succeed within it, the errno's exception (``what`` says what
    was tried) for other refusals."""
    tmo = _seconds_to_ns(timeout, "timeout")
    deadline = None if tmo is None else time.monotonic_ns() + tmo
    while True:
        left = None if deadline is None else max(0, deadline - time.monotonic_ns())
        slice_ns = _SLICE_NS if left is None else min(left, _SLICE_NS)
        rc, r = attempt(slice_ns)
        if rc == 0:
            return r
        if rc != -_errno.EAGAIN:
            raise _error(rc, what)
        if left is not None and (left <= slice_ns or r > left):
            raise RetryLater(r)
        # Come back half a slice before the admission time, so that the
        # next call takes its place in line and sleeps the rest.
        pause = r - _SLICE_NS // 2
        if pause > 0:
            time.sleep(pause / _NS)


async def _poll(attempt, timeout, what):
    """_wait_in_slices for asyncio: @attempt is called with a timeout of 0
    (never sleeps in the library) and the waits are asyncio.sleep(), until
    the time the library says is worth a retry; while only an in-flight
    slot is missing (it says 1 ms) polls from 1 ms up to 50 ms."""
    tmo = _seconds_to_ns(timeout, "timeout")
    deadline = None if tmo is None else time.monotonic_ns() + tmo
    poll = 1_000_000
    while True:
        rc, r = attempt(0)
        if rc == 0:
            return r
        if rc != -_errno.EAGAIN:
            raise _error(rc, what)
        left = None if deadline is None else deadline - time.monotonic_ns()
        if left is not None and (left <= 0 or r > left):
            raise RetryLater(r)
        if r <= 1_000_000:  # waiting for an in-flight slot: poll
            r, poll = poll, min(2 * poll, _POLL_MAX_NS)
        if left is not None:
            r = min(r, left)
        await asyncio.sleep(r / _NS)


# ---- Handles and fork -------------------------------------------------------

class _Handle:
    """One quota_open() of one process. Calls go through use() so that close()
    waits for the calls other threads have in progress (quota_close() must not
    run while a thread uses the handle) and later calls fail cleanly."""

    def __init__(self, segment):
        lib = _lib.load()
        ptr = ctypes.c_void_p()
        rc = lib.quota_open(segment, ctypes.byref(ptr))
        if rc < 0:
            name = segment.decode() if segment else "$QUOTA_SEGMENT or quota"
            if rc == -_errno.ENOENT:
                raise QuotaError(_errno.ENOENT, "segment %s: no such segment (is quotad running?)" % name)
            raise _error(rc, "segment %s" % name)
        self.lib = lib
        self.ptr = ptr
        self.pid = os.getpid()
        self.cond = threading.Condition(threading.Lock())
        self.users = 0
        self.closed = False
        _handles.add(self)

    def enter(self):
        with self.cond:
            if self.closed:
                raise QuotaError(_errno.EBADF, "the client is closed")
            self.users += 1
        return self.ptr

    def leave(self):
        with self.cond:
            self.users -= 1
            if self.users == 0 and self.closed:
                self.cond.notify_all()

    def close(self):
        with self.cond:
            if self.closed:
                return
            self.closed = True
            while self.users:
                self.cond.wait()
        # In a forked child this only frees memory: the library knows the
        # slots are the parent's.
        self.lib.quota_close(self.ptr)

    def __del__(self):
        try:
            if not self.closed:
                self.closed = True
                self.lib.quota_close(self.ptr)
        except Exception:
            pass


_handles = weakref.WeakSet()
_clients = weakref.WeakSet()


def _after_fork_child():
    # Locks may have been held by threads the child does not have. The
    # parent's handles stay usable for what the library allows a child (it
    # answers ECHILD), clients reopen on their next call.
    for h in list(_handles):
        h.cond = threading.Condition(threading.Lock())
        h.users = 0
    for c in list(_clients):
        c._lock = threading.Lock()
        c._h = None


os.register_at_fork(after_in_child=_after_fork_child)


# ---- Client -----------------------------------------------------------------

class Client:
    """A process's attachment to one segment.

    ``segment``: the shm object's name (without "/"); None means
    $QUOTA_SEGMENT, else "quota". Raises QuotaError if the segment cannot be
    attached (errno ENOENT: quotad has not created it; EACCES: this user is
    not in the segment's group).

    One Client per process is enough: any number of threads may use it (each
    thread takes a client slot of the segment on its first call, so the
    segment's max_clients counts threads). After os.fork() a child reopens
    the segment on its first call; tickets taken before the fork stay the
    parent's (a child's commit is refused with errno ECHILD). close() waits
    for calls other threads have in progress; later calls raise QuotaError
    (EBADF)."""

    def __init__(self, segment=None):
        self._segment = segment.encode() if isinstance(segment, str) else segment
        self._lock = threading.Lock()
        self._closed = False
        self._h = _Handle(self._segment)
        _clients.add(self)

    def _handle(self):
        h = self._h
        if h is not None and h.pid == os.getpid():
            return h
        with self._lock:
            if self._closed:
                raise QuotaError(_errno.EBADF, "the client is closed")
            if self._h is None or self._h.pid != os.getpid():
                self._h = _Handle(self._segment)  # a forked child's own
            return self._h

    def _call(self, fn, *args):
        h = self._handle()
        ptr = h.enter()
        try:
            return fn(ptr, *args)
        finally:
            h.leave()

    def quota(self, name):
        """The Quota named ``name``; raises NoSuchQuota if there is none."""
        lib = _lib.load()
        qid = self._call(lib.quota_find, name.encode())
        if qid < 0:
            raise _error(qid, "quota %r" % name)
        return Quota(self, name, qid)

    def quotas(self):
        """Names of the segment's quotas (removed ones left out)."""
        lib = _lib.load()
        names = []
        for qid in range(self._call(lib.quota_count)):
            info = _lib.Info()
            if self._call(lib.quota_info, qid, ctypes.byref(info), ctypes.sizeof(info)) == 0 \
                    and not info.removed:
                names.append(info.name.decode())
        return names

    def now_ns(self):
        """The segment's clock in nanoseconds (CLOCK_MONOTONIC, or the time
        a manual-clock segment was set to)."""
        return self._call(_lib.load().quota_now)

    def set_clock(self, now_ns):
        """Move a manual-clock segment's clock to ``now_ns`` (tests)."""
        rc = self._call(_lib.load().quota_clock_set, int(now_ns))
        if rc < 0:
            raise _error(rc, "set_clock")

    def close(self):
        """Detach: open tickets give their in-flight slots back (what they
        were charged stays charged). Waits for calls in progress in other
        threads. Idempotent."""
        with self._lock:
            self._closed = True
            h, self._h = self._h, None
        if h is not None and h.pid == os.getpid():
            h.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        seg = self._segment.decode() if self._segment else None
        return "<libquota.Client segment=%r%s>" % (seg, " closed" if self._closed else "")


# ---- Quota ------------------------------------------------------------------

class Quota:
    """One quota of a segment (usually an API key x model). From
    Client.quota(); usable from any thread, and in a forked child."""

    def __init__(self, client, name, qid):
        self.client = client
        self.name = name
        self.id = qid
        self._lanes = {}  # lane name -> index, resolved once (lane_index)

    def _cost(self, requests, input_tokens, output_tokens):
        return _lib.Cost(_count(requests, "requests"), _count(input_tokens, "input_tokens"),
                         _count(output_tokens, "output_tokens"))

    def lane_index(self, lane):
        """The index of the priority lane named ``lane`` (0 = the highest),
        asked of the library once and cached by this Quota (a reload that
        reorders the lanes needs a new Client.quota()). Raises NoSuchLane if
        the quota has no such lane (a quota without lanes has none),
        NoSuchQuota if it was removed, TypeError if ``lane`` is not a str."""
        i = self._lanes.get(lane)
        if i is not None:
            return i
        if not isinstance(lane, str):
            raise TypeError("lane must be a str (a lane's name), not %s" % type(lane).__name__)
        if not _LANE_NAME.match(lane):
            raise NoSuchLane(self.name, lane, "quota %r has no lane %r: lane names are 1 to 15 "
                             "characters of A-Z a-z 0-9 . _ -" % (self.name, lane))
        rc = self.client._call(_lib.load().quota_lane, self.id, lane.encode())
        if rc == -_errno.ENOENT:
            st = self.status()  # NoSuchQuota if the quota itself is gone
            if st["removed"]:
                raise NoSuchQuota(_errno.ENOENT, "quota %r: removed by a reload" % self.name)
            raise NoSuchLane(self.name, lane, "quota %r has no lane %r (%s)" % (
                self.name, lane, "it has %d lanes" % st["lanes"] if st["lanes"] else "it has no lanes"))
        if rc < 0:
            raise _error(rc, "lane %r of %r" % (lane, self.name))
        self._lanes[lane] = rc
        return rc

    def _opts(self, lane, max_output_tokens):
        """struct quota_reserve_opts for @lane and @max_output_tokens, its
        place in a lower lane's line that of the first slice: every slice
        of one reserve() passes when it began (queued_since_ns)."""
        o = _lib.ReserveOpts()
        _lib.load().quota_reserve_opts_init(ctypes.byref(o), ctypes.sizeof(o))
        if lane is not None:
            o.lane = self.lane_index(lane)
        if max_output_tokens:
            o.max_output_tokens = max_output_tokens
        o.queued_since_ns = max(0, self.client.now_ns())
        return o

    def _try(self, cost, opts, lane, timeout_ns):
        """One quota_reserve_ex(): (0, Ticket) or (negative errno, retry
        ns). Nothing is leaked if an exception (KeyboardInterrupt) lands
        after the library admitted: a filled ticket is cancelled."""
        h = self.client._handle()
        ptr = h.enter()
        lib = h.lib
        t = _lib.Ticket()
        try:
            rc = lib.quota_reserve_ex(ptr, self.id, ctypes.byref(cost), timeout_ns,
                                      None if opts is None else ctypes.byref(opts), ctypes.byref(t))
            if rc == 0:
                return 0, Ticket(self, h, t, cost, opts, lane)
        except BaseException:
            if lib.quota_ticket_time(ctypes.byref(t)) >= 0:
                lib.quota_cancel(ptr, ctypes.byref(t))
            raise
        finally:
            h.leave()
        return rc, t.retry_after_ns

    def _prepare(self, input_tokens, output_tokens, requests, lane, max_output_tokens):
        cost = self._cost(requests, input_tokens, output_tokens)
        if max_output_tokens is not None:
            _count(max_output_tokens, "max_output_tokens")
        return cost, self._opts(lane, max_output_tokens)

    def reserve(self, input_tokens=0, output_tokens=0, requests=1, timeout=None, *,
                lane=None, max_output_tokens=None):
        """Reserve ``requests`` requests and ``input_tokens`` +
        ``output_tokens`` tokens against every limit of the quota, all or
        nothing, and return the open Ticket.

        ``timeout``: None waits as long as it takes, 0 never waits, else the
        most seconds to wait. Waiting releases the GIL and happens in slices
        of at most 50 ms, so that Ctrl-C (KeyboardInterrupt) lands promptly
        and leaves nothing reserved. Raises RetryLater (``retry_after``) as
        soon as the reservation cannot be admitted within the timeout;
        TooBig if it can never be; BudgetExhausted when the spend budget is
        reached; NoSuchQuota if the quota was removed; QuotaError otherwise.

        ``lane``: the name of one of the quota's priority lanes (libquota
        2.1); None is its last (lowest) one. A lane below the top is
        admitted only while the headroom of the lanes above stays free, and
        waits without a place in line. Unknown names raise NoSuchLane.
        ``max_output_tokens``: on a quota with "auto_estimate", a
        reservation of 0 output tokens reserves the learned estimate,
        bounded by this (the request's max_tokens); see Ticket for what
        commit() then assumes.
        """
        cost, opts = self._prepare(input_tokens, output_tokens, requests, lane, max_output_tokens)
        start = time.monotonic_ns()
        t = _wait_in_slices(lambda ns: self._try(cost, opts, lane, ns), timeout,
                            "reserve on %r" % self.name)
        return t._handed(start)

    async def areserve(self, input_tokens=0, output_tokens=0, requests=1, timeout=None, *,
                       lane=None, max_output_tokens=None):
        """reserve() for asyncio: never blocks the event loop. Tries at once
        and, if the budget is short, awaits asyncio.sleep() until the time
        the library says is worth a retry. A task cancelled while it waits
        holds no ticket. Same arguments, result and exceptions."""
        cost, opts = self._prepare(input_tokens, output_tokens, requests, lane, max_output_tokens)
        start = time.monotonic_ns()
        t = await _poll(lambda ns: self._try(cost, opts, lane, ns), timeout, "reserve on %r" % self.name)
        return t._handed(start)

    def backoff(self, seconds):
        """The provider answered 429: pause this quota for every process of
        the host for ``seconds`` (at most a day). A later deadline wins."""
        ns = _seconds_to_ns(seconds, "seconds")
        rc = self.client._call(_lib.load().quota_backoff, self.id, ns)
        if rc < 0:
            raise _error(rc, "backoff on %r" % self.name)

    def feedback(self, headers):
        """Fold a provider response's rate-limit headers into the shared
        state: retry-after and x-ratelimit-{limit,remaining,reset}-
        {requests,tokens}. ``headers``: a mapping (httpx.Headers, dict...)
        or an iterable of (name, value) pairs; other headers are ignored,
        and so are malformed values. It only ever tightens the limits.
        Returns True if the provider reports a lower limit than the quota's
        configuration (which should then be fixed), else False."""
        lib = _lib.load()
        fb = _lib.Feedback()
        lib.quota_feedback_init(ctypes.byref(fb), ctypes.sizeof(fb))
        items = headers.multi_items() if hasattr(headers, "multi_items") else \
            headers.items() if hasattr(headers, "items") else headers
        used = 0
        for name, value in items:
            if isinstance(name, str):
                name = name.encode("latin-1", "replace")
            if isinstance(value, str):
                value = value.encode("latin-1", "replace")
            if b"\0" in name or b"\0" in value:
                continue
            if lib.quota_feedback_header(ctypes.byref(fb), name, value) == 1:
                used += 1
        if not used:
            return False
        rc = self.client._call(lib.quota_feedback_apply, self.id, ctypes.byref(fb))
        if rc < 0:
            raise _error(rc, "feedback on %r" % self.name)
        return rc == 1

    def status(self):
        """A snapshot of the quota as a dict: its limits (each with limit,
        capacity, available and period in seconds), in flight, spend and
        budgets in USD, admissions and refusals; and (2.1) its number of
        priority lanes, what it learned about output lengths ("learning":
        None unless the quota learns) and its alarms; (2.2) the prompt and
        actual/estimated output p50/p99 in "learning" and the tickets still
        open in alarms["held_open"]. See python-libquota(3)."""
        info = _lib.Info()
        rc = self.client._call(_lib.load().quota_info, self.id, ctypes.byref(info),
                               ctypes.sizeof(info))
        if rc < 0:
            raise _error(rc, "status of %r" % self.name)
        limits = {}
        for i, kind in enumerate(_lib.RATE_KINDS):
            li = info.rate[i]
            if li.limit:
                limits[kind] = {"limit": li.limit, "capacity": li.capacity,
                                "available": li.available, "period": li.period_ns / _NS}
        return {
            "name": info.name.decode(),
            "removed": bool(info.removed),
            "refund": "actual" if info.refund_actual else "none",
            "limits": limits,
            "max_inflight": info.max_inflight,
            "inflight": info.inflight,
            "context_window": info.context_window,
            "price_per_mtok": {"input": info.price_input_pusd / 1e6,
                               "output": info.price_output_pusd / 1e6},
            "budget_usd": {"day": info.budget_day_nusd / 1e9, "month": info.budget_month_nusd / 1e9},
            "spent_usd": {"day": info.spent_day_nusd / 1e9, "month": info.spent_month_nusd / 1e9},
            "paused": info.paused_ns / _NS,
            "admitted": info.admitted,
            "admitted_input_tokens": info.admitted_input_tokens,
            "admitted_output_tokens": info.admitted_output_tokens,
            "rejected": {r: info.rejected[i] for i, r in enumerate(_lib.REJECT_REASONS)},
            "reclaimed": info.reclaimed,
            "repaired": info.repaired,
            "generation": info.generation,
            "lanes": info.lanes,
            "learning": _learning(info),
            "alarms": {
                "held": info.alarm_held,
                "over_estimate": info.alarm_over,
                "held_s": info.alarm_held_ns / _NS if info.alarm_held_ns else None,
                "over_estimate_pct": info.alarm_over_pct or None,
                "held_open": _held_open(info),
            },
        }

    def __repr__(self):
        return "<libquota.Quota %r id=%d>" % (self.name, self.id)


def _learning(info):
    """status()'s "learning": None for a quota that does not learn."""
    if not info.learn:
        return None
    return {
        "auto_estimate": info.learn == 2,
        # None: not learned yet (fewer than 100 samples); inf: 2048 or more,
        # i.e. the caller's max_tokens (min(suggested, max_tokens) works).
        "suggested_output_tokens": _learned(info.learned_output),
        "samples": info.learned_samples,
        "output_hist": list(info.output_hist),
        # 2.2 (a 2.1 library zeroes them: None, not known)
        "prompt_tokens": {"p50": _learned(info.learned_input_p50),
                          "p99": _learned(info.learned_input_p99)},
        "output_ratio": {"p50": _learned(info.learned_ratio_p50, ratio=True),
                         "p99": _learned(info.learned_ratio_p99, ratio=True)},
    }


def _learned(edge, ratio=False):
    """A learned bucket edge of quota_info: None for 0 (not yet), math.inf
    for the open last bucket; tokens as the library gives them (the
    bucket's largest value); a ratio (in 1/256) as the float below which
    its bucket lies, as quotactl and the metrics show it."""
    if edge == 0:
        return None
    if edge == _lib.LEARNED_OPEN:
        return math.inf
    return (edge + 1) / _lib.RATIO_ONE if ratio else edge


def _held_open(info):
    """status()'s alarms["held_open"]: None while the quota has no held_s
    alarm or quotad has not counted yet (no phase flip: a 2.1 library,
    which zeroes the count, never shows one)."""
    return info.held_open if info.alarm_held_ns and info.held_flips else None


# ---- Ticket -----------------------------------------------------------------

class Ticket:
    """An admitted reservation. Settle it once: commit() with what the
    provider reports as used, or cancel() if the call never reached it.
    While the call runs (a stream), extend() takes more and
    settle_partial() gives back what it will not use.

    As a context manager (``with`` or ``async with``), leaving the block
    without commit() cancels. A ticket dropped unsettled stays charged as
    reserved and holds its in-flight slot until the Client is closed: no
    finaliser settles it, because Python ignores exceptions raised in
    finalisers and one could swallow a Ctrl-C. (A KeyboardInterrupt that
    lands between reserve() returning and the ``with`` block starting can
    leave such a ticket; one that lands while reserve() waits leaves
    nothing.) Any thread of the process may settle or extend it; a forked
    child cannot (QuotaError, errno ECHILD).

    Attributes: ``quota``, ``lane`` (the name asked for, or None),
    ``requests``, ``input_tokens``, ``output_tokens`` (what the ticket
    holds, after extensions and partial settles), ``max_output_tokens``
    (the bound given to reserve(), or None), ``waited`` (seconds reserve()
    or areserve() took before admitting), ``admitted_ns`` (admission time
    on the segment's clock), ``settled``.

    ``output_tokens`` is None when the library chose the estimate: a
    reservation of 0 output tokens with ``max_output_tokens`` (on a quota
    with "auto_estimate" it holds the learned estimate, which the C API
    does not report). commit() without output_tokens then commits
    ``max_output_tokens`` plus any extensions' output (the most the call
    may have produced), and settle_partial() needs output_tokens. (Without
    ``max_output_tokens``, 0 output tokens on such a quota also reserve the
    learned estimate, bounded by the context window only, and the ticket
    says 0: pass the bound.)"""

    def __init__(self, quota, handle, raw, cost, opts=None, lane=None):
        self.quota = quota
        self.lane = lane
        self.requests = cost.requests
        self.input_tokens = cost.input_tokens
        self.output_tokens = cost.output_tokens
        self.max_output_tokens = None
        if opts is not None and opts.max_output_tokens:
            self.max_output_tokens = opts.max_output_tokens
            if not cost.output_tokens:
                self.output_tokens = None
        # commit()'s default output while output_tokens is unknown.
        self._out_bound = self.max_output_tokens or 0
        self.waited = raw.waited_ns / _NS
        self.admitted_ns = handle.lib.quota_ticket_time(ctypes.byref(raw))
        self.settled = False
        self._h = handle
        self._raw = raw
        self._lock = threading.Lock()

    def _handed(self, start_ns):
        """Set waited and return self; cancelled if an exception (Ctrl-C)
        lands before it is returned."""
        try:
            self.waited = (time.monotonic_ns() - start_ns) / _NS
            return self
        except BaseException:
            try:
                self.cancel()
            except QuotaError:
                pass
            raise

    def _call(self, fn, what, *args):
        """@fn(handle, ticket, *args) under the ticket's lock: its return
        code; ECHILD and a settled ticket reported as such. In a forked
        child the lock is not taken: a parent's thread may have held it at
        the fork (an extension holds it for a slice), and the library
        refuses the child (ECHILD) before it touches the ticket."""
        with self._lock if self._h.pid == os.getpid() else contextlib.nullcontext():
            if self.settled:
                raise QuotaError(_errno.EINVAL, "%s: the ticket is settled already" % what)
            h = self._h
            ptr = h.enter()
            try:
                rc = fn(ptr, ctypes.byref(self._raw), *args)
            finally:
                h.leave()
            if rc == -_errno.ECHILD:
                raise QuotaError(_errno.ECHILD, "%s: the ticket belongs to the parent process" % what)
            return rc

    def _settle(self, fn, what, *cost):
        def call(ptr, t):
            rc = fn(ptr, t, *cost)
            if rc == 0:
                self.settled = True
            return rc

        rc = self._call(call, what)
        if rc < 0:
            raise _error(rc, what)

    def commit(self, input_tokens=None, output_tokens=None, requests=None):
        """Settle with the usage the provider reported (None: what the
        ticket holds; see the class for a learned estimate). Unused tokens
        go back where the quota refunds actual usage; usage above the
        reservation is charged as debt."""
        if output_tokens is None:
            output_tokens = self._out_bound if self.output_tokens is None else self.output_tokens
        c = self.quota._cost(self.requests if requests is None else requests,
                             self.input_tokens if input_tokens is None else input_tokens,
                             output_tokens)
        self._settle(self._h.lib.quota_commit, "commit", ctypes.byref(c))

    def cancel(self):
        """The call never reached the provider: give everything back."""
        self._settle(self._h.lib.quota_cancel, "cancel")

    # ---- Streams (libquota 2.1) ----

    def _more(self, input_tokens, output_tokens):
        more = self.quota._cost(0, input_tokens, output_tokens)
        if not (input_tokens or output_tokens):
            raise ValueError("extend: input_tokens or output_tokens must be > 0")
        return more

    def _try_extend(self, more, timeout_ns):
        """One quota_extend(): (0, None) or (negative errno, retry ns). The
        attributes follow an extension the library made even if an
        exception (Ctrl-C) lands as the call returns."""
        raw = self._raw

        def call(ptr, t):  # under the ticket's lock
            raw.waited_ns = -1  # the library sets it >= 0 when it extends
            try:
                return self._h.lib.quota_extend(ptr, t, ctypes.byref(more), timeout_ns)
            finally:
                if raw.waited_ns >= 0:
                    raw.waited_ns = -1
                    self.input_tokens += more.input_tokens
                    if self.output_tokens is None:
                        self._out_bound += more.output_tokens
                    else:
                        self.output_tokens += more.output_tokens

        rc = self._call(call, "extend")
        return (0, None) if rc == 0 else (rc, raw.retry_after_ns)

    def extend(self, input_tokens=0, output_tokens=0, timeout=None):
        """Take more tokens for a call still running (a stream that
        outgrows its reservation), in the ticket's lane, all or nothing on
        every limit; the ticket then holds its estimate plus these, and its
        in-flight slot stays held. Waits as reserve() does (``timeout``:
        None, 0 or seconds; in slices, GIL released, Ctrl-C lands within
        about 50 ms and leaves the ticket as it was). Raises RetryLater
        (``retry_after``; nothing charged, the ticket unchanged), TooBig
        (above a limit's capacity or the context window with what the
        ticket holds), BudgetExhausted, QuotaError (EINVAL for a settled
        ticket, ECHILD in a forked child), ValueError for no tokens."""
        more = self._more(input_tokens, output_tokens)
        _wait_in_slices(lambda ns: self._try_extend(more, ns), timeout,
                        "extend on %r" % self.quota.name)

    async def aextend(self, input_tokens=0, output_tokens=0, timeout=None):
        """extend() for asyncio: never blocks the event loop (tries without
        waiting, awaits asyncio.sleep() until the library's retry time).
        Same arguments and exceptions."""
        more = self._more(input_tokens, output_tokens)
        await _poll(lambda ns: self._try_extend(more, ns), timeout, "extend on %r" % self.quota.name)

    def settle_partial(self, input_tokens=None, output_tokens=None):
        """Mid-stream: lower the ticket's estimate to the most the call can
        still consume in all (not the amount to give back): each argument
        is the new total, at most what the ticket holds; None keeps that
        field. The difference goes back as a commit would give it back; the
        ticket stays open with its in-flight slot, to be committed or
        cancelled. A quota whose refund policy is "none" gives nothing back
        (the library keeps its estimate). Only the last piece (the last
        extension, or the reservation) can be given back: what earlier
        pieces held is spent. Raises ValueError for an estimate above the
        ticket's, QuotaError (EINVAL settled, ECHILD forked child)."""
        if output_tokens is None and self.output_tokens is None:
            raise ValueError("settle_partial: pass output_tokens (the library chose this "
                             "ticket's output estimate, which the binding cannot read)")
        est = self.quota._cost(self.requests,
                               self.input_tokens if input_tokens is None else input_tokens,
                               self.output_tokens if output_tokens is None else output_tokens)
        if est.input_tokens > self.input_tokens or \
                (self.output_tokens is not None and est.output_tokens > self.output_tokens):
            raise ValueError("settle_partial: the estimate (%d + %d tokens) must not exceed what "
                             "the ticket holds (%d + %d)" % (est.input_tokens, est.output_tokens,
                                                           self.input_tokens, self.output_tokens))

        def call(ptr, t):
            rc = self._h.lib.quota_settle_partial(ptr, t, ctypes.byref(est))
            if rc == 0:
                self.input_tokens, self.output_tokens = est.input_tokens, est.output_tokens
            return rc

        rc = self._call(call, "settle_partial")
        if rc == -_errno.EINVAL and self.output_tokens is None:
            raise ValueError("settle_partial: %d output tokens is above the estimate the library "
                             "chose for this ticket" % est.output_tokens)
        if rc < 0:
            raise _error(rc, "settle_partial")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.settled:
            return
        if exc_type is None:
            self.cancel()
            return
        # Leaving on an exception (a KeyboardInterrupt may even have landed
        # inside commit()): give back what is open, and let the original
        # exception through rather than a "settled already" of ours.
        try:
            self.cancel()
        except QuotaError:
            pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        self.__exit__(exc_type, exc, tb)

    def __repr__(self):
        return "<libquota.Ticket %s%s %d req %d+%s tokens%s>" % (
            self.quota.name, "" if self.lane is None else " lane " + self.lane, self.requests,
            self.input_tokens, "learned" if self.output_tokens is None else self.output_tokens,
            " settled" if self.settled else "")
