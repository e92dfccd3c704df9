// SPDX-License-Identifier: MIT
//
// sim_vocab.mjs - quota-sim --vocab counts prompt tokens as the real
// tokenizer does: for every paragraph of the estimator's corpus (and every
// whole file), usage.prompt_tokens of a one-message request must be
// 4 + the o200k_base count of gpt-tokenizer (npm).
// Usage: node sim_vocab.mjs PORT CORPUS-DIR
import { readFileSync, readdirSync } from 'node:fs';
import { encode } from 'gpt-tokenizer/encoding/o200k_base';

const [port, dir] = process.argv.slice(2);
const texts = [];
for (const f of readdirSync(dir).sort()) {
  const t = readFileSync(`${dir}/${f}`, 'utf8');
  texts.push(t, ...t.split('\n\n').filter((p) => p.length > 0));
}
let bad = 0, n = 0;
for (const text of texts) {
  const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer sk-vocab-${n}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', max_tokens: 1, messages: [{ role: 'user', content: text }] }),
  });
  const j = await r.json();
  const want = 4 + encode(text).length;
  n++;
  if (j.usage?.prompt_tokens !== want) {
    bad++;
    console.log(`not ok - ${JSON.stringify(text.slice(0, 40))}: sim ${j.usage?.prompt_tokens ?? JSON.stringify(j)}, o200k + 4 = ${want}`);
  }
}
console.log(`${n - bad} of ${n} texts counted as o200k_base does`);
process.exit(bad ? 1 : 0);
