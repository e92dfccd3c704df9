// SPDX-License-Identifier: MIT
//
// sdk.mjs - the official OpenAI SDK (npm "openai") through quota-proxy.
//  1. Identity: the same requests to two simulators with the same seed, one
//     directly and one through the proxy: the answers are identical (but the
//     `created` second), non-streamed and streamed, with and without
//     stream_options.include_usage (the usage chunk the proxy asks for
//     stripped when the client did not).
//  2. Load: N SDK clients with their default retries on one quota for D
//     seconds through the proxy, then the same N clients directly on a fresh
//     key: the upstream's 429 count for each (its own /stats), and the share
//     of the binding limit (TPM) used after the first burst.
// Prints the figures; exits 1 if an answer differs or the proxied clients
// met an upstream 429 (and, with --min-util U, if the proxied run used less
// than U % of the binding limit).
//
// Usage: node sdk.mjs PROXY-PORT SIM-A-PORT SIM-B-PORT TPM CLIENTS SECONDS [--min-util U]
import OpenAI from 'openai';

const [pport, aport, bport, tpm, clients, seconds] = process.argv.slice(2, 8).map(Number);
const minUtil = process.argv.includes('--min-util') ? Number(process.argv[process.argv.indexOf('--min-util') + 1]) : 0;
let failed = 0;
const fail = (m) => { console.log('not ok - ' + m); failed++; };
const ok = (m) => console.log('ok - ' + m);
const sdk = (port, key, opts = {}) => new OpenAI({ apiKey: key, baseURL: `http://127.0.0.1:${port}/v1`, ...opts });
const strip = (o) => JSON.stringify(o, (k, v) => (k === 'created' ? undefined : v));

// ---- 1. identity (sim A direct, sim B through the proxy: same seed)
const direct = sdk(aport, 'sk-same', { maxRetries: 0 });
const proxied = sdk(pport, 'sk-same', { maxRetries: 0 });
const req = (extra) => ({ model: 'llama-4-scout', max_tokens: 12,
  messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say hello to the world, in three languages.' }], ...extra });
const collect = async (c, extra) => { const out = []; for await (const ch of await c.chat.completions.create(req(extra))) out.push(ch); return out; };

const [a1, b1] = [await direct.chat.completions.create(req({})), await proxied.chat.completions.create(req({}))];
strip(a1) === strip(b1) ? ok(`non-streamed answer identical (${a1.usage.prompt_tokens} + ${a1.usage.completion_tokens} tokens)`) :
  fail(`non-streamed answers differ:\n  ${strip(a1)}\n  ${strip(b1)}`);
const [a2, b2] = [await collect(direct, { stream: true }), await collect(proxied, { stream: true })];
strip(a2) === strip(b2) ? ok(`streamed answer identical (${a2.length} chunks, no usage chunk)`) :
  fail(`streamed answers differ:\n  ${strip(a2)}\n  ${strip(b2)}`);
const so = { stream: true, stream_options: { include_usage: true } };
const [a3, b3] = [await collect(direct, so), await collect(proxied, so)];
strip(a3) === strip(b3) && a3.at(-1).usage ? ok(`streamed with include_usage identical (usage ${JSON.stringify(a3.at(-1).usage)})`) :
  fail(`include_usage streams differ:\n  ${strip(a3)}\n  ${strip(b3)}`);

// ---- 2. load: N clients with default retries, through the proxy then directly
const stats = async (port) => (await fetch(`http://127.0.0.1:${port}/stats`)).json();
const words = 'the quick brown fox jumps over a lazy dog while seven tired engineers review the budget '.split(' ');
async function load(port, key, sport) {
  const warm = Math.min(seconds / 3, 20) * 1000, end = Date.now() + seconds * 1000;
  let errors = 0, served = 0, s0 = null, t0 = 0;
  const mark = setTimeout(async () => { t0 = Date.now(); s0 = (await stats(sport)).keys[key]; }, warm);
  await Promise.all(Array.from({ length: clients }, async (_, i) => {
    const c = sdk(port, key); // default retries and timeout
    let seed = i + 1;
    while (Date.now() < end) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      const n = 40 + (seed % 160);
      const content = Array.from({ length: n }, (_, k) => words[(seed + k) % words.length]).join(' ');
      try {
        await c.chat.completions.create({ model: 'llama-4-scout', max_tokens: 200, messages: [{ role: 'user', content }] });
        served++;
      } catch (e) { errors++; }
    }
  }));
  clearTimeout(mark);
  const s1 = (await stats(sport)).keys[key], t1 = Date.now();
  const used = s0 ? (s1.charged_tokens - s0.charged_tokens) : 0;
  const util = s0 ? 100 * used / (tpm * (t1 - t0) / 60000) : 0;
  return { served, errors, upstream429: s1.rejected_429, util };
}
if (seconds > 0) {
  const p = await load(pport, 'sk-load-proxy', bport);
  const d = await load(aport, 'sk-load-direct', aport);
  console.log(`${clients} SDK clients (default retries), ${seconds} s each, TPM ${tpm}:`);
  console.log(`  through quota-proxy: served ${p.served}, upstream 429s ${p.upstream429}, client errors ${p.errors}, TPM used ${p.util.toFixed(1)} %`);
  console.log(`  directly:            served ${d.served}, upstream 429s ${d.upstream429}, client errors ${d.errors}, TPM used ${d.util.toFixed(1)} %`);
  p.upstream429 === 0 ? ok('no upstream 429 through the proxy') : fail(`${p.upstream429} upstream 429s through the proxy`);
  if (minUtil) p.util >= minUtil ? ok(`binding limit used at ${p.util.toFixed(1)} % >= ${minUtil} %`) : fail(`binding limit used at ${p.util.toFixed(1)} % < ${minUtil} %`);
}
console.log(failed ? 'FAIL' : 'PASS');
process.exit(failed ? 1 : 0);
