/* SPDX-License-Identifier: MIT */
/*
 * info.c - read-only snapshots of a quota for tools: configuration, what is
 * available now, and the statistics summed over every live client's row plus
 * the totals of clients that left. Never writes shared memory.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

/* The size of version 2.0's struct quota_info: the least a caller passes. */
#define QUOTA_INFO_SIZE_V2_0 (offsetof(struct quota_info, generation) + sizeof(uint64_t))

static void add_row(struct quota_info *ret, const struct qs_row *row, uint64_t *hists)
{
	ret->admitted += atomic_load_explicit(&row->admitted, memory_order_relaxed);
	ret->admitted_input_tokens += atomic_load_explicit(&row->in_tokens, memory_order_relaxed);
	ret->admitted_output_tokens += atomic_load_explicit(&row->out_tokens, memory_order_relaxed);
	for (unsigned k = 0; k < QS_REASONS; k++)
		ret->rejected[k] += atomic_load_explicit(&row->rejected[k], memory_order_relaxed);
	ret->alarm_held += atomic_load_explicit(&row->alarm_held, memory_order_relaxed);
	ret->alarm_over += atomic_load_explicit(&row->alarm_over, memory_order_relaxed);
	if (ret->learn)
		qc_learn_merge_row(hists, row);
}

/* A QS_PAIR edge as quota_info shows it. */
static uint64_t edge_of(uint32_t e)
{
	return e == QS_PAIR_OPEN ? UINT64_MAX : e;
}

/* The configuration part. */
static void fill_config(struct quota_info *info, const struct qs_config *src, const struct qc_cfg *cf,
			struct qs_quota *q, int64_t now)
{
	memcpy(info->name, src->name, QUOTA_NAME_MAX);
	info->name[QUOTA_NAME_MAX] = '\0';
	info->removed = (cf->flags & QS_REC_REMOVED) != 0;
	info->refund_actual = (cf->flags & QS_REC_REFUND_ACTUAL) != 0;
	for (uint32_t k = 0; k < cf->n; k++) {
		const struct qs_limit_cfg *l = &cf->lim[k];
		struct quota_limit_info *li = &info->rate[l->kind];
		li->limit = l->limit;
		li->capacity = l->capacity;
		li->period_ns = l->period_ns;
		int64_t tat = qg_tat_clamp(atomic_load_explicit(qs_tat(q, l->kind), memory_order_relaxed));
		li->available = qg_available(l, tat, now);
	}
	info->max_inflight = cf->max_inflight;
	info->context_window = cf->context_window;
	info->price_input_pusd = cf->price_in_pusd;
	info->price_output_pusd = cf->price_out_pusd;
	info->budget_day_nusd = cf->budget_day_nusd;
	info->budget_month_nusd = cf->budget_month_nusd;
	info->generation = QS_CFG_GEN(cf->word);
	info->lanes = cf->nlanes;
	info->learn = (cf->flags2 & QS_REC2_AUTO_EST) ? 2 : (cf->flags2 & QS_REC2_LEARN) ? 1 : 0;
	info->alarm_held_ns = cf->alarm_held_ns;
	info->alarm_over_pct = cf->alarm_over_pct;
	if (info->learn) {
		info->learned_output = atomic_load_explicit(&q->learned_out, memory_order_relaxed);
		info->learned_samples = atomic_load_explicit(&q->learned_samples, memory_order_relaxed);
		uint64_t in = atomic_load_explicit(&q->learned_in, memory_order_relaxed);
		uint64_t ratio = atomic_load_explicit(&q->learned_ratio, memory_order_relaxed);
		info->learned_input_p50 = edge_of(QS_PAIR_P50(in));
		info->learned_input_p99 = edge_of(QS_PAIR_P99(in));
		info->learned_ratio_p50 = edge_of(QS_PAIR_P50(ratio));
		info->learned_ratio_p99 = edge_of(QS_PAIR_P99(ratio));
	}
	if (info->alarm_held_ns) {
		info->held_open = atomic_load_explicit(&q->held_open, memory_order_relaxed);
		info->held_flips = atomic_load_explicit(&q->held_phase, memory_order_relaxed);
	}
}

