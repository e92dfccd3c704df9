/* SPDX-License-Identifier: MIT */
/*
 * info.c - read-only snapshots of a quota for tools: configuration, what is
 * available now, and the statistics summed over every live client's row plus
 * the totals of clients that left. Never writes shared memory.
 */
#include <errno.h>
#include <string.h>

#include "gcra.h"
#include "internal.h"

static void add_row(struct quota_info *ret, const struct qs_row *row)
{
	ret->admitted += atomic_load_explicit(&row->admitted, memory_order_relaxed);
	ret->admitted_input_tokens += atomic_load_explicit(&row->in_tokens, memory_order_relaxed);
	ret->admitted_output_tokens += atomic_load_explicit(&row->out_tokens, memory_order_relaxed);
	for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
		ret->rejected[k] += atomic_load_explicit(&row->rejected[k], memory_order_relaxed);
}

int quota_info(quota_client *c, int id, struct quota_info *ret)
{
	if (!c || !ret)
		return -EINVAL;
	struct qs_quota *q = qc_quota(c, id);
	if (!q || id >= quota_count(c))
		return -ENOENT;
	uint32_t st = atomic_load_explicit(&q->state, memory_order_acquire);
	if (st == QS_QUOTA_FREE)
		return -ENOENT;
	/* The configuration from a consistent copy (quotad may be reloading);
	 * the hot words from the live entry. */
	struct qs_quota cfg;
	int err = qs_quota_snapshot(q, &cfg);
	if (err < 0)
		return err;
	struct quota_info info;
	memset(&info, 0, sizeof(info));
	memcpy(info.name, cfg.name, QUOTA_NAME_MAX);
	info.name[QUOTA_NAME_MAX] = '\0';
	info.removed = st == QS_QUOTA_REMOVED;
	info.refund_actual = (cfg.flags & QS_QUOTA_REFUND_ACTUAL) != 0;
	int64_t now = qc_clock(c);
	uint32_t n = cfg.nlimits <= QS_RATE_KINDS ? cfg.nlimits : QS_RATE_KINDS;
	for (uint32_t k = 0; k < n; k++) {
		const struct qs_limit_cfg *l = &cfg.cfg[k];
		if (l->kind >= QUOTA_RATE_KINDS)
			continue;
		struct quota_limit_info *li = &info.rate[l->kind];
		li->limit = l->limit;
		li->capacity = l->capacity;
		li->period_ns = l->period_ns;
		li->available = qg_available(l, atomic_load_explicit(qs_tat(q, k), memory_order_relaxed), now);
	}
	info.max_inflight = cfg.max_inflight;
	info.inflight = QS_INFLIGHT_COUNT(atomic_load_explicit(&q->inflight, memory_order_relaxed));
	info.context_window = cfg.context_window;
	info.price_input_pusd = cfg.price_in_pusd;
	info.price_output_pusd = cfg.price_out_pusd;
	info.budget_day_nusd = cfg.budget_day_nusd;
	info.budget_month_nusd = cfg.budget_month_nusd;
	uint32_t day, month;
	qc_periods(c, now, &day, &month);
	info.spent_day_nusd = qs_spend_in(atomic_load_explicit(&q->spend_day, memory_order_relaxed), day);
	info.spent_month_nusd = qs_spend_in(atomic_load_explicit(&q->spend_month, memory_order_relaxed), month);
	int64_t paused = atomic_load_explicit(&q->paused_until, memory_order_relaxed);
	info.paused_ns = paused > now ? paused - now : 0;

	info.admitted = atomic_load_explicit(&q->st_admitted, memory_order_relaxed);
	info.admitted_input_tokens = atomic_load_explicit(&q->st_in_tokens, memory_order_relaxed);
	info.admitted_output_tokens = atomic_load_explicit(&q->st_out_tokens, memory_order_relaxed);
	info.reclaimed = atomic_load_explicit(&q->st_reclaimed, memory_order_relaxed);
	for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
		info.rejected[k] = atomic_load_explicit(&q->st_rejected[k], memory_order_relaxed);
	for (uint32_t s = 0; s < c->h->client_capacity; s++) {
		const struct qs_client *cs = qs_client_at(c->base, s);
		if (QS_CLIENT_STATUS(atomic_load_explicit(&cs->state, memory_order_acquire)) != QS_CLIENT_LIVE)
			continue;
		/* Rows are taken in order and only cleared on close. */
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++) {
			uint32_t id1 = atomic_load_explicit(&cs->rows[r].quota1, memory_order_acquire);
			if (id1 == 0)
				break;
			if (id1 == (uint32_t)id + 1) {
				add_row(&info, &cs->rows[r]);
				break;
			}
		}
	}
	*ret = info;
	return 0;
}
