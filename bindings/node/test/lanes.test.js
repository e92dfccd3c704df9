// SPDX-License-Identifier: MIT
//
// lanes.test.js - libquota 2.1 through the Node binding, on a segment with a
// manual clock (lanes.sh starts quotad on lanes.json): nothing moves but
// what the test moves with client.setClock(), so every figure is exact and
// nothing waits on the wall clock. Lanes: the lower lane stops where the
// interactive headroom begins, the top lane is admitted past a waiting
// batch reserve (in the process's queues and in the library's line), and a
// wait is decided in its own lane; extend: charged as it grows, refused all
// or nothing with retryAfterMs, waits like a reserve; settlePartial gives
// back; status' 2.1 fields; status' 2.2 fields (the prompt and actual /
// estimated output p50/p99 quotad publishes, tickets still open past held_s
// as of quotad's last alarm phase flip); createQuotaFetch's lane.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { Worker } = require('node:worker_threads');
const lq = require('..');

const client = new lq.Client(); // $QUOTA_SEGMENT
test.after(() => client.close());

const tpm = (q) => q.status().limits.tpm.available;
// tpm 6000, burst 1: 6000 tokens at once, then 100 a second (10 ms a token);
// the interactive lane keeps 20 % (1200) that batch may not take.
const MS_PER_TOKEN = 10;

