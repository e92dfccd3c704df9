/* SPDX-License-Identifier: MIT */
/*
 * cfgcache.c - each thread's cache of decoded quota configurations, keyed
 * by the config word they were read from: the hot path compares one word
 * and reads the record again (records.c) only when quotad published a new
 * one. Decoding recomputes every limit's constants from its source values.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int qc_cfg_decode(const struct qs_config *src, uint64_t word, struct qs_quota *q, struct qc_cfg *out)
{
	memset(out, 0, sizeof(*out));
	memset(out->pos, -1, sizeof(out->pos));
	out->word = word;
	out->n = src->nlimits <= QS_KINDS ? src->nlimits : QS_KINDS;
	out->flags = src->flags;
	out->context_window = src->context_window;
	out->max_inflight = src->max_inflight;
	out->price_in_pusd = src->price_in_pusd;
	out->price_out_pusd = src->price_out_pusd;
	out->budget_day_nusd = src->budget_day_nusd;
	out->budget_month_nusd = src->budget_month_nusd;
	for (uint32_t k = 0; k < out->n; k++) {
		const struct qs_limit_src *l = &src->lim[k];
		if (l->kind >= QS_KINDS || out->pos[l->kind] >= 0 ||
		    qg_limit_init(&out->lim[k], l->kind, l->limit, qg_period_of(l->kind), l->burst_ppm) < 0) {
			out->word = 0;
			return -EBADMSG;
		}
		out->pos[l->kind] = (int8_t)k;
		out->last_units[k] = 0; /* charge(0) = 0 */
		out->last_end = INT64_MIN;
		if (q) {
			out->tat[k] = qs_tat(q, l->kind);
			out->done[k] = &q->refund_done[l->kind];
		}
	}
	out->nlanes = src->nlanes <= QS_LANES ? src->nlanes : QS_LANES;
	uint32_t kept = 0;
	for (uint32_t i = 0; i < (out->nlanes ? out->nlanes : 1); i++) {
		if (i > 0)
			kept += src->lanes[i - 1].headroom_ppm;
		memcpy(out->lane_name[i], src->lanes[i].name, QS_LANE_NAME);
		for (uint32_t k = 0; k < out->n; k++)
			out->lane_tau[i][k] = kept < 1000000 ? qg_lane_tau(&out->lim[k], kept) : 0;
	}
	out->flags2 = src->flags2;
	if (out->flags2 & QS_REC2_AUTO_EST)
		out->flags2 |= QS_REC2_LEARN;
	out->alarm_over_pct = src->alarm_over_pct;
	out->alarm_held_ns = src->alarm_held_ns > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)src->alarm_held_ns;
	out->fast = out->n >= 1 && out->n <= 2 && !out->max_inflight && !out->budget_day_nusd &&
		    !out->budget_month_nusd && !(out->flags & QS_REC_REMOVED) && out->nlanes == 0 &&
		    !(out->flags2 & QS_REC2_AUTO_EST) && !out->alarm_held_ns;
	out->fast_settle = out->fast && !out->price_in_pusd && !out->price_out_pusd && !out->flags2 &&
			   !out->alarm_held_ns && !out->alarm_over_pct;
	return 0;
}

int qc_cfg_refresh(struct qc_thread *t, uint32_t id, struct qc_cfg **ret)
{
	struct qs_config src;
	uint64_t word;
	int r = qs_config_get(&t->c->g, id, &src, &word);
	if (r < 0)
		return r;
	struct qc_cfg *cf = t->cfg[id];
	if (!cf) {
		cf = malloc(sizeof(*cf));
		if (!cf)
			return -ENOMEM;
		t->cfg[id] = cf;
	}
	r = qc_cfg_decode(&src, word, qs_quota_at(&t->c->g, id), cf);
	if (r < 0)
		return r;
	*ret = cf;
	return 0;
}
