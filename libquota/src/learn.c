/* SPDX-License-Identifier: MIT */
/*
 * learn.c - estimates that learn: merge the clients' histograms of actual
 * output tokens per quota and publish the suggested reservation.
 *
 * Each thread keeps, in its row of a quota with "learn" or "auto_estimate",
 * a decaying log-histogram of the output tokens its commits reported
 * (settle.c: 16 half-octave buckets of 8-bit counts, all halved when one would
 * overflow; one writer, no shared write on the hot path). quotad merges the
 * rows of live clients every check (qc_learn_publish) and stores, per
 * quota, the upper edge of the bucket holding the 99th percentile: an
 * estimate never below the p99 of what was seen, at most 1.5 times it (or
 * QS_LEARNED_OPEN when it lies in the last bucket, from 2048 up, which has
 * no edge: reservations then use their bound, max_tokens). Rows of
 * clients that left are not merged (the histogram is a recent picture).
 * quota_info() merges the same way for display.
 */
#include "internal.h"

void qc_learn_merge_row(uint64_t *counts, const struct qs_row *row)
{
	uint64_t h[2] = { atomic_load_explicit(&row->out_hist[0], memory_order_relaxed),
			  atomic_load_explicit(&row->out_hist[1], memory_order_relaxed) };
	for (uint32_t b = 0; b < QS_HIST_BUCKETS; b++)
		counts[b] += qs_hist_count(h, b);
}

uint64_t qc_learn_p99(const uint64_t *counts, uint64_t *ret_samples)
{
	uint64_t n = 0;
	for (uint32_t b = 0; b < QS_HIST_BUCKETS; b++)
		n += counts[b];
	if (ret_samples)
		*ret_samples = n;
	if (n < QC_LEARN_MIN_SAMPLES)
		return 0;
	/* the smallest bucket with at least 99 % of the weight at or below it */
	uint64_t need = n - n / 100, seen = 0;
	for (uint32_t b = 0; b < QS_HIST_BUCKETS; b++) {
		seen += counts[b];
		if (seen >= need)
			return qs_hist_top(b) ? qs_hist_top(b) : QS_LEARNED_OPEN;
	}
	return QS_LEARNED_OPEN;
}

void qc_learn_publish(const struct qs_geom *g, const uint8_t *learns, uint32_t n, uint64_t *scratch)
{
	for (uint32_t i = 0; i < n * QS_HIST_BUCKETS; i++)
		scratch[i] = 0;
	for (uint32_t s = 0; s < g->client_capacity; s++) {
		const struct qs_client *cs = qs_client_at(g, s);
		if (QS_CLIENT_STATUS(atomic_load_explicit(&cs->state, memory_order_acquire)) != QS_CLIENT_LIVE)
			continue;
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++) {
			uint32_t id1 = atomic_load_explicit(&cs->rows[r].quota1, memory_order_acquire);
			if (id1 == 0 || id1 > n || !learns[id1 - 1])
				continue;
			qc_learn_merge_row(&scratch[(id1 - 1) * QS_HIST_BUCKETS], &cs->rows[r]);
		}
	}
	for (uint32_t id = 0; id < n; id++) {
		struct qs_quota *q = qs_quota_at(g, id);
		if (!q || !learns[id])
			continue;
		uint64_t samples, p99 = qc_learn_p99(&scratch[id * QS_HIST_BUCKETS], &samples);
		/* relaxed: one word each, read alone by reserve (auto_estimate) */
		atomic_store_explicit(&q->learned_samples, samples, memory_order_relaxed);
		if (p99) /* keep the last estimate while too few clients are live */
			atomic_store_explicit(&q->learned_out, p99, memory_order_relaxed);
	}
}