// A wait the clock should have let through: fails (rather than hangs) if it
// did not within `ms` of wall time. A guard, not a synchronisation.
function within(p, what, ms = 20000) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done ${ms} ms after the clock let it through`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

// The clock moved to a whole millisecond, so that times add up exactly.
function clockStart() {
  const t0 = Math.ceil(client.now()) + 1;
  client.setClock(t0);
  return t0;
}

test('lanes: names resolved once; unknown lanes refused with NoSuchLane', async () => {
  const q = client.quota('lanes');
  assert.equal(q.lane('interactive'), 0);
  assert.equal(q.lane('batch'), 1);
  assert.throws(() => q.lane('bulk'), (e) => e instanceof lq.NoSuchLane && e instanceof lq.QuotaError &&
    e.code === 'ENOENT' && /quota 'lanes' has no lane 'bulk'/.test(e.message));
  assert.throws(() => q.lane('x'.repeat(100)), lq.NoSuchLane);
  assert.throws(() => q.lane(1), TypeError);
  await assert.rejects(q.reserve({ inputTokens: 1, lane: 'bulk' }), (e) => e.code === 'ENOENT' && e.name === 'NoSuchLane');
  assert.throws(() => client.quota('plain').tryReserve({ lane: 'batch' }), lq.NoSuchLane); // no lanes at all
  await assert.rejects(q.reserve({ inputTokens: 1, lane: 'batch', maxOutputTokens: -1 }), RangeError);
  assert.equal(q.status().lanes, 2);
  assert.equal(client.quota('plain').status().lanes, 0);
  assert.throws(() => client.setClock(-1), RangeError);
  const t0 = clockStart();
  assert.throws(() => client.setClock(t0 - 1), (e) => e.code === 'EINVAL'); // never backwards
});

test('lanes: batch stops at the headroom, interactive takes the rest', async () => {
  clockStart();
  const q = client.quota('lanes');
  const batch = q.tryReserve({ inputTokens: 4800, lane: 'batch' });
  assert.equal(batch.lane, 'batch');
  assert.equal(tpm(q), 1200);
  // The default lane is the lowest: batch. One token comes back in 10 ms.
  assert.throws(() => q.tryReserve({ inputTokens: 1 }), (e) => e instanceof lq.RetryLater &&
    e.retryAfterMs === MS_PER_TOKEN);
  await assert.rejects(q.reserve({ inputTokens: 1, lane: 'batch', timeoutMs: 0 }), lq.RetryLater);
  const top = await q.reserve({ inputTokens: 1200, lane: 'interactive', timeoutMs: 0 });
  assert.equal(top.lane, 'interactive');
  assert.equal(tpm(q), 0);
  assert.throws(() => q.tryReserve({ inputTokens: 1, lane: 'interactive' }), lq.RetryLater);
  // Above what the batch lane may ever hold at once: TooBig, not RetryLater.
  assert.throws(() => q.tryReserve({ inputTokens: 4801, lane: 'batch' }), lq.TooBig);
  top.commit();
  batch.commit();
});

test('lanes: the top lane is admitted past a waiting batch reserve; each waits in its lane', async () => {
  const t0 = clockStart();
  const q = client.quota('lanes-wait');
  const held = [q.tryReserve({ inputTokens: 4800, lane: 'batch' }),
    q.tryReserve({ inputTokens: 1200, lane: 'interactive' })];
  assert.equal(tpm(q), 0);
  // Both wait (the batch reserve first); neither is admissible now.
  let batchDone = false;
  const batch = q.reserve({ inputTokens: 100, lane: 'batch', timeoutMs: 30000 })
    .then((t) => { batchDone = true; return t; });
  const top = q.reserve({ inputTokens: 100, lane: 'interactive', timeoutMs: 30000 });
  // 100 tokens come back in 1 s: enough for the top lane, whose waiter holds
  // its place in the library's line (admitted at exactly that instant); the
  // batch lane needs the headroom free again (used <= 4700: 14 s).
  client.setClock(t0 + 1000);
  const ti = await within(top, 'the interactive reserve');
  assert.equal(ti.admittedAt, t0 + 1000);
  assert.equal(batchDone, false, 'a batch reserve cannot be admitted while the headroom is taken');
  client.setClock(t0 + 15000);
  const tb = await within(batch, 'the batch reserve');
  assert.equal(tb.lane, 'batch');
  assert.ok(tb.admittedAt >= t0 + 14000, `batch admitted at t0 + ${tb.admittedAt - t0} ms, in the headroom`);
  for (const t of [...held, ti, tb]) t.commit();
});

test('extend: charged as the stream grows, all or nothing, waits like a reserve', async () => {
  const t0 = clockStart();
  const q = client.quota('stream'); // context window 5000
  const before = q.status();
  const t = await q.reserve({ inputTokens: 100, outputTokens: 200 });
  assert.equal(tpm(q), 5700);
  await t.extend({ outputTokens: 500 });
  assert.equal(t.outputTokens, 700);
  assert.equal(tpm(q), 5200);
  await assert.rejects(t.extend({}), RangeError);
  await assert.rejects(t.extend({ requests: 1, outputTokens: 1 }), RangeError);
  await assert.rejects(t.extend({ outputTokens: -1 }), RangeError);
  // 800 held + 4201 is above the context window: can never fit.
  await assert.rejects(t.extend({ outputTokens: 4201 }), lq.TooBig);
  const other = q.tryReserve({ outputTokens: 5000 });
  assert.equal(tpm(q), 200);
  // 1000 more with 200 free: 800 tokens short, 8 s; nothing charged.
  await assert.rejects(t.extend({ outputTokens: 1000, timeoutMs: 0 }),
    (e) => e instanceof lq.RetryLater && e.retryAfterMs === 800 * MS_PER_TOKEN && /extend 'stream'/.test(e.message));
  assert.equal(tpm(q), 200);
  assert.equal(t.outputTokens, 700);
  // Waiting: one extend at a time; no partial settle meanwhile.
  const p = t.extend({ outputTokens: 1000, timeoutMs: 30000 });
  await assert.rejects(t.extend({ outputTokens: 1 }), (e) => e.code === 'EBUSY');
  assert.throws(() => t.settlePartial({ outputTokens: 1 }), (e) => e.code === 'EBUSY');
  client.setClock(t0 + 8000);
  await within(p, 'the extend');
  assert.equal(t.outputTokens, 1700);
  assert.equal(tpm(q), 0);
  // Used 100 + 700 of 1800: the last piece (1000) comes back whole.
  t.commit({ outputTokens: 700 });
  assert.equal(tpm(q), 1000);
  other.cancel();
  const after = q.status();
  assert.equal(after.admitted - before.admitted, 1); // committed (a cancel is not counted)
  assert.equal(after.admittedOutputTokens - before.admittedOutputTokens, 700);
  await assert.rejects(t.extend({ outputTokens: 1 }), (e) => e.code === 'EINVAL');
});

test('extend: aborted while its wait runs, then committed: settled when the wait returns', async () => {
  const t0 = clockStart();
  const q = client.quota('abort');
  const before = q.status();
  const t = q.tryReserve({ inputTokens: 10, outputTokens: 5990 });
  const ac = new AbortController();
  const p = t.extend({ outputTokens: 100, signal: ac.signal });
  ac.abort();
  await assert.rejects(p, (e) => e.name === 'AbortError');
  t.commit({ outputTokens: 50 });
  assert.equal(t.settled, true);
  assert.throws(() => t.commit(), (e) => e.code === 'EINVAL');
  // An extension already waiting in the library (not when polling) is
  // granted at t0 + 1 s, and the commit carried out after it.
  client.setClock(t0 + 1000);
  for (let i = 0; i < 100000 && q.status().inflight > 0; i++) await new Promise((r) => setImmediate(r));
  const after = q.status();
  assert.equal(after.inflight, 0);
  assert.equal(after.admitted - before.admitted, 1);
  assert.equal(after.admittedOutputTokens - before.admittedOutputTokens, 50);
});

test('extend: a worker terminated while its extend waits: its ticket is given back', async () => {
  const t0 = clockStart();
  const q = client.quota('orphan');
  const code = `
    const { parentPort } = require('node:worker_threads');
    const lq = require(${JSON.stringify(require.resolve('..'))});
    const q = new lq.Client().quota('orphan');
    const t = q.tryReserve({ outputTokens: 6000 });
    t.extend({ outputTokens: 100, timeoutMs: 60000 }).then(() => parentPort.postMessage('extended'));
    parentPort.postMessage(t._busy ? 'extending on a thread' : 'extending on a timer');`;
  const w = new Worker(code, { eval: true });
  const said = await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
  console.log(`# worker: ${said}`);
  assert.equal(said, lq.Quota.polling ? 'extending on a timer' : 'extending on a thread');
  assert.equal(q.status().inflight, 1);
  await w.terminate();
  // The worker's wait (on a thread) outlives it: granted at t0 + 1 s, it
  // finds its ticket's object collected and cancels the ticket.
  client.setClock(t0 + 1000);
  for (let i = 0; i < 100000 && q.status().inflight > 0; i++) await new Promise((r) => setImmediate(r));
  assert.equal(q.status().inflight, 0, 'the terminated worker\'s ticket is given back');
});

