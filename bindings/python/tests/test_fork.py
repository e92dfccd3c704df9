# SPDX-License-Identifier: MIT
"""fork: a child reopens the segment transparently and can never settle,
extend or partly settle its parent's tickets (errno ECHILD); the parent's
tickets stay the parent's, unchanged."""

import errno
import multiprocessing as mp
import os
import signal
import time

import libquota


def child_body(client, ticket):
    """Runs in a forked child; returns an exit status (0 = as expected)."""
    for settle in (ticket.commit, ticket.cancel, lambda: ticket.extend(output_tokens=5, timeout=0),
                   lambda: ticket.settle_partial(output_tokens=5)):
        try:
            settle()
            return 1  # the parent's ticket was settled or changed by the child
        except libquota.QuotaError as e:
            if e.errno != errno.ECHILD:
                return 2
    if ticket.output_tokens != 10:
        return 4
    q = client.quota("m")  # the child's own handle, opened on first use
    st = q.status()
    if st["inflight"] != 1:  # the parent's ticket is still held
        return 3
    with q.reserve(input_tokens=5, output_tokens=5, timeout=5) as t:
        t.commit()
    return 0


def _status_when(q, ok, deadline_s=10.0):
    """q.status() once ok(status) holds (polled, at most deadline_s)."""
    end = time.monotonic() + deadline_s
    while True:
        st = q.status()
        if ok(st) or time.monotonic() > end:
            return st
        time.sleep(0.01)


def test_child_cannot_settle_parents_ticket_os_fork(daemons):
    seg = daemons.quotad({"m": {"rpm": 6000, "tpm": 600000, "max_inflight": 4}})
    c = libquota.Client(seg)
    q = c.quota("m")
    t = q.reserve(input_tokens=10, output_tokens=10, timeout=0)
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = child_body(c, t)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The child's statistics are in its client slot's rows until quotad
    # reclaims the slot (it left with os._exit, without close()) and folds
    # them into the quota's totals; while it does, they are in neither.
    st = _status_when(q, lambda s: s["admitted"] == 2)
    assert st["inflight"] == 1
    assert st["admitted_output_tokens"] == 10 + 5  # ours open, and the child's commit: nothing extended
    t.extend(output_tokens=5, timeout=0)  # still the parent's to extend and settle
    t.commit()
    st = q.status()
    assert st["inflight"] == 0 and st["admitted"] == 2
    assert st["admitted_output_tokens"] == 5 + 15  # the child's, and ours extended
    c.close()


def test_child_cannot_settle_parents_ticket_multiprocessing(daemons):
    seg = daemons.quotad({"m": {"rpm": 6000, "tpm": 600000, "max_inflight": 4}})
    with libquota.Client(seg) as c:
        t = c.quota("m").reserve(input_tokens=10, output_tokens=10, timeout=0)
        p = mp.get_context("fork").Process(target=lambda: os._exit(child_body(c, t)))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        t.cancel()
        assert c.quota("m").status()["inflight"] == 0


def test_child_is_refused_while_a_parent_thread_holds_the_ticket(daemons):
    # The parent's thread is inside a call on the ticket (an extension holds
    # its lock for a slice) when the process forks: the child's settle must
    # be refused (ECHILD), not wait for a lock no thread of it will release.
    seg = daemons.quotad({"m": {"rpm": 6000, "tpm": 600000}})
    with libquota.Client(seg) as c:
        t = c.quota("m").reserve(input_tokens=10, output_tokens=10, timeout=0)
        with t._lock:
            pid = os.fork()
            if pid == 0:
                code = 99
                try:
                    t.extend(output_tokens=1, timeout=0)
                except libquota.QuotaError as e:
                    code = 0 if e.errno == errno.ECHILD else 2
                finally:
                    os._exit(code)
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done, "the child hung on the ticket's lock"
        assert os.waitstatus_to_exitcode(status) == 0
        t.commit()
