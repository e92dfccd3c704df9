# SPDX-License-Identifier: MIT
"""libquota.httpx: the transport's decisions against a mock upstream (what
is reserved, committed, cancelled, folded, refused and how), then 8
processes through QuotaTransport against quota-sim: no 429 from the
referee and >= 95 % of the binding limit (tpm) used."""

import asyncio
import json
import multiprocessing as mp
import time
import urllib.request

import httpx
import pytest

import libquota
import qworkers
from libquota.httpx import AsyncQuotaTransport, QuotaTransport, estimate_prompt_tokens

CHAT = "http://upstream.test/v1/chat/completions"


def usage_answer(request, prompt=20, completion=7, headers=None):
    return httpx.Response(200, headers=headers or {}, request=request,
                          json={"choices": [{"message": {"content": "hi"}}],
                                "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})


def body(**kw):
    b = {"model": "m", "messages": [{"role": "user", "content": "x" * 30}]}
    b.update(kw)
    return b


def test_estimate():
    b = body()
    assert estimate_prompt_tokens(b, "/v1/chat/completions") == 3 + 4 + 10
    assert estimate_prompt_tokens({"input": ["abc", "abcdef"]}, "/v1/embeddings") == 3
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}, "/v1/completions") == 3
    # Shapes the estimate does not read are no reason to fail.
    req = httpx.Request("POST", CHAT, json=body(stream=True, stream_options="x", n="2", max_tokens=None))
    plan = libquota.httpx._plan(req, estimate_prompt_tokens, 100)
    assert plan.output_tokens == 100 and plan.stream and not plan.caller_wants_usage


def test_transport_settles_by_the_answer(daemons):
    seg = daemons.quotad({"m": {"rpm": 600, "tpm": 600000, "burst": 1, "context_window": 5000}})
    c = libquota.Client(seg)
    q = c.quota("m")
    seen = []

    def upstream(request):
        seen.append(json.loads(request.content) if request.content else None)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": []}, request=request)
        b = json.loads(request.content)
        if b.get("max_tokens") == 429:
            return httpx.Response(429, headers={"retry-after": "7"}, json={"error": {}}, request=request)
        if b.get("stream"):
            chunks = [{"choices": [{"delta": {"content": "hi"}}]},
                      {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}}]
            sse = "".join("data: %s\n\n" % json.dumps(ch) for ch in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=sse.encode(), request=request)
        return usage_answer(request, headers={"x-ratelimit-limit-requests": "600",
                                              "x-ratelimit-remaining-requests": "100"})

    http = httpx.Client(transport=QuotaTransport(q, transport=httpx.MockTransport(upstream), max_wait=0))
    # Passed through, not metered.
    assert http.get("http://upstream.test/v1/models").status_code == 200
    assert q.status()["admitted"] == 0
    # Reserved 1 + estimate + max_tokens x n, committed the usage, headers folded.
    r = http.post(CHAT, json=body(max_tokens=50, n=2))
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 20
    st = q.status()
    assert st["admitted"] == 1 and st["inflight"] == 0
    assert st["admitted_input_tokens"] == 20 and st["admitted_output_tokens"] == 7
    assert st["limits"]["rpm"]["available"] <= 100
    # A stream: include_usage asked for, the usage chunk committed and dropped.
    r = http.post(CHAT, json=body(max_tokens=50, stream=True))
    text = r.read().decode()
    assert seen[-1]["stream_options"] == {"include_usage": True}
    assert "usage" not in text and "[DONE]" in text and '"hi"' in text
    assert q.status()["admitted_input_tokens"] == 31
    # ... kept when the caller asked for it.
    r = http.post(CHAT, json=body(max_tokens=50, stream=True, stream_options={"include_usage": True}))
    assert '"usage"' in r.read().decode()
    # Upstream 429: passed on, ticket cancelled, quota paused host-wide.
    r = http.post(CHAT, json=body(max_tokens=429))
    assert r.status_code == 429
    assert 6 < q.status()["paused"] <= 7
    assert q.status()["inflight"] == 0
    # Local refusal while paused: a 429 with retry-after-ms, nothing sent.
    n = len(seen)
    r = http.post(CHAT, json=body(max_tokens=10))
    assert r.status_code == 429 and len(seen) == n
    assert 6000 < int(r.headers["retry-after-ms"]) <= 7000 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    # Never fits: 400 context_length_exceeded.
    r = http.post(CHAT, json=body(max_tokens=6000))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    http.close()
    c.close()


