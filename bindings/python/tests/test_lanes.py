# SPDX-License-Identifier: MIT
"""libquota 2.1 through the package, on a manual clock (exact figures, no
waiting): priority lanes by name (the lower lane stops where the headroom
starts, the top lane takes the headroom), NoSuchLane, the learned output
estimate (reserved for 0 output tokens, bounded by max_output_tokens) and
status()'s 2.1 fields: lanes, learning, alarms; and its 2.2 fields: the
prompt and actual/estimated output p50/p99 quotad publishes, tickets still
open past held_s as of quotad's last alarm phase flip (waited for by the
flip count, the clock moved by the test)."""

import asyncio
import ctypes
import errno
import math
import time

import pytest

import libquota
from libquota import _lib

MS = 1_000_000
# rpm 100, burst 1: b = 100 requests, one every 0.6 s; the top lane keeps 20.
LANES = {"rpm": 100, "tpm": 1000000, "lanes": {"interactive": {"headroom": 0.2}, "batch": {}}}


def test_reserve_opts_init_is_the_library_s():
    lib = _lib.load()
    o = _lib.ReserveOpts()
    lib.quota_reserve_opts_init(ctypes.byref(o), ctypes.sizeof(o))
    assert o.size == 64 and o.lane == _lib.QUOTA_LANE_DEFAULT
    assert o.flags == 0 and o.max_output_tokens == 0


