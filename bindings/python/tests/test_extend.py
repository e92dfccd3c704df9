# SPDX-License-Identifier: MIT
"""Reservations that follow a stream (libquota 2.1) through the package, on
a manual clock with exact figures: extend() charges the quota as the call
grows and refuses with RetryLater (nothing charged) when the budget is
short; blocking and asyncio extensions admitted when the clock moves;
settle_partial() gives back what is known unused; threads extending one
ticket lose nothing (close() while an extension waits: test_api)."""

import asyncio
import errno
import threading

import pytest

import libquota
import qworkers

MS = 1_000_000
STREAM = {"tpm": 6000, "context_window": 5000}  # burst 1: 100 tokens a second


def avail(q):
    return q.status()["limits"]["tpm"]["available"]


def test_extend_charges_as_the_call_grows(daemons):
    seg = daemons.quotad({"m": STREAM}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("m")
        t = q.reserve(input_tokens=100, output_tokens=200, timeout=0)
        assert avail(q) == 5700
        t.extend(output_tokens=500, timeout=0)
        assert avail(q) == 5200 and t.output_tokens == 700
        t.extend(input_tokens=20, output_tokens=480)  # timeout None: admitted at once
        assert avail(q) == 4700 and (t.input_tokens, t.output_tokens) == (120, 1180)
        st = q.status()
        assert st["admitted"] == 1 and st["inflight"] == 0
        assert st["admitted_output_tokens"] == 1180  # open: the estimate
        # Used 120 + 1000 of 1300: the last piece gives back 180.
        t.commit(input_tokens=120, output_tokens=1000)
        assert avail(q) == 4880
        assert q.status()["admitted_output_tokens"] == 1000
        # commit() without usage settles what the ticket holds, extensions included.
        t = q.reserve(input_tokens=10, output_tokens=10, timeout=0)
        t.extend(output_tokens=90, timeout=0)
        t.commit()
        assert q.status()["admitted_output_tokens"] == 1100


def test_extend_refused_then_admitted(daemons):
    seg = daemons.quotad({"m": STREAM}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("m")
        t = q.reserve(input_tokens=100, output_tokens=100, timeout=0)
        with pytest.raises(ValueError):
            t.extend()
        with pytest.raises(ValueError):
            t.extend(output_tokens=-1)
        with pytest.raises(libquota.TooBig):  # the context window, with what it holds
            t.extend(output_tokens=4801, timeout=0)
        t2 = q.reserve(output_tokens=5000, timeout=0)
        # 800 left: 1000 more waits for 200 tokens, 2 s.
        with pytest.raises(libquota.RetryLater) as e:
            t.extend(output_tokens=1000, timeout=0)
        assert e.value.errno == errno.EAGAIN and e.value.retry_after == pytest.approx(2.0)
        # Not admissible within the timeout: refused at once, not waited for.
        with pytest.raises(libquota.RetryLater):
            t.extend(output_tokens=1000, timeout=1.0)
        assert avail(q) == 800 and t.output_tokens == 100  # nothing charged
        assert q.status()["rejected"]["tpm"] == 2
        # A blocking extension (in slices) is admitted once the clock moves.
        out = []

        def waiter():
            try:
                t.extend(output_tokens=810, timeout=None)  # 10 short: 0.1 s
                out.append("extended")
            except libquota.QuotaError as e:
                out.append(e)

        th = threading.Thread(target=waiter)
        th.start()
        c.set_clock(c.now_ns() + 100 * MS)
        th.join(30)
        assert out == ["extended"] and t.output_tokens == 910
        assert avail(q) == 0
        t2.cancel()
        t.cancel()
        with pytest.raises(libquota.QuotaError) as e:
            t.extend(output_tokens=1, timeout=0)
        assert e.value.errno == errno.EINVAL and "settled" in str(e.value)
        # Back: t2 and t's last piece (810); the piece before it (200) is
        # spent, less the 10 tokens that 0.1 s brought back.
        assert avail(q) == 6000 - 200 + 10


def test_aextend(daemons):
    seg = daemons.quotad({"m": STREAM}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("m")

        async def main():
            t = await q.areserve(input_tokens=100, output_tokens=100, timeout=0)
            t2 = await q.areserve(output_tokens=5000, timeout=0)
            with pytest.raises(libquota.RetryLater) as e:
                await t.aextend(output_tokens=810, timeout=0)
            assert e.value.retry_after == pytest.approx(0.1)
            ext = asyncio.ensure_future(t.aextend(output_tokens=810, timeout=None))
            await asyncio.sleep(0)  # let it try once and start waiting
            assert not ext.done()
            c.set_clock(c.now_ns() + 100 * MS)
            await ext
            assert t.output_tokens == 910 and avail(q) == 0
            t2.cancel()
            async with t:
                pass
            assert t.settled

        asyncio.run(main())
        assert avail(q) == 6000 - 200 + 10  # as above: the first piece is spent


def test_settle_partial_gives_back(daemons):
    seg = daemons.quotad({"m": {"tpm": 6000, "max_inflight": 1},
                          "none": {"tpm": 6000, "refund": "none"}}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("m")
        t = q.reserve(input_tokens=100, output_tokens=1000, timeout=0)
        with pytest.raises(ValueError, match="must not exceed"):
            t.settle_partial(output_tokens=1001)
        t.settle_partial(output_tokens=600)  # the new estimate, not the amount back
        assert avail(q) == 5300 and t.output_tokens == 600
        st = q.status()
        assert st["inflight"] == 1 and st["admitted_output_tokens"] == 600
        with pytest.raises(libquota.RetryLater):  # the in-flight slot is still held
            q.reserve(input_tokens=1, timeout=0)
        t.extend(output_tokens=300, timeout=0)
        assert avail(q) == 5000
        t.settle_partial(input_tokens=100, output_tokens=800)
        assert avail(q) == 5100
        # Only the last piece gives back: 500 used leaves 200 of it charged.
        t.commit(output_tokens=500)
        assert avail(q) == 5300
        st = q.status()
        assert st["inflight"] == 0 and st["admitted_output_tokens"] == 500
        with pytest.raises(libquota.QuotaError) as e:
            t.settle_partial(output_tokens=1)
        assert e.value.errno == errno.EINVAL
        # "refund": "none": the estimate stays until the end.
        n = c.quota("none")
        t = n.reserve(input_tokens=100, output_tokens=1000, timeout=0)
        t.settle_partial(output_tokens=600)
        assert avail(n) == 4900
        t.commit()
        assert avail(n) == 4900


def test_threads_extend_and_settle_one_ticket(daemons):
    seg = daemons.quotad({"m": {"tpm": 60000000, "max_inflight": 8}})
    with libquota.Client(seg) as c:
        q = c.quota("m")
        t = q.reserve(input_tokens=10, output_tokens=10, timeout=0)

        def grow(_):
            for _ in range(100):
                t.extend(output_tokens=1, timeout=5)

        qworkers.run_threads(grow, 4)
        assert t.output_tokens == 410  # no extension lost between threads
        assert q.status()["admitted_output_tokens"] == 410
        t.commit()
        st = q.status()
        assert st["inflight"] == 0 and st["admitted"] == 1 and st["admitted_output_tokens"] == 410
