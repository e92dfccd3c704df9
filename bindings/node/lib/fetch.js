// SPDX-License-Identifier: MIT
//
// fetch.js - createQuotaFetch: a fetch for the official `openai` SDK
// (`new OpenAI({ fetch })`) and any other client that takes one. For a POST
// to .../chat/completions, .../completions or .../embeddings it estimates the
// prompt (the estimator quota-proxy uses), reserves {1, prompt, max_tokens x n}
// on the quota (in opts.lane; a chat stream without max_tokens, with
// opts.streamStep, one step, then one more each time its output outgrows
// the ticket), sends, folds the response's x-ratelimit-* headers into the
// shared state, and commits the `usage` the answer reports: from the JSON
// body, or from a stream's final usage chunk (asked for, and stripped again
// when the caller did not ask). Local refusals are answered the way the
// provider would, so the SDK's own retry logic applies: 429 with
// retry-after-ms (no budget within timeoutMs), 429 insufficient_quota with
// x-should-retry: false (spend budget used up), 400 context_length_exceeded
// (can never fit). Other requests pass through untouched.
'use strict';

const { RetryLater, TooBig, BudgetExhausted, estimateTokens, estimateTextTokens } = require('./index.js');

const ENDPOINTS = [
  [/\/chat\/completions\/?$/, 'chat'],
  [/\/completions\/?$/, 'completion'],
  [/\/embeddings\/?$/, 'embedding'],
];

function endpointOf(url) {
  let p;
  try { p = new URL(url).pathname; } catch { return null; }
  for (const [re, ep] of ENDPOINTS) if (re.test(p)) return ep;
  return null;
}

function errorResponse(status, body, headers = {}) {
  return new Response(JSON.stringify({ error: { param: null, ...body } }), {
    status,
    headers: { 'content-type': 'application/json', ...headers },
  });
}

// What the provider's answer says was used: {input, output}, or null.
function usageOf(u) {
  if (!u || typeof u !== 'object') return null;
  const input = u.prompt_tokens ?? u.input_tokens;
  const output = u.completion_tokens ?? u.output_tokens ?? 0;
  if (!Number.isSafeInteger(input) || input < 0 || !Number.isSafeInteger(output) || output < 0) return null;
  return { input, output };
}

// The headers of a rebuilt Response: the body it carries is already decoded.
function copyHeaders(h) {
  const out = new Headers(h);
  out.delete('content-encoding');
  out.delete('content-length');
  return out;
}

/**
 * @param {import('./index.js').Quota} quota
 * @param {object} [opts]
 * @param {Function} [opts.fetch]          the fetch to call (default: globalThis.fetch)
 * @param {number} [opts.timeoutMs=60000]  longest wait for budget before a local 429
 * @param {number} [opts.defaultMaxTokens=4096]  output reserved when a request names no max_tokens
 * @param {number} [opts.backoffMs=1000]   host-wide pause on a provider 429 without retry-after
 * @param {(body: object, endpoint: string, text: string) => number} [opts.estimate]  prompt tokens of a request
 * @param {string} [opts.lane]             the quota's lane to reserve in (default its lowest)
 * @param {number} [opts.streamStep=0]     a chat stream without max_tokens reserves this many output
 *   tokens, and as many more (ticket.tryExtend) each time its output outgrows them
 */
