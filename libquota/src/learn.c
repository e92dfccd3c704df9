/* SPDX-License-Identifier: MIT */
/*
 * learn.c - estimates that learn: the decaying log-histograms of the client
 * rows, and quotad's merge of them per quota into the published estimates.
 *
 * Each thread keeps, in its row of a quota with "learn" or "auto_estimate",
 * three histograms of its commits (settle.c): the actual output tokens, the
 * prompt (input) tokens, and the actual/estimated output ratio. One
 * mechanism serves all three (qc_hist_add: 16 half-octave buckets of 8-bit
 * counts, all halved when one would overflow; one writer, no shared write
 * on the hot path); they differ only in the shift applied to the value
 * (layout.h: prompts are counted in units of 64 tokens so that the buckets
 * reach 131,072; the ratio in 1/256). quotad merges the rows of live clients
 * every check (qc_learn_publish) and stores, per quota, the upper edge of
 * the bucket holding a quantile: an estimate never below that quantile of
 * what was seen, at most 1.5 times it (or "open" when it lies in the last
 * bucket, which has no edge). For output tokens that is the p99, the
 * reservation auto_estimate uses (QS_LEARNED_OPEN: reservations then use
 * their bound, max_tokens); for prompts and the ratio the p50 and the p99,
 * shown only. Rows of clients that left are not merged (the histograms are
 * a recent picture). quota_info() merges the same way for display.
 */
#include "internal.h"

void qc_hist_add(_Atomic uint64_t *h, uint64_t x)
{
	uint32_t b = qs_hist_bucket(x);
	uint64_t w[2] = { atomic_load_explicit(&h[0], memory_order_relaxed),
			  atomic_load_explicit(&h[1], memory_order_relaxed) };
	if (qs_hist_count(w, b) == 0xff) /* decay: halve every count */
		for (int i = 0; i < 2; i++)
			w[i] = (w[i] >> 1) & 0x7f7f7f7f7f7f7f7fULL;
	w[b / 8] += 1ULL << (8 * (b % 8));
	atomic_store_explicit(&h[0], w[0], memory_order_relaxed);
	atomic_store_explicit(&h[1], w[1], memory_order_relaxed);
}

uint64_t qc_hist_ratio(uint64_t actual, uint64_t estimate)
{
	unsigned __int128 x = (unsigned __int128)actual * QS_RATIO_ONE / (estimate ? estimate : 1);
	return x > UINT64_MAX ? UINT64_MAX : (uint64_t)x;
}

void qc_learn_merge_row(uint64_t *counts, const struct qs_row *row)
{
	const _Atomic uint64_t *hs[QC_HISTS] = { row->out_hist, row->in_hist, row->ratio_hist };
	for (uint32_t i = 0; i < QC_HISTS; i++) {
		uint64_t h[2] = { atomic_load_explicit(&hs[i][0], memory_order_relaxed),
				  atomic_load_explicit(&hs[i][1], memory_order_relaxed) };
		for (uint32_t b = 0; b < QS_HIST_BUCKETS; b++)
			counts[i * QS_HIST_BUCKETS + b] += qs_hist_count(h, b);
	}
}

int qc_hist_quantile(const uint64_t *counts, uint32_t permille, uint64_t *ret_samples)
{
	uint64_t n = 0;
	for (uint32_t b = 0; b < QS_HIST_BUCKETS; b++)
		n += counts[b];
	if (ret_samples)
		*ret_samples = n;
	if (n < QC_LEARN_MIN_SAMPLES)
		return -1;
	/* the smallest bucket with at least permille of the weight at or below
	 * it (n < 2^40: 8-bit counts of at most 2^24 rows) */
	uint64_t need = (n * permille + 999) / 1000, seen = 0;
	for (uint32_t b = 0; b < QS_HIST_BUCKETS; b++) {
		seen += counts[b];
		if (seen >= need)
			return (int)b;
	}
	return QS_HIST_BUCKETS - 1;
}

/* The p50 and p99 edges of a histogram of shift @shift, as a QS_PAIR word;
 * 0 with too few samples. */
static uint64_t pair_of(const uint64_t *counts, uint32_t shift)
{
	int b50 = qc_hist_quantile(counts, 500, NULL), b99 = qc_hist_quantile(counts, 990, NULL);
	if (b50 < 0 || b99 < 0)
		return 0;
	uint64_t e50 = qs_hist_edge((uint32_t)b50, shift), e99 = qs_hist_edge((uint32_t)b99, shift);
	return QS_PAIR(e50 ? e50 : QS_PAIR_OPEN, e99 ? e99 : QS_PAIR_OPEN);
}

/* Publish quota @q's estimates from its merged @counts (QC_HISTS
 * histograms); the last ones are kept while too few clients are live. */
static void publish_quota(struct qs_quota *q, const uint64_t *counts)
{
	uint64_t samples;
	int b = qc_hist_quantile(&counts[QC_HIST_OUT * QS_HIST_BUCKETS], 990, &samples);
	/* relaxed: one word each, read alone (reserve's auto_estimate, info) */
	atomic_store_explicit(&q->learned_samples, samples, memory_order_relaxed);
	if (b >= 0)
		atomic_store_explicit(&q->learned_out, qs_hist_top((uint32_t)b) ? qs_hist_top((uint32_t)b) :
			QS_LEARNED_OPEN, memory_order_relaxed);
	uint64_t in = pair_of(&counts[QC_HIST_IN * QS_HIST_BUCKETS], QS_HIST_IN_SHIFT);
	uint64_t ratio = pair_of(&counts[QC_HIST_RATIO * QS_HIST_BUCKETS], 0);
	if (in)
		atomic_store_explicit(&q->learned_in, in, memory_order_relaxed);
	if (ratio)
		atomic_store_explicit(&q->learned_ratio, ratio, memory_order_relaxed);
}

void qc_learn_publish(const struct qs_geom *g, const uint8_t *learns, uint32_t n, uint64_t *scratch)
{
	const uint32_t per = QC_HISTS * QS_HIST_BUCKETS;
	for (uint32_t i = 0; i < n * per; i++)
		scratch[i] = 0;
	for (uint32_t s = 0; s < g->client_capacity; s++) {
		const struct qs_client *cs = qs_client_at(g, s);
		if (QS_CLIENT_STATUS(atomic_load_explicit(&cs->state, memory_order_acquire)) != QS_CLIENT_LIVE)
			continue;
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++) {
			uint32_t id1 = atomic_load_explicit(&cs->rows[r].quota1, memory_order_acquire);
			if (id1 == 0 || id1 > n || !learns[id1 - 1])
				continue;
			qc_learn_merge_row(&scratch[(id1 - 1) * per], &cs->rows[r]);
		}
	}
	for (uint32_t id = 0; id < n; id++) {
		struct qs_quota *q = qs_quota_at(g, id);
		if (q && learns[id])
			publish_quota(q, &scratch[id * per]);
	}
}
