# SPDX-License-Identifier: MIT
"""areserve: 200 asyncio tasks on one quota, a third of them cancelled at
random moments (waiting for budget, or holding a ticket): at the end
nothing is in flight and every admission was settled. The event loop is
never blocked: a ticker's lateness is measured and printed."""

import asyncio
import random
import time

import pytest

import libquota


def test_200_tasks_with_random_cancellation(daemons):
    seg = daemons.quotad({"m": {"rpm": 12000, "tpm": 1200000, "burst": 0.01, "max_inflight": 10}})
    c = libquota.Client(seg)
    q = c.quota("m")
    rnd = random.Random(4)
    done = {"committed": 0, "cancelled_holding": 0, "cancelled_waiting": 0}

    async def task():
        holding = False
        try:
            t = await q.areserve(input_tokens=rnd.randint(10, 100), output_tokens=100, timeout=None)
            holding = True
            async with t:
                await asyncio.sleep(rnd.uniform(0.005, 0.05))  # the API call
                t.commit(output_tokens=rnd.randint(1, 100))
            done["committed"] += 1
        except asyncio.CancelledError:
            done["cancelled_holding" if holding else "cancelled_waiting"] += 1
            raise

    lateness = []

    async def ticker(stop):
        while not stop.is_set():
            t0 = time.monotonic()
            await asyncio.sleep(0.005)
            lateness.append(time.monotonic() - t0 - 0.005)

    async def main():
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        tasks = [asyncio.create_task(task()) for _ in range(200)]
        for victim in rnd.sample(tasks, 70):
            await asyncio.sleep(rnd.uniform(0, 0.01))
            victim.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop.set()
        await tick

    asyncio.run(main())
    st = q.status()
    c.close()
    print("200 tasks: %s; in flight at the end %d; event loop lateness max %.1f ms (%d ticks)"
          % (done, st["inflight"], 1000 * max(lateness), len(lateness)))
    assert st["inflight"] == 0
    assert sum(done.values()) == 200
    assert done["committed"] == st["admitted"]  # a cancelled ticket is not counted
    assert done["cancelled_waiting"] > 0
    assert max(lateness) < 1.0


def test_areserve_timeout_and_errors(daemons):
    seg = daemons.quotad({"m": {"rpm": 60, "burst": 0.01, "context_window": 100}})
    with libquota.Client(seg) as c:
        q = c.quota("m")

        async def main():
            t = await q.areserve(input_tokens=1, timeout=0)
            t.commit()
            with pytest.raises(libquota.RetryLater) as e:
                await q.areserve(input_tokens=1, timeout=0.1)  # next one in ~1 s
            assert 0.1 < e.value.retry_after <= 1.0
            with pytest.raises(libquota.TooBig):
                await q.areserve(input_tokens=200, timeout=5)
            t = await q.areserve(input_tokens=1, timeout=5)  # waits ~1 s
            assert 0.1 < t.waited < 5
            async with t:
                pass
            assert t.settled

        asyncio.run(main())