def test_lane_names(daemons):
    seg = daemons.quotad({"m": LANES, "plain": {"rpm": 100}}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("m")
        assert q.lane_index("interactive") == 0 and q.lane_index("batch") == 1
        assert q.status()["lanes"] == 2
        with pytest.raises(libquota.NoSuchLane) as e:
            q.reserve(lane="bulk", timeout=0)
        assert e.value.errno == errno.ENOENT and e.value.lane == "bulk" and e.value.quota == "m"
        assert isinstance(e.value, ValueError) and isinstance(e.value, libquota.QuotaError)
        assert not isinstance(e.value, libquota.NoSuchQuota)
        assert str(e.value) == "quota 'm' has no lane 'bulk' (it has 2 lanes)"
        with pytest.raises(libquota.NoSuchLane, match="1 to 15 characters"):
            q.reserve(lane="no such lane", timeout=0)
        with pytest.raises(libquota.NoSuchLane):
            q.reserve(lane="x" * 16, timeout=0)
        with pytest.raises(TypeError):
            q.reserve(lane=0, timeout=0)
        p = c.quota("plain")
        assert p.status()["lanes"] == 0
        with pytest.raises(libquota.NoSuchLane, match="it has no lanes"):
            p.reserve(lane="batch", timeout=0)
        assert q.status()["admitted"] == 0 and p.status()["admitted"] == 0


def test_lanes_after_a_reload(daemons):
    seg = daemons.quotad({"m": LANES, "gone": LANES}, clock="manual")
    with libquota.Client(seg) as c:
        q, gone = c.quota("m"), c.quota("gone")
        assert gone.lane_index("batch") == 1 and q.lane_index("batch") == 1
        daemons.reload(seg, {"m": dict(LANES, lanes={"interactive": {"headroom": 0.2}, "bulk": {}})})
        deadline = time.monotonic() + 10
        while not gone.status()["removed"]:
            assert time.monotonic() < deadline, "quotad did not reload within 10 s"
            time.sleep(0.01)
        # A lane of a removed quota: the quota is what is missing.
        fresh = c.quota("m")
        with pytest.raises(libquota.NoSuchQuota):
            c.quota("gone")
        with pytest.raises(libquota.NoSuchQuota):
            libquota.Quota(c, "gone", gone.id).lane_index("batch")
        with pytest.raises(libquota.NoSuchQuota):
            gone.reserve(timeout=0, lane="batch")  # resolved before: the reservation says it
        assert fresh.lane_index("bulk") == 1
        with pytest.raises(libquota.NoSuchLane):
            fresh.lane_index("batch")
        # Resolved before the reload: the index stands for the lane now there.
        assert q.lane_index("batch") == 1
        q.reserve(timeout=0, lane="batch").commit()


def test_lower_lane_keeps_the_headroom_for_the_top_lane(daemons):
    seg = daemons.quotad({"m": LANES}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("m")
        n = 0
        while True:  # batch, by name and as the default lane
            try:
                t = q.reserve(input_tokens=10, output_tokens=10, timeout=0,
                              lane="batch" if n % 2 else None)
            except libquota.RetryLater as e:
                refused = e
                break
            assert t.lane == ("batch" if n % 2 else None)
            t.commit()
            n += 1
        assert n == 80  # b - the headroom of 20
        assert refused.retry_after == pytest.approx(0.6)  # one emission interval
        # A wait longer than the timeout is refused at once, not waited.
        with pytest.raises(libquota.RetryLater):
            q.reserve(input_tokens=10, timeout=0.1, lane="batch")
        m = 0
        while True:
            try:
                t = q.reserve(input_tokens=10, output_tokens=10, timeout=0, lane="interactive")
            except libquota.RetryLater:
                break
            assert t.lane == "interactive" and "lane interactive" in repr(t)
            t.commit()
            m += 1
        assert m == 20  # the headroom, whole
        # A batch cost above what the lane may hold at once never fits.
        with pytest.raises(libquota.TooBig):
            q.reserve(requests=81, timeout=0, lane="batch")
        # One interval later: still nothing for batch, one for interactive.
        c.set_clock(c.now_ns() + 600 * MS)
        with pytest.raises(libquota.RetryLater):
            q.reserve(timeout=0, lane="batch")

        async def top():
            with pytest.raises(libquota.RetryLater):
                await q.areserve(timeout=0, lane="batch")
            return await q.areserve(input_tokens=1, timeout=0, lane="interactive")

        t = asyncio.run(top())
        assert t.lane == "interactive"
        t.commit()
        st = q.status()
        assert st["admitted"] == 101 and st["inflight"] == 0
        assert st["rejected"]["rpm"] >= 4  # the refusals above, counted


def test_learned_estimate_and_alarms(daemons):
    seg = daemons.quotad({"a": {"tpm": 10000000, "context_window": 10000, "auto_estimate": True,
                                "alarms": {"held_s": 5, "over_estimate": 2}},
                          "plain": {"tpm": 1000}}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("a")
        st = q.status()
        assert st["learning"] == {"auto_estimate": True, "suggested_output_tokens": None,
                                  "samples": 0, "output_hist": [0] * 16,
                                  "prompt_tokens": {"p50": None, "p99": None},
                                  "output_ratio": {"p50": None, "p99": None}}
        # quotad has made no alarm phase flip yet (the clock has not moved)
        assert st["alarms"] == {"held": 0, "over_estimate": 0, "held_s": 5.0, "over_estimate_pct": 200,
                                "held_open": None}
        assert c.quota("plain").status()["learning"] is None
        assert c.quota("plain").status()["alarms"] == {"held": 0, "over_estimate": 0, "held_s": None,
                                                       "over_estimate_pct": None, "held_open": None}

        def reserved_out(**kw):
            """Output tokens the library reserved for an open reservation
            of 10 input tokens and 0 output (status counts them)."""
            before = q.status()["admitted_output_tokens"]
            t = q.reserve(input_tokens=10, output_tokens=0, timeout=0, **kw)
            return t, q.status()["admitted_output_tokens"] - before

        # Nothing learned yet: the bound, else the context window less the input.
        t, out = reserved_out(max_output_tokens=500)
        assert out == 500 and t.output_tokens is None and t.max_output_tokens == 500
        t.cancel()
        t, out = reserved_out()
        assert out == 9990 and t.output_tokens == 0
        t.cancel()
        # A skewed workload: 150 answers of 100 tokens, 48 of 300, 2 of 3000.
        for i in range(200):
            q.reserve(input_tokens=10, output_tokens=100, timeout=0).commit(
                output_tokens=100 if i < 150 else 300 if i < 198 else 3000)
        st = q.status()
        hist = st["learning"]["output_hist"]  # live rows: at once
        # 300 and 3000 tokens against 100 reserved: above 2 x the estimate.
        assert st["alarms"]["over_estimate"] == 50 and st["alarms"]["held"] == 0
        assert hist[6] == 150 and hist[9] == 48 and hist[15] == 2 and sum(hist) == 200
        # quotad publishes the p99's bucket edge at its next check (250 ms).
        deadline = time.monotonic() + 10
        while q.status()["learning"]["suggested_output_tokens"] is None:
            assert time.monotonic() < deadline, "quotad published no estimate in 10 s"
            time.sleep(0.05)
        learned = q.status()["learning"]
        assert learned["suggested_output_tokens"] == 383 and learned["samples"] == 200
        t, out = reserved_out(max_output_tokens=4000)
        assert out == 383
        # commit() without output_tokens: the bound, 4000 > 2 x 383 (an alarm).
        t.commit()
        t, out = reserved_out(max_output_tokens=300)
        assert out == 300
        with pytest.raises(ValueError, match="pass output_tokens"):
            t.settle_partial(input_tokens=5)
        c.set_clock(c.now_ns() + 6 * 1000 * MS)  # held past held_s
        t.commit(output_tokens=250)
        st = q.status()
        assert st["alarms"]["held"] == 1 and st["alarms"]["over_estimate"] == 51
        assert st["inflight"] == 0


def test_learned_open_bucket_is_infinite():
    info = _lib.Info()
    info.learn = 1
    info.learned_output = _lib.LEARNED_OPEN
    assert libquota._learning(info)["suggested_output_tokens"] == math.inf
    assert libquota._learning(info)["auto_estimate"] is False
    # 2.2: zero (as a 2.1 library leaves them) is not known; open is inf
    assert libquota._learning(info)["prompt_tokens"] == {"p50": None, "p99": None}
    info.learned_input_p50, info.learned_input_p99 = 4095, _lib.LEARNED_OPEN
    info.learned_ratio_p50, info.learned_ratio_p99 = 255, _lib.LEARNED_OPEN
    assert libquota._learning(info)["prompt_tokens"] == {"p50": 4095, "p99": math.inf}
    assert libquota._learning(info)["output_ratio"] == {"p50": 1.0, "p99": math.inf}


def test_learned_prompts_and_output_ratio(daemons):
    seg = daemons.quotad({"l": {"tpm": 100000000, "learn": True}}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("l")

        def learned(what, until):
            """status()'s learning[what] once until() holds for it: quotad
            publishes at its next check (250 ms)."""
            deadline = time.monotonic() + 10
            while not until(q.status()["learning"][what]):
                assert time.monotonic() < deadline, "quotad published no %s in 10 s" % what
                time.sleep(0.05)
            return q.status()["learning"][what]

        # 100 commits: prompts of 500 tokens (60), 3000 (39), 200000 (1);
        # 1000 output tokens estimated, 100 used (60: ratio 0.1), 1200 (39:
        # 1.2), 9000 (1: 9).
        for i in range(100):
            prompt = 500 if i < 60 else 3000 if i < 99 else 200000
            q.reserve(input_tokens=prompt, output_tokens=1000, timeout=0).commit(
                output_tokens=100 if i < 60 else 1200 if i < 99 else 9000)
        # p50 in the bucket < 1024 tokens, p99 in 2048-3071; ratio p50 in
        # [24, 32)/256, p99 in [256, 384)/256: the ratio below which it lies.
        assert learned("prompt_tokens", lambda v: v["p50"] is not None) == {"p50": 1023, "p99": 3071}
        assert learned("output_ratio", lambda v: v["p50"] is not None) == {"p50": 0.125, "p99": 1.5}
        # 10 more: prompts of 150000 tokens and 10 times the estimate, in
        # the open last buckets (131072 and up, 8 and up): the p99s are.
        for i in range(10):
            q.reserve(input_tokens=150000, output_tokens=10, timeout=0).commit(output_tokens=100)
        assert learned("prompt_tokens", lambda v: v["p99"] == math.inf) == {"p50": 1023, "p99": math.inf}
        assert learned("output_ratio", lambda v: v["p99"] == math.inf) == {"p50": 0.125, "p99": math.inf}


def _held_flips(q):
    """quotad's alarm phase flips of @q so far (quota_info's held_flips,
    which status() does not show)."""
    info = _lib.Info()
    assert q.client._call(_lib.load().quota_info, q.id, ctypes.byref(info), ctypes.sizeof(info)) == 0
    return info.held_flips


def _next_flip(c, q):
    """Move the manual clock by held_s (1 s) until quotad made one more
    phase flip of @q (it flips at its 250 ms check once held_s passed)."""
    f0 = _held_flips(q)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        c.set_clock(c.now_ns() + 1000 * MS)
        for _ in range(200):  # a second of quotad's checks
            if _held_flips(q) > f0:
                return
            time.sleep(0.005)
    pytest.fail("quotad made no phase flip of %r within 20 s" % q.name)


def test_held_open(daemons):
    seg = daemons.quotad({"h": {"rpm": 100000, "alarms": {"held_s": 1}}, "plain": {"rpm": 100000}},
                         clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("h")
        held_open = lambda: q.status()["alarms"]["held_open"]  # noqa: E731
        assert held_open() is None  # quotad has not counted yet
        a = q.reserve(timeout=0)
        _next_flip(c, q)
        assert held_open() == 0  # a: admitted in the phase that just ended
        b = q.reserve(timeout=0)
        _next_flip(c, q)
        assert held_open() == 1  # a: open since before the previous flip
        _next_flip(c, q)
        assert held_open() == 2  # and b
        a.commit()
        _next_flip(c, q)
        assert held_open() == 1  # a leaves at the next flip
        b.cancel()
        _next_flip(c, q)
        assert held_open() == 0
        assert q.status()["alarms"]["held"] == 2  # both settled after more than held_s
        p = c.quota("plain")
        t = p.reserve(timeout=0)
        c.set_clock(c.now_ns() + 1000 * MS)
        assert p.status()["alarms"]["held_open"] is None  # no held_s: not counted
        t.cancel()


def test_bad_counts(daemons):
    seg = daemons.quotad({"m": LANES}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("m")
        for kw in ({"max_output_tokens": -1}, {"max_output_tokens": 2**63}, {"input_tokens": 2**62 + 1},
                   {"output_tokens": 1.5}, {"requests": True}):
            with pytest.raises(ValueError):
                q.reserve(timeout=0, **kw)
        assert q.status()["admitted"] == 0