def test_budget_refusal_and_async_transport(daemons):
    seg = daemons.quotad({"m": {"rpm": 6000, "price_per_mtok": {"input": 1000000, "output": 0},
                                "budget_usd": {"day": 30}}})
    c = libquota.Client(seg)
    q = c.quota("m")

    def upstream(request):
        return usage_answer(request, prompt=25, completion=1)

    async def main():
        async with httpx.AsyncClient(transport=AsyncQuotaTransport(q, transport=httpx.MockTransport(upstream))) as http:
            r = await http.post(CHAT, json=body(max_tokens=5))
            assert r.status_code == 200
            r = await http.post(CHAT, json=body(max_tokens=5))
            assert r.status_code == 429 and r.headers["x-should-retry"] == "false"
            assert r.json()["error"]["code"] == "insufficient_quota"

    asyncio.run(main())
    assert q.status()["inflight"] == 0
    c.close()


def test_transport_lanes(daemons):
    seg = daemons.quotad({"m": {"rpm": 100, "tpm": 1000000,
                                "lanes": {"interactive": {"headroom": 0.2}, "batch": {}}}},
                         clock="manual")
    c = libquota.Client(seg)
    q = c.quota("m")
    sent = []

    def upstream(request):
        sent.append(request)
        return usage_answer(request)

    with pytest.raises(libquota.NoSuchLane):
        QuotaTransport(q, transport=httpx.MockTransport(upstream), lane="bulk")
    with pytest.raises(ValueError):
        QuotaTransport(q, transport=httpx.MockTransport(upstream), stream_step=-1)
    batch = httpx.Client(transport=QuotaTransport(q, transport=httpx.MockTransport(upstream),
                                                  max_wait=0, lane="batch"))
    top = httpx.Client(transport=QuotaTransport(q, transport=httpx.MockTransport(upstream),
                                                max_wait=0, lane="interactive"))
    for _ in range(80):
        assert batch.post(CHAT, json=body(max_tokens=10)).status_code == 200
    # The batch lane is done, the headroom kept: refused locally, not sent.
    r = batch.post(CHAT, json=body(max_tokens=10))
    assert r.status_code == 429 and int(r.headers["retry-after-ms"]) == 600 and len(sent) == 80
    for _ in range(20):
        assert top.post(CHAT, json=body(max_tokens=10)).status_code == 200
    assert top.post(CHAT, json=body(max_tokens=10)).status_code == 429
    st = q.status()
    assert st["admitted"] == 100 and st["inflight"] == 0
    batch.close()
    top.close()
    c.close()


def sse(*chunks):
    return ["data: %s\n\n" % json.dumps(ch) for ch in chunks]


