// SPDX-License-Identifier: MIT
//
// measure.mjs - the token estimator (tools/common/estimate.c) against real
// BPE tokenizers on tests/estimate/corpus: o200k_base (npm gpt-tokenizer)
// and Llama 3 (npm llama3-tokenizer-js). Every corpus file is one sample,
// and so is every chunk of it of at most CHUNK bytes cut at line ends.
// Prints per category and overall: samples, estimate/actual (min, p50, mean,
// max) per tokenizer, the share under-estimated; --markdown for the docs.
// Exit 1 if any sample is under-estimated by either tokenizer, or the mean
// ratio (against the larger of the two counts) is above --max-mean.
//
// Usage: node measure.mjs CORPUS-DIR EST_LINES [--markdown] [--max-mean 1.15]
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { encode as o200k } from 'gpt-tokenizer/encoding/o200k_base';
import llama3 from 'llama3-tokenizer-js';

const [dir, estBin, ...opts] = process.argv.slice(2);
const markdown = opts.includes('--markdown');
const maxMean = opts.includes('--max-mean') ? Number(opts[opts.indexOf('--max-mean') + 1]) : Infinity;
const CHUNK = 400;

const samples = [];
for (const f of readdirSync(dir).sort()) {
  const text = readFileSync(`${dir}/${f}`, 'utf8');
  const cat = f.replace(/(-\d+)?\.txt$/, '');
  samples.push({ cat, name: f, text });
  let cur = '';
  for (const line of text.split(/(?<=\n)/)) {
    if (cur && Buffer.byteLength(cur + line) > CHUNK) {
      samples.push({ cat, name: `${f}#${samples.length}`, text: cur });
      cur = '';
    }
    cur += line;
  }
  if (cur && cur !== text) samples.push({ cat, name: `${f}#${samples.length}`, text: cur });
}

const est = execFileSync(estBin, { input: samples.map((s) => JSON.stringify(s.text)).join('\n') + '\n' })
  .toString().trim().split('\n').map(Number);
samples.forEach((s, i) => {
  s.est = est[i];
  s.o200k = o200k(s.text).length;
  s.llama3 = llama3.encode(s.text, { bos: false, eos: false }).length;
  s.max = Math.max(s.o200k, s.llama3);
});

const q = (a, p) => { const b = [...a].sort((x, y) => x - y); return b[Math.min(b.length - 1, Math.floor(p * b.length))]; };
const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
const stats = (list, key) => {
  const r = list.map((s) => s.est / s[key]);
  return { min: Math.min(...r), p50: q(r, 0.5), mean: mean(r), max: Math.max(...r),
           under: list.filter((s) => s.est < s[key]).length };
};
const cats = [...new Set(samples.map((s) => s.cat))];
const rows = [...cats.map((c) => [c, samples.filter((s) => s.cat === c)]), ['all', samples]];
const f2 = (x) => x.toFixed(2);

if (markdown) {
  console.log('| corpus | samples | bytes | o200k tokens | Llama 3 tokens | estimate | est/o200k min · p50 · mean · max | est/Llama 3 min · p50 · mean · max | under |');
  console.log('|---|---:|---:|---:|---:|---:|---|---|---:|');
}
for (const [c, list] of rows) {
  const a = stats(list, 'o200k'), b = stats(list, 'llama3');
  const bytes = list.reduce((x, s) => x + Buffer.byteLength(s.text), 0);
  const sum = (k) => list.reduce((x, s) => x + s[k], 0);
  const under = list.filter((s) => s.est < s.max).length;
  if (markdown)
    console.log(`| ${c} | ${list.length} | ${bytes} | ${sum('o200k')} | ${sum('llama3')} | ${sum('est')} | ` +
      `${f2(a.min)} · ${f2(a.p50)} · ${f2(a.mean)} · ${f2(a.max)} | ${f2(b.min)} · ${f2(b.p50)} · ${f2(b.mean)} · ${f2(b.max)} | ${under} |`);
  else
    console.log(`${c.padEnd(14)} n=${String(list.length).padStart(3)}  o200k ${f2(a.min)} ${f2(a.p50)} ${f2(a.mean)} ${f2(a.max)}` +
      `  llama3 ${f2(b.min)} ${f2(b.p50)} ${f2(b.mean)} ${f2(b.max)}  under ${under}`);
}
const worst = samples.filter((s) => s.est < s.max);
for (const s of worst) console.error(`under: ${s.name} est ${s.est} o200k ${s.o200k} llama3 ${s.llama3}`);
const overall = mean(samples.map((s) => s.est / s.max));
console.error(`mean estimate / max(o200k, llama3): ${overall.toFixed(3)} over ${samples.length} samples; under-estimated: ${worst.length}`);
process.exit(worst.length > 0 || overall > maxMean ? 1 : 0);