test('settlePartial: gives back what the stream will not use; the ticket stays open', async () => {
  clockStart();
  const q = client.quota('partial'); // max_inflight 1
  const t = await q.reserve({ inputTokens: 100, outputTokens: 1000 });
  assert.equal(tpm(q), 4900);
  assert.throws(() => t.settlePartial({ outputTokens: 1001 }), (e) => e.code === 'EINVAL' && /above what the ticket holds/.test(e.message));
  assert.throws(() => t.settlePartial({ inputTokens: 1.5 }), RangeError);
  t.settlePartial({ outputTokens: 600 });
  assert.equal(t.outputTokens, 600);
  assert.equal(t.inputTokens, 100);
  assert.equal(tpm(q), 5300);
  assert.equal(t.settled, false);
  assert.equal(q.status().inflight, 1);
  assert.throws(() => q.tryReserve({ inputTokens: 1 }), lq.RetryLater); // its in-flight slot is still held
  await t.extend({ outputTokens: 300 });
  assert.equal(tpm(q), 5000);
  t.settlePartial({ outputTokens: 800 });
  assert.equal(tpm(q), 5100);
  // Refunds come from the last piece only: what the reservation held is spent.
  t.commit({ outputTokens: 500 });
  assert.equal(tpm(q), 5300);
  assert.equal(q.status().inflight, 0);
  assert.throws(() => t.settlePartial({ outputTokens: 1 }), (e) => e.code === 'EINVAL');
});

