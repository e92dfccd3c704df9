# SPDX-License-Identifier: MIT
"""fork: a child reopens the segment transparently and can never settle its
parent's tickets (errno ECHILD); the parent's tickets stay the parent's."""

import errno
import multiprocessing as mp
import os

import libquota


def child_body(client, ticket):
    """Runs in a forked child; returns an exit status (0 = as expected)."""
    for settle in (ticket.commit, ticket.cancel):
        try:
            settle()
            return 1  # the parent's ticket was settled by the child
        except libquota.QuotaError as e:
            if e.errno != errno.ECHILD:
                return 2
    q = client.quota("m")  # the child's own handle, opened on first use
    st = q.status()
    if st["inflight"] != 1:  # the parent's ticket is still held
        return 3
    with q.reserve(input_tokens=5, output_tokens=5, timeout=5) as t:
        t.commit()
    return 0


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
    assert q.status()["inflight"] == 1
    t.commit()  # still the parent's to settle
    st = q.status()
    assert st["inflight"] == 0 and st["admitted"] == 2
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