function createQuotaFetch(quota, opts = {}) {
  const baseFetch = opts.fetch ?? globalThis.fetch;
  const timeoutMs = opts.timeoutMs ?? 60000;
  const defaultMaxTokens = opts.defaultMaxTokens ?? 4096;
  const backoffMs = opts.backoffMs ?? 1000;
  const estimate = opts.estimate ?? ((body, ep, text) => estimateTokens(text, ep));
  if (typeof baseFetch !== 'function') throw new TypeError('createQuotaFetch: no fetch to wrap');
  const lane = opts.lane ?? undefined;
  if (lane !== undefined) quota.lane(lane); // NoSuchLane now, not at the first request
  const streamStep = opts.streamStep ?? 0;
  if (!Number.isSafeInteger(streamStep) || streamStep < 0 || streamStep > 2 ** 32)
    throw new RangeError(`createQuotaFetch: streamStep must be an integer in [0, 2^32], not ${opts.streamStep}`);

  return async function quotaFetch(input, init = {}) {
    // A Request as input: its method, headers and signal, unless init says otherwise.
    if (input && typeof input === 'object' && !(input instanceof URL) && typeof input.url === 'string')
      init = { method: input.method, headers: input.headers, signal: input.signal, ...init };
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input?.url;
    const method = String(init.method ?? 'GET').toUpperCase();
    const ep = method === 'POST' ? endpointOf(url) : null;
    if (!ep) return baseFetch(input, init);

    let text = init.body ?? (typeof input === 'object' && input.body ? await input.clone().text() : null);
    if (text != null && typeof text !== 'string') text = await new Response(text).text();
    let body;
    try { body = JSON.parse(text); } catch { body = null; }
    if (!body || typeof body !== 'object' || Array.isArray(body)) return baseFetch(input, init);

    // The estimate: prompt tokens, and max tokens x n for the answer.
    let prompt;
    try { prompt = estimate(body, ep, text); } catch (e) {
      return errorResponse(400, { message: e.message, type: 'invalid_request_error', code: null },
        { 'x-should-retry': 'false' });
    }
    const n = Number.isSafeInteger(body.n) && body.n > 0 ? body.n : 1;
    let maxTokens = body.max_completion_tokens ?? body.max_tokens;
    const stream = body.stream === true;
    // A chat stream that names no max_tokens follows its output in steps.
    const follow = streamStep > 0 && stream && ep === 'chat' && !(Number.isSafeInteger(maxTokens) && maxTokens >= 1);
    if (follow) maxTokens = streamStep;
    else if (!Number.isSafeInteger(maxTokens) || maxTokens < 1)
      maxTokens = ep === 'completion' ? Math.min(16, defaultMaxTokens) : defaultMaxTokens;
    const output = ep === 'embedding' ? 0 : maxTokens * n;
    const stripUsage = stream && body.stream_options?.include_usage !== true;
    if (stripUsage) text = JSON.stringify({ ...body, stream_options: { ...body.stream_options, include_usage: true } });

    let ticket;
    try {
      ticket = await quota.reserve({ requests: 1, inputTokens: prompt, outputTokens: output, lane,
                                     timeoutMs, signal: init.signal ?? undefined });
    } catch (e) {
      if (e instanceof RetryLater) {
        const ms = Math.max(1, Math.ceil(e.retryAfterMs));
        return errorResponse(429, {
          message: `Rate limit reached for quota '${quota.name}' (shared on this host by libquota): ` +
                   `no budget within ${timeoutMs} ms. Please try again in ${ms} ms.`,
          type: 'tokens', code: 'rate_limit_exceeded',
        }, { 'retry-after-ms': String(ms), 'retry-after': String(Math.ceil(ms / 1000)) });
      }
      if (e instanceof BudgetExhausted)
        return errorResponse(429, { message: `The spend budget of quota '${quota.name}' for this period is used up (libquota).`,
                                    type: 'insufficient_quota', code: 'insufficient_quota' },
                             { 'x-should-retry': 'false' });
      if (e instanceof TooBig)
        return errorResponse(400, { message: `This request can never fit quota '${quota.name}': about ${prompt} prompt ` +
                                             `tokens (estimated) + ${output} max tokens is above its context window or a limit's capacity.`,
                                    type: 'invalid_request_error', code: 'context_length_exceeded' },
                             { 'x-should-retry': 'false' });
      throw e; // aborted, or the client is closed
    }

    // Settle once: with the usage reported, else with what the ticket holds
    // (or what a followed stream was seen to produce, if more).
    let settled = false, streamed = 0, grows = follow;
    const settle = (usage, sent = true) => {
      if (settled) return;
      settled = true;
      try {
        if (!sent) ticket.cancel();
        else if (usage) ticket.commit({ requests: 1, inputTokens: usage.input, outputTokens: usage.output });
        else ticket.commit({ outputTokens: Math.max(ticket.outputTokens, streamed) });
      } catch { /* the client was closed: its tickets are gone already */ }
    };
    // A followed stream's output as it passes: one more step each time it
    // outgrows the ticket, never waiting; refused once, it stops growing
    // and the rest is debt at commit.
    const onOutput = follow ? (tokens) => {
      streamed += tokens;
      while (grows && !settled && streamed > ticket.outputTokens) {
        try { ticket.tryExtend({ outputTokens: streamStep }); } catch { grows = false; }
      }
    } : null;

    // The body may have been rewritten (include_usage): the caller's
    // content-length (openai v4 sets one) is left for fetch to compute.
    const headers = new Headers(init.headers ?? undefined);
    headers.delete('content-length');
    let res;
    try {
      res = await baseFetch(url, { ...init, method, headers, body: text });
    } catch (e) {
      // Refused connection: never sent. Anything else may have reached it.
      settle(null, e?.cause?.code === 'ECONNREFUSED');
      throw e;
    }
    try { quota.feedback(res.headers); } catch { /* closed */ }
    if (res.status === 429) {
      // Not counted by the provider; the whole host pauses.
      const ms = Number(res.headers.get('retry-after-ms'));
      const hasRetryAfter = res.headers.get('retry-after') != null;
      try {
        if (ms > 0) quota.backoff(ms);
        else if (!hasRetryAfter) quota.backoff(backoffMs);
      } catch { /* closed */ }
      settle(null, false);
      return res;
    }
    if (!res.ok) {
      settle(null, res.status >= 500); // a 4xx was refused unprocessed
      return res;
    }
    if (!res.body) { settle(null); return res; }

    const type = res.headers.get('content-type') || '';
    if (stream && type.includes('text/event-stream'))
      return new Response(tapStream(res.body, stripUsage, settle, onOutput),
        { status: res.status, statusText: res.statusText, headers: copyHeaders(res.headers) });

    let raw;
    try { raw = await res.text(); } catch (e) { settle(null); throw e; }
    let usage = null;
    try { usage = usageOf(JSON.parse(raw).usage); } catch { /* not JSON */ }
    settle(usage);
    return new Response(raw, { status: res.status, statusText: res.statusText, headers: copyHeaders(res.headers) });
  };
}