test('status: learning and alarms (quota_info 2.1)', () => {
  const t0 = clockStart();
  const q = client.quota('learn'); // auto_estimate; alarms held_s 5, over_estimate 2
  const s = q.status();
  assert.equal(s.lanes, 0);
  assert.equal(s.learned.mode, 'auto');
  assert.equal(s.learned.outputTokens, 0, 'nothing learned before 100 samples');
  assert.equal(s.learned.samples, 0);
  assert.deepEqual(s.learned.outputHistogram, new Array(16).fill(0));
  assert.deepEqual(s.alarms, { held: 0, overEstimate: 0, heldAfterMs: 5000, overEstimateRatio: 2, heldOpen: 0 });
  assert.equal(client.quota('plain').status().learned.mode, 'off');
  // No output named: the estimate is the caller's bound while nothing is learned.
  const free = tpm(q);
  const a = q.tryReserve({ inputTokens: 10, maxOutputTokens: 300 });
  assert.equal(free - tpm(q), 310);
  // The library knows the 300 it reserved, which this ticket object does not.
  a.settlePartial({ outputTokens: 250 });
  assert.equal(a.outputTokens, 250);
  assert.equal(free - tpm(q), 260);
  assert.throws(() => a.settlePartial({ outputTokens: 251 }), (e) => e.code === 'EINVAL' && /above what the ticket holds/.test(e.message));
  a.commit({ inputTokens: 10, outputTokens: 201 }); // under 2 x 300: no alarm
  const b = q.tryReserve({ inputTokens: 10, outputTokens: 100 });
  b.commit({ outputTokens: 201 }); // above 2 x 100
  const c = q.tryReserve({ inputTokens: 10, outputTokens: 100 });
  client.setClock(t0 + 5001);
  c.cancel(); // held more than 5 s
  const s2 = q.status();
  // (heldOpen depends on when quotad flipped the phase: the 2.2 test checks it)
  assert.equal(s2.alarms.held, 1);
  assert.equal(s2.alarms.overEstimate, 1);
  // Two commits of 201 output tokens: the half octave [192, 256) is bucket 8.
  const hist = s2.learned.outputHistogram;
  assert.equal(hist[8], 2);
  assert.equal(hist.reduce((x, y) => x + y, 0), 2);
});

// Poll q.status() until pick(status) is what `want` accepts: quotad's 250 ms
// check publishes learned quantiles and flips alarm phases. `step()` runs
// before each round (a clock move). Fails (rather than hangs) after 20 s.
async function statusUntil(q, pick, want, what, step = () => {}) {
  for (const deadline = Date.now() + 20000; Date.now() < deadline;) {
    step();
    for (const end = Date.now() + 1000; Date.now() < end;) { // a second of quotad's checks
      const v = pick(q.status());
      if (want(v)) return v;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  throw new Error(`${what}: not seen within 20 s (last ${JSON.stringify(pick(q.status()))})`);
}

test('status: prompt tokens and output ratio learned (quota_info 2.2)', async () => {
  clockStart();
  const q = client.quota('learn-dist'); // "learn"
  const s = q.status();
  assert.deepEqual(s.learned.promptTokens, { p50: 0, p99: 0 }, 'nothing learned before 100 samples');
  assert.deepEqual(s.learned.outputRatio, { p50: 0, p99: 0 });
  // 100 commits: prompts of 500 tokens (60), 3000 (39), 200000 (1); 1000 output tokens estimated, 100 used
  // (60: ratio 0.1), 1200 (39: 1.2), 9000 (1: 9).
  for (let i = 0; i < 100; i++) {
    const t = q.tryReserve({ inputTokens: i < 60 ? 500 : i < 99 ? 3000 : 200000, outputTokens: 1000 });
    t.commit({ outputTokens: i < 60 ? 100 : i < 99 ? 1200 : 9000 });
  }
  // p50 in the bucket below 1024 tokens, p99 in 2048-3071; the ratio's p50 below 0.125, p99 below 1.5.
  const learned = (what, want) => statusUntil(q, (st) => st.learned[what], want, `learned ${what}`);
  assert.deepEqual(await learned('promptTokens', (v) => v.p50 !== 0), { p50: 1023, p99: 3071 });
  assert.deepEqual(await learned('outputRatio', (v) => v.p50 !== 0), { p50: 0.125, p99: 1.5 });
  // 10 more: prompts of 150000 tokens and 10 times the estimate, in the open last buckets (131072 tokens
  // and up, 8 and up): the p99s are.
  for (let i = 0; i < 10; i++) q.tryReserve({ inputTokens: 150000, outputTokens: 10 }).commit({ outputTokens: 100 });
  assert.deepEqual(await learned('promptTokens', (v) => v.p99 === Infinity), { p50: 1023, p99: Infinity });
  assert.deepEqual(await learned('outputRatio', (v) => v.p99 === Infinity), { p50: 0.125, p99: Infinity });
});

test('status: tickets held open past held_s (quota_info 2.2)', async () => {
  clockStart();
  const q = client.quota('held'); // alarms held_s 1
  assert.equal(q.status().alarms.heldOpen, 0);
  // Each round moves the clock by held_s: quotad flips the quota's alarm phase at its next check. A ticket
  // shows at the second flip after its admission and leaves at the first after it is settled.
  const tick = () => client.setClock(client.now() + 1000);
  const heldOpen = (n, what) => statusUntil(q, (st) => st.alarms.heldOpen, (v) => v === n, what, tick);
  const a = q.tryReserve({});
  const b = q.tryReserve({});
  assert.equal(await heldOpen(2, 'both tickets open'), 2);
  a.commit();
  assert.equal(await heldOpen(1, 'a settled'), 1);
  b.cancel();
  assert.equal(await heldOpen(0, 'both settled'), 0);
  assert.equal(q.status().alarms.held, 2, 'both settled after more than held_s');
  assert.equal(client.quota('plain').status().alarms.heldOpen, 0, 'no held_s: 0');
});

test('createQuotaFetch: lane', async () => {
  clockStart();
  const q = client.quota('fetch-lanes');
  assert.throws(() => lq.createQuotaFetch(q, { lane: 'bulk' }), lq.NoSuchLane);
  let sent = 0;
  const fake = async () => {
    sent++;
    return new Response(JSON.stringify({ id: 'x', choices: [], usage: { prompt_tokens: 5, completion_tokens: 3 } }),
      { headers: { 'content-type': 'application/json' } });
  };
  const url = 'http://127.0.0.1:9/v1/chat/completions';
  const body = JSON.stringify({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: 'hello' }] });
  const hold = q.tryReserve({ inputTokens: 4800, lane: 'batch' }); // the batch lane is full
  const batch = lq.createQuotaFetch(q, { fetch: fake, lane: 'batch', timeoutMs: 0 });
  const top = lq.createQuotaFetch(q, { fetch: fake, lane: 'interactive', timeoutMs: 0 });
  const r1 = await batch(url, { method: 'POST', body });
  assert.equal(r1.status, 429);
  assert.ok(Number(r1.headers.get('retry-after-ms')) > 0);
  assert.equal(sent, 0);
  const before = q.status();
  const r2 = await top(url, { method: 'POST', body });
  assert.equal(r2.status, 200);
  assert.equal(sent, 1);
  assert.equal(q.status().admittedOutputTokens - before.admittedOutputTokens, 3);
  hold.cancel();
});

