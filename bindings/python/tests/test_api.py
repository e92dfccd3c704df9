# SPDX-License-Identifier: MIT
"""The package's API on one process: attach, find, reserve/commit/cancel,
the exceptions and their errno, status, backoff, feedback, close, threads."""

import ctypes
import errno
import threading

import pytest

import libquota
import qworkers
from libquota import _lib


def test_struct_sizes_match_c():
    # sizeof() of quota.h 2.2's structs as the C compiler lays them out
    # (LP64): a drift here would make quota_info/reserve write past them.
    assert ctypes.sizeof(_lib.Cost) == 24
    assert ctypes.sizeof(_lib.Ticket) == 400
    assert ctypes.sizeof(_lib.Info) == 1456
    assert _lib.Info.generation.offset == 960
    assert _lib.Info.lanes.offset == 968  # 2.1's fields follow 2.0's struct
    assert _lib.Info.output_hist.offset == 992
    assert _lib.Info.alarm_over_pct.offset == 1144
    assert _lib.Info.learned_input_p50.offset == 1152  # 2.2's follow 2.1's
    assert _lib.Info.input_hist.offset == 1184
    assert _lib.Info.ratio_hist.offset == 1312
    assert _lib.Info.held_flips.offset == 1448
    assert ctypes.sizeof(_lib.ReserveOpts) == 64
    assert _lib.ReserveOpts.max_output_tokens.offset == 16
    assert ctypes.sizeof(_lib.Feedback) == 136


def test_missing_segment():
    with pytest.raises(libquota.QuotaError) as e:
        libquota.Client("pyq-no-such-segment-%d" % id(e))
    assert e.value.errno == errno.ENOENT
    assert not isinstance(e.value, libquota.NoSuchQuota)


def test_reserve_commit_cancel_and_errors(daemons, monkeypatch):
    seg = daemons.quotad({
        "m": {"rpm": 600, "tpm": 60000, "burst": 0.1, "max_inflight": 2, "context_window": 4000},
        "paid": {"rpm": 6000, "price_per_mtok": {"input": 1000000, "output": 0},
                 "budget_usd": {"day": 2}},
    })
    monkeypatch.setenv("QUOTA_SEGMENT", seg)
    with libquota.Client() as c:  # $QUOTA_SEGMENT
        assert sorted(c.quotas()) == ["m", "paid"]
        with pytest.raises(KeyError):
            c.quota("nope")
        with pytest.raises(libquota.NoSuchQuota) as e:
            c.quota("nope")
        assert e.value.errno == errno.ENOENT
        q = c.quota("m")
        t = q.reserve(input_tokens=100, output_tokens=200, timeout=0)
        assert q.status()["inflight"] == 1
        t.commit(input_tokens=100, output_tokens=50)
        assert t.settled and q.status()["inflight"] == 0
        with pytest.raises(libquota.QuotaError) as e:
            t.commit()
        assert e.value.errno == errno.EINVAL
        # Leaving the block without commit cancels, exception or not.
        with q.reserve(input_tokens=10, output_tokens=10) as t2:
            assert q.status()["inflight"] == 1
        assert t2.settled and q.status()["inflight"] == 0
        with pytest.raises(RuntimeError):
            with q.reserve(input_tokens=10, output_tokens=10):
                raise RuntimeError("the call failed")
        assert q.status()["inflight"] == 0
        # Never fits: at once, whatever the timeout.
        with pytest.raises(libquota.TooBig) as e:
            q.reserve(input_tokens=3000, output_tokens=2000, timeout=10)
        assert e.value.errno == errno.E2BIG
        # max_inflight 2: a third waits, then RetryLater when the timeout ends.
        a = q.reserve(input_tokens=1, timeout=0)
        b = q.reserve(input_tokens=1, timeout=0)
        with pytest.raises(libquota.RetryLater) as e:
            q.reserve(input_tokens=1, timeout=0.02)
        assert e.value.errno == errno.EAGAIN and e.value.retry_after >= 0
        a.cancel()
        b.cancel()
        # Spend: 1 USD per input token, 2 USD a day.
        p = c.quota("paid")
        p.reserve(input_tokens=2, timeout=0).commit()
        with pytest.raises(libquota.BudgetExhausted) as e:
            p.reserve(input_tokens=1, timeout=0)
        assert e.value.errno == errno.EDQUOT
        st = p.status()
        assert st["spent_usd"]["day"] == pytest.approx(2.0)
        assert st["budget_usd"]["day"] == pytest.approx(2.0)
        with pytest.raises(ValueError):
            q.reserve(input_tokens=-1)
        with pytest.raises(ValueError):
            q.reserve(input_tokens=1, timeout=-1)


