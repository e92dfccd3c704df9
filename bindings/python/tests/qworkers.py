# SPDX-License-Identifier: MIT
"""Worker bodies the multi-process tests start (importable by name, so that
multiprocessing's forkserver can run them), and run_threads()."""

import json
import random
import threading
import time

import libquota


def run_threads(target, n):
    """Run target(k) in @n threads, k = 0 .. n-1, and wait for them all."""
    ths = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()


def admit_loop(client, quota, nthreads, barrier, duration, outfile, seed, call_ms=(2, 20)):
    """@nthreads threads reserve on @quota until @duration seconds after the
    barrier, "call" for a random time, commit what they reserved, and log
    every admission to @outfile as JSON lines: admitted_ns (segment clock),
    requests, tokens, call_start, call_end (CLOCK_MONOTONIC ns; the call is
    the time between reserve returning and commit being called).
    @client: a libquota.Client inherited from the parent (fork), or a segment
    name (forkserver)."""
    c = client if isinstance(client, libquota.Client) else libquota.Client(client)
    q = c.quota(quota)
    barrier.wait()
    deadline = time.monotonic_ns() + int(duration * 1e9)
    logs = [[] for _ in range(nthreads)]

    def run(k):
        rnd = random.Random(seed * 100 + k)
        log = logs[k]
        while True:
            left = deadline - time.monotonic_ns()
            if left <= 0:
                return
            cin, cout = rnd.randint(10, 50), rnd.randint(10, 50)
            try:
                t = q.reserve(input_tokens=cin, output_tokens=cout, requests=1, timeout=left / 1e9)
            except libquota.RetryLater:
                return
            start = time.monotonic_ns()
            time.sleep(rnd.uniform(*call_ms) / 1000)  # the API call's latency
            end = time.monotonic_ns()
            t.commit(input_tokens=cin, output_tokens=cout, requests=1)
            log.append((t.admitted_ns, 1, cin + cout, start, end))

    run_threads(run, nthreads)
    with open(outfile, "w") as f:
        for log in logs:
            for rec in log:
                f.write(json.dumps(rec) + "\n")
    c.close()


def transport_loop(segment, url, key, barrier, duration, outfile, seed):
    """One process of the transport test: an httpx.Client over
    QuotaTransport sends chat completions to quota-sim (prompts of 50-150
    tokens, max_tokens 200) until @duration seconds after the barrier, and
    logs status, usage and time (CLOCK_MONOTONIC s) of every answer to
    @outfile."""
    import httpx
    from libquota.httpx import QuotaTransport

    rnd = random.Random(seed)
    q = libquota.Client(segment).quota("sim")
    out = []
    with httpx.Client(transport=QuotaTransport(q, max_wait=5.0), base_url=url, timeout=30,
                      headers={"authorization": "Bearer " + key}) as http:
        barrier.wait()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            words = rnd.randint(50, 150)
            body = {"model": "m", "max_tokens": 200,
                    "messages": [{"role": "user", "content": " ".join(["word"] * words)}]}
            r = http.post("/v1/chat/completions", json=body)
            u = r.json().get("usage") or {} if r.status_code == 200 else {}
            out.append((r.status_code, u.get("prompt_tokens", 0), u.get("completion_tokens", 0),
                        time.monotonic()))
    with open(outfile, "w") as f:
        json.dump(out, f)