def test_transport_stream_step(daemons):
    seg = daemons.quotad({"m": {"tpm": 600000}, "small": {"tpm": 6000}}, clock="manual")
    c = libquota.Client(seg)
    q, small = c.quota("m"), c.quota("small")
    held = []  # output tokens the open ticket held as each chunk was asked for

    def upstream(quota, texts, usage):
        def events():
            for text in texts:
                held.append(quota.status()["admitted_output_tokens"])
                yield sse({"choices": [{"delta": {"content": text}}]})[0].encode()
            if usage:
                yield sse({"choices": [], "usage": usage})[0].encode()
            yield b"data: [DONE]\n\n"

        return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                              content=events(), request=request)

    # 5 chunks of 100 estimated tokens (300 bytes): steps of 128 follow them.
    mock = upstream(q, ["x" * 300] * 5, {"prompt_tokens": 17, "completion_tokens": 480})
    http = httpx.Client(transport=QuotaTransport(q, transport=httpx.MockTransport(mock), stream_step=128))
    r = http.post(CHAT, json=body(stream=True))
    assert r.status_code == 200 and r.read().count(b"\"content\"") == 5
    held.append(q.status()["admitted_output_tokens"])
    assert held == [128, 128, 256, 384, 512, 480]  # the last: committed at the usage
    assert q.status()["inflight"] == 0
    # A stream that names max_tokens keeps it; no steps.
    held.clear()
    r = http.post(CHAT, json=body(stream=True, max_tokens=200))
    r.read()
    assert held[:2] == [480 + 200, 480 + 200]
    http.close()
    # The same steps through the asyncio transport.
    held.clear()
    base = q.status()["admitted_output_tokens"]

    def amock(request):
        sync = upstream(q, ["x" * 300] * 3, {"prompt_tokens": 17, "completion_tokens": 250})(request)

        async def events():
            for ch in sync.stream:
                yield ch

        return httpx.Response(200, headers=sync.headers, content=events(), request=request)

    async def astream():
        async with httpx.AsyncClient(transport=AsyncQuotaTransport(
                q, transport=httpx.MockTransport(amock), stream_step=128)) as ahttp:
            r = await ahttp.post(CHAT, json=body(stream=True))
            await r.aread()

    asyncio.run(astream())
    assert [h - base for h in held] == [128, 128, 256]
    assert q.status()["admitted_output_tokens"] == base + 250
    # Steps of 1000 on 6000 tpm: extended to 5000, the next step refused at
    # once (the stream goes on); without usage, what was streamed (7000) is
    # committed: debt.
    held.clear()
    mock = upstream(small, ["x" * 3000, "x" * 3000, "x" * 15000, "x"], None)
    http = httpx.Client(transport=QuotaTransport(small, transport=httpx.MockTransport(mock),
                                                 stream_step=1000))
    r = http.post(CHAT, json=body(stream=True))
    assert r.status_code == 200 and len(r.read()) > 21000
    http.close()
    st = small.status()
    assert held == [1000, 1000, 2000, 5000]
    assert st["admitted_output_tokens"] == 7001 and st["inflight"] == 0
    assert st["limits"]["tpm"]["available"] == 0 and st["rejected"]["tpm"] == 1
    c.close()


PROCS, SECONDS = 8, 6.0
TPM, RPM = 300000, 3000


def sim_stats(url):
    with urllib.request.urlopen(url + "/stats", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.alone
def test_eight_processes_against_quota_sim(daemons, tmp_path):
    # The referee's bucket is a little larger than the quota's (see
    # quota-sim(1): a client that never over-admits can still see a 429).
    url = daemons.sim("--rpm", str(RPM), "--tpm", str(TPM), "--burst", "0.02", "--latency-ms", "20")
    seg = daemons.quotad({"sim": {"rpm": RPM, "tpm": TPM, "burst": 0.019}})
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCS + 1)
    procs = []
    try:
        for i in range(PROCS):
            p = ctx.Process(target=qworkers.transport_loop,
                            args=(seg, url, "sk-py", barrier, SECONDS, str(tmp_path / ("t%d" % i)), i))
            p.start()
            procs.append(p)
        barrier.wait(timeout=30)
        t0 = time.monotonic()
        for p in procs:
            p.join(SECONDS + 60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    answers = []
    for i in range(PROCS):
        with open(tmp_path / ("t%d" % i)) as f:
            answers += json.load(f)
    elapsed = max(a[3] for a in answers) - t0  # barrier to the last answer
    served = [a for a in answers if a[0] == 200]
    local = sum(1 for a in answers if a[0] == 429)
    stats = sim_stats(url)
    tokens = sum(a[1] + a[2] for a in served)
    bound = TPM * elapsed / 60 + -(-TPM * 2 // 100)
    print("transport, %d processes, %.1f s: %d served, %d local 429s, referee's 429s %d, "
          "tokens %d = %.1f %% of r*T+b (tpm binds)"
          % (PROCS, elapsed, len(served), local, stats["rejected_429"], tokens, 100 * tokens / bound))
    assert stats["rejected_429"] == 0
    assert len(served) == len(answers) - local
    assert tokens / bound >= 0.95