def test_status_backoff_feedback(daemons):
    seg = daemons.quotad({"m": {"rpm": 600, "tpm": 60000, "burst": 1}})
    with libquota.Client(seg) as c:
        q = c.quota("m")
        st = q.status()
        assert st["name"] == "m" and st["refund"] == "actual"
        assert st["limits"]["rpm"] == {"limit": 600, "capacity": 600, "available": 600, "period": 60.0}
        assert set(st["limits"]) == {"rpm", "tpm"}
        q.backoff(30)
        assert 29 < q.status()["paused"] <= 30
        with pytest.raises(libquota.RetryLater) as e:
            q.reserve(input_tokens=1, timeout=0)
        assert 29 < e.value.retry_after <= 30
        # The provider says fewer requests are left than we think: tighten.
        q2 = c.quota("m")
        assert q2.id == q.id
        seg2 = daemons.quotad({"m": {"rpm": 600, "tpm": 60000, "burst": 1}})
        with libquota.Client(seg2) as c2:
            q3 = c2.quota("m")
            lower = q3.feedback({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "10",
                                 "x-ratelimit-reset-requests": "59s", "content-type": "application/json",
                                 "x-ratelimit-remaining-tokens": "not-a-number"})
            assert lower is False
            assert q3.status()["limits"]["rpm"]["available"] <= 10
            assert q3.feedback([("x-ratelimit-limit-requests", "500")]) is True
            assert q3.feedback({"server": "x"}) is False


@pytest.mark.parametrize("wait", ["reserve", "extend"])
def test_close_waits_and_then_refuses(daemons, wait):
    if wait == "reserve":
        seg = daemons.quotad({"m": {"rpm": 60, "burst": 0.01}})  # 1 at once, then 1 a second
    else:
        seg = daemons.quotad({"m": {"tpm": 6000}})  # 100 tokens a second
    c = libquota.Client(seg)
    q = c.quota("m")
    t = q.reserve(requests=1, input_tokens=0 if wait == "reserve" else 6000, timeout=0)
    assert t.waited < 1.0
    if wait == "reserve":
        t.commit()
        call = lambda timeout: q.reserve(timeout=timeout)  # noqa: E731
    else:
        call = lambda timeout: t.extend(output_tokens=30, timeout=timeout)  # noqa: E731 (~0.3 s)
    started = threading.Event()
    out = []

    def waiter():
        started.set()
        try:
            call(None)
            out.append("admitted")
        except libquota.QuotaError as e:
            out.append(e.errno)

    th = threading.Thread(target=waiter)
    th.start()
    started.wait()
    c.close()  # waits for the slice in progress, then the waiter's next call fails
    th.join(10)
    assert not th.is_alive()
    assert out in (["admitted"], [errno.EBADF])
    with pytest.raises(libquota.QuotaError) as e:
        call(0)
    assert e.value.errno == errno.EBADF
    c.close()  # idempotent


def test_threads_share_a_client_and_settle_each_others_tickets(daemons):
    seg = daemons.quotad({"m": {"rpm": 600000, "tpm": 60000000, "max_inflight": 4}})
    with libquota.Client(seg) as c:
        q = c.quota("m")
        tickets = []
        lock = threading.Lock()

        def take(_):
            for _ in range(50):
                t = q.reserve(input_tokens=10, output_tokens=10, timeout=5)
                with lock:
                    tickets.append(t)
                # settle someone's ticket, maybe another thread's
                with lock:
                    u = tickets.pop(0)
                u.commit(input_tokens=10, output_tokens=5)

        qworkers.run_threads(take, 6)
        for t in tickets:
            t.cancel()
        st = q.status()
        assert st["inflight"] == 0 and st["admitted"] == 300