/* The hot words and the statistics. */
static void fill_state(quota_client *c, uint32_t id, struct qs_quota *q, struct quota_info *info,
		       int64_t now)
{
	/* What workers hold: the count less quotad's hold (global max_inflight). */
	uint32_t cnt = QS_INFLIGHT_COUNT(atomic_load_explicit(&q->inflight, memory_order_relaxed));
	uint64_t hold = atomic_load_explicit(&q->inflight_hold, memory_order_relaxed);
	info->inflight = cnt > hold ? cnt - hold : 0;
	uint32_t day, month;
	qc_periods(c, now, &day, &month);
	info->spent_day_nusd = qs_spend_in(atomic_load_explicit(&q->spend_day, memory_order_relaxed), day);
	info->spent_month_nusd = qs_spend_in(atomic_load_explicit(&q->spend_month, memory_order_relaxed), month);
	int64_t paused = atomic_load_explicit(&q->paused_until, memory_order_relaxed);
	info->paused_ns = paused > now ? paused - now : 0;

	info->admitted = atomic_load_explicit(&q->st_admitted, memory_order_relaxed);
	info->admitted_input_tokens = atomic_load_explicit(&q->st_in_tokens, memory_order_relaxed);
	info->admitted_output_tokens = atomic_load_explicit(&q->st_out_tokens, memory_order_relaxed);
	info->reclaimed = atomic_load_explicit(&q->st_reclaimed, memory_order_relaxed);
	info->repaired = atomic_load_explicit(&q->st_repaired, memory_order_relaxed);
	info->alarm_held = atomic_load_explicit(&q->st_alarm_held, memory_order_relaxed);
	info->alarm_over = atomic_load_explicit(&q->st_alarm_over, memory_order_relaxed);
	for (unsigned k = 0; k < QS_REASONS; k++)
		info->rejected[k] = atomic_load_explicit(&q->st_rejected[k], memory_order_relaxed);
	uint64_t hists[QC_HISTS * QS_HIST_BUCKETS] = { 0 };
	for (uint32_t s = 0; s < c->g.client_capacity; s++) {
		const struct qs_client *cs = qs_client_at(&c->g, s);
		if (QS_CLIENT_STATUS(atomic_load_explicit(&cs->state, memory_order_acquire)) != QS_CLIENT_LIVE)
			continue;
		/* Every row: quota_close() clears them in quota order, not in
		 * the order they were taken. */
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++)
			if (atomic_load_explicit(&cs->rows[r].quota1, memory_order_acquire) == id + 1) {
				add_row(info, &cs->rows[r], hists);
				break;
			}
	}
	for (uint32_t b = 0; b < QS_HIST_BUCKETS; b++) {
		info->output_hist[b] = hists[QC_HIST_OUT * QS_HIST_BUCKETS + b];
		info->input_hist[b] = hists[QC_HIST_IN * QS_HIST_BUCKETS + b];
		info->ratio_hist[b] = hists[QC_HIST_RATIO * QS_HIST_BUCKETS + b];
	}
}

int quota_info(quota_client *c, int id, struct quota_info *ret, size_t size)
{
	if (!c || !ret || size < QUOTA_INFO_SIZE_V2_0)
		return -EINVAL;
	struct qs_quota *q = qc_quota(c, id);
	if (!q || (uint32_t)id >= qs_quota_count(&c->g))
		return -ENOENT;
	struct qs_config src;
	uint64_t word;
	int err = qs_config_get(&c->g, (uint32_t)id, &src, &word);
	if (err < 0)
		return err;
	struct qc_cfg cf;
	err = qc_cfg_decode(&src, word, NULL, &cf);
	if (err < 0)
		return err;
	struct quota_info info;
	memset(&info, 0, sizeof(info));
	int64_t now = qc_clock(c);
	fill_config(&info, &src, &cf, q, now);
	fill_state(c, (uint32_t)id, q, &info, now);
	/* Only as much as the caller's struct holds; zero beyond ours. */
	if (size > sizeof(info)) {
		memset((char *)ret + sizeof(info), 0, size - sizeof(info));
		size = sizeof(info);
	}
	memcpy(ret, &info, size);
	return 0;
}