// Estimated output tokens of a stream chunk's choices: their delta's content
// (or a completion's text), else its tool calls.
function deltaTokens(choices) {
  let t = 0;
  for (const ch of choices) {
    const text = typeof ch?.delta?.content === 'string' ? ch.delta.content : ch?.text;
    if (typeof text === 'string') t += estimateTextTokens(text);
    else if (ch?.delta?.tool_calls) t += estimateTextTokens(JSON.stringify(ch.delta.tool_calls));
  }
  return t;
}

// Pass a server-sent event stream through, event by event, noting the usage
// chunk (and dropping it, and the "usage": null of the other chunks, when
// the caller did not ask for it) and telling onOutput (if any) the output
// tokens of each chunk; settle at its end or when the reader cancels it.
function tapStream(upstream, strip, settle, onOutput) {
  const reader = upstream.getReader();
  const dec = new TextDecoder();
  const enc = new TextEncoder();
  let buf = '', usage = null;

  const event = (ev) => {
    const lines = ev.split(/\r?\n/);
    const data = lines.filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
    if (!data || data === '[DONE]') return ev;
    let j;
    try { j = JSON.parse(data); } catch { return ev; }
    if (!j || typeof j !== 'object') return ev;
    if (onOutput && Array.isArray(j.choices)) onOutput(deltaTokens(j.choices));
    if (j.usage) {
      usage = usageOf(j.usage) ?? usage;
      if (strip && Array.isArray(j.choices) && j.choices.length === 0) return null;
    }
    if (strip && 'usage' in j) {
      delete j.usage;
      return lines.filter((l) => !l.startsWith('data:')).concat('data: ' + JSON.stringify(j)).join('\n');
    }
    return ev;
  };
  const drain = (controller, final) => {
    let m;
    const re = /\r?\n\r?\n/g;
    let last = 0;
    while ((m = re.exec(buf))) {
      const out = event(buf.slice(last, m.index));
      if (out !== null) controller.enqueue(enc.encode(out + '\n\n'));
      last = m.index + m[0].length;
    }
    buf = buf.slice(last);
    if (final && buf) {
      const out = event(buf);
      if (out !== null) controller.enqueue(enc.encode(out));
      buf = '';
    }
  };

  return new ReadableStream({
    async pull(controller) {
      let r;
      try { r = await reader.read(); } catch (e) { settle(usage); controller.error(e); return; }
      if (r.done) {
        buf += dec.decode();
        drain(controller, true);
        settle(usage);
        controller.close();
        return;
      }
      buf += dec.decode(r.value, { stream: true });
      drain(controller, false);
    },
    cancel(reason) {
      settle(usage); // without a usage chunk: what was reserved
      return reader.cancel(reason);
    },
  });
}

module.exports = { createQuotaFetch };