test('createQuotaFetch: a stream without max_tokens grows its reservation in steps (streamStep)', async () => {
  clockStart();
  const q = client.quota('fetch-stream'); // 6000 tokens, nothing moves
  assert.throws(() => lq.createQuotaFetch(q, { streamStep: -1 }), RangeError);
  const pieces = Array.from({ length: 6 }, (_, i) => `piece ${i}: ` + 'lorem ipsum dolor sit amet '.repeat(5));
  const events = pieces.map((c) => ({ id: 'x', choices: [{ index: 0, delta: { content: c } }] }));
  events.push({ id: 'x', choices: [], usage: { prompt_tokens: 5, completion_tokens: 120 } });
  const enc = new TextEncoder();
  const fake = async () => {
    let i = 0;
    return new Response(new ReadableStream({
      pull(c) { // one event a read
        if (i < events.length) c.enqueue(enc.encode(`data: ${JSON.stringify(events[i++])}\n\n`));
        else { c.enqueue(enc.encode('data: [DONE]\n\n')); c.close(); }
      },
    }), { headers: { 'content-type': 'text/event-stream' } });
  };
  const STEP = 20;
  const qf = lq.createQuotaFetch(q, { fetch: fake, streamStep: STEP });
  const body = JSON.stringify({ model: 'm', stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: 'tell me' }] });
  const prompt = lq.estimateTokens(body, 'chat');
  const before = q.status();
  const res = await qf('http://127.0.0.1:9/v1/chat/completions', { method: 'POST', body });
  assert.equal(res.status, 200);
  const held = () => 6000 - tpm(q);
  assert.equal(held(), prompt + STEP, 'one step reserved at first');
  const reader = res.body.getReader();
  let streamed = 0;
  for (const c of pieces) {
    const r = await reader.read();
    assert.equal(r.done, false);
    streamed += lq.estimateTextTokens(c);
    // Grown by whole steps to cover what was seen, no further.
    assert.equal(held(), prompt + STEP * Math.max(1, Math.ceil(streamed / STEP)), `after ${streamed} tokens`);
  }
  assert.ok(streamed > 2 * STEP, 'the stream outgrew its first steps');
  while (!(await reader.read()).done);
  const after = q.status();
  assert.equal(after.admittedOutputTokens - before.admittedOutputTokens, 120, 'the usage reported is committed');
  assert.equal(after.admitted - before.admitted, 1);
});
