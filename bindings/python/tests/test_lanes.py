# SPDX-License-Identifier: MIT
"""libquota 2.1 through the package, on a manual clock (exact figures, no
waiting): priority lanes by name (the lower lane stops where the headroom
starts, the top lane takes the headroom), NoSuchLane, the learned output
estimate (reserved for 0 output tokens, bounded by max_output_tokens) and
status()'s 2.1 fields: lanes, learning, alarms."""

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
                                  "samples": 0, "output_hist": [0] * 16}
        assert st["alarms"] == {"held": 0, "over_estimate": 0, "held_s": 5.0, "over_estimate_pct": 200}
        assert c.quota("plain").status()["learning"] is None
        assert c.quota("plain").status()["alarms"] == {"held": 0, "over_estimate": 0, "held_s": None,
                                                       "over_estimate_pct": None}

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


def test_bad_counts(daemons):
    seg = daemons.quotad({"m": LANES}, clock="manual")
    with libquota.Client(seg) as c:
        q = c.quota("m")
        for kw in ({"max_output_tokens": -1}, {"max_output_tokens": 2**63}, {"input_tokens": 2**62 + 1},
                   {"output_tokens": 1.5}, {"requests": True}):
            with pytest.raises(ValueError):
                q.reserve(timeout=0, **kw)
        assert q.status()["admitted"] == 0
