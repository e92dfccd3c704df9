// SPDX-License-Identifier: MIT
//
// openai_sdk.mjs - the official OpenAI SDK (npm "openai") against quota-sim:
// a completion is served and parsed; a request over the limit gives a
// RateLimitError (429) with retry-after and the x-ratelimit headers; and with
// retries on, the SDK itself waits out the retry-after and then succeeds.
// Usage: node openai_sdk.mjs PORT   (quota-sim started with --rpm 60 --burst 0.01:
// one request at once, one more per second)
import OpenAI from 'openai';

const port = process.argv[2];
const fail = (msg) => { console.error('FAIL: ' + msg); process.exit(1); };
const header = (h, name) => (h && typeof h.get === 'function') ? h.get(name) : h?.[name];

const client = new OpenAI({ apiKey: 'sk-sdk-test', baseURL: `http://127.0.0.1:${port}/v1`,
                            maxRetries: 0, timeout: 20000 });
const ask = (c) => c.chat.completions.create({
  model: 'llama-4-scout',
  messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say hello.' }],
  max_tokens: 16,
});

// 1. Served: 'Be brief.' is 9 bytes, 'Say hello.' 10: (4 + 3) + (4 + 3) = 14.
const r = await ask(client);
if (r.object !== 'chat.completion') fail('object ' + r.object);
if (typeof r.choices?.[0]?.message?.content !== 'string') fail('no content');
if (r.usage?.prompt_tokens !== 14) fail('prompt_tokens ' + r.usage?.prompt_tokens + ', want 14');
if (!(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 16)) fail('completion_tokens');
console.log(`served: ${r.id}, usage ${JSON.stringify(r.usage)}`);

// 2. Over the limit at once: 429 with retry-after, as a RateLimitError.
try {
  await ask(client);
  fail('second request was served; want 429');
} catch (e) {
  if (!(e instanceof OpenAI.RateLimitError)) fail('not a RateLimitError: ' + e);
  if (e.status !== 429) fail('status ' + e.status);
  const ra = header(e.headers, 'retry-after');
  if (!ra || !(Number(ra) >= 1)) fail('retry-after ' + ra);
  for (const h of ['x-ratelimit-limit-requests', 'x-ratelimit-remaining-requests',
                   'x-ratelimit-reset-requests', 'x-ratelimit-limit-tokens',
                   'x-ratelimit-remaining-tokens', 'x-ratelimit-reset-tokens'])
    if (header(e.headers, h) == null) fail('no ' + h);
  if (e.code !== 'rate_limit_exceeded' || e.type !== 'requests') fail(`code ${e.code} type ${e.type}`);
  console.log(`429 seen: retry-after ${ra} s, retry-after-ms ${header(e.headers, 'retry-after-ms')},` +
              ` reset-requests ${header(e.headers, 'x-ratelimit-reset-requests')}: ${e.message}`);
}

// 3. The SDK's own retry honours retry-after and then gets through.
const patient = new OpenAI({ apiKey: 'sk-sdk-test', baseURL: `http://127.0.0.1:${port}/v1`,
                             maxRetries: 3, timeout: 20000 });
const r3 = await ask(patient);
if (r3.usage?.prompt_tokens !== 14) fail('retried request not served');
console.log(`served after the SDK's retry: ${r3.id}`);
console.log('PASS');
