/* SPDX-License-Identifier: MIT */
/*
 * reload.c - apply a validated config to the live segment (SIGHUP,
 * `quotactl reload`, and a restarted quotad adopting a segment), without
 * stopping the workers and without refilling what they spent.
 *
 * WHAT IS FIXED. The segment's capacity (max_quotas, max_clients) and its
 * clock are chosen when it is created; a reload that needs more quota entries
 * than are free is refused as a whole, nothing changed. Ids are never
 * reused for another name: a removed quota keeps its entry (REMOVED), since
 * tickets and client rows still name it by id; re-adding the same name
 * revives that entry with its budget state.
 *
 * LIMITS KEEP THEIR STATE. A limit's state is its TAT word, the time at which
 * everything admitted so far has been paid for at the limit's rate. Each
 * kind (rpm, tpd...) that exists before and after keeps its TAT word
 * untouched, so what was spent stays spent: the backlog (TAT - now) is
 * carried in time, which with a lower limit still drains at least as slowly
 * as the provider's window and with a higher one is paid back no faster than
 * before - never a refill. A kind that is new starts full: we know nothing of
 * the provider's count for it, and starting it empty would block a whole
 * period (a day for the *pd kinds). A kind that is removed is dropped.
 *
 * POSITIONS. The hot path addresses limits by position (cfg[k], tat word k).
 * Surviving kinds keep their positions; new kinds fill the holes of removed
 * ones or are appended; if removals leave holes behind, the last kinds move
 * down into them, and those moved TATs are the only hot words a reload
 * writes: copied under the quota's cfg_seq and raised again to their old
 * word's value on the next ticks (a reservation that read the old config
 * just before the rewrite may still land its CAS on the old position).
 *
 * THE SEQLOCK. cfg_seq is odd while the config lines are rewritten; the hot
 * path (reserve.c) snapshots the config between two reads of cfg_seq and
 * retries if it was odd or moved. The hot line itself is not part of it.
 *
 * TICKETS ACROSS A RELOAD. Settling checks each position's kind against the
 * ticket's, so no refund crosses kinds. Where a position changes kind, its
 * refund counters are moved forward by REFUND_FENCE, so that tickets and
 * waiters from before see "refunds since" as unbounded: they give nothing
 * back and a waiter queues again - conservative, never an over-admission.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gcra.h"
#include "quotad.h"

#define FIXUP_TICKS 50 /* ~1 s of late CASes caught after a move */
#define REFUND_FENCE (1ULL << 62) /* > INT64_MAX / 4: "moved too far" */

struct move {
	uint32_t id;
	uint32_t from, to;
};

static struct move *moves;
static uint32_t nmoves;
static int fixup_ticks;

static void fixup(struct daemon *d)
{
	for (uint32_t i = 0; i < nmoves; i++) {
		struct qs_quota *q = qs_quota_at(d->base, moves[i].id);
		qg_atomic_max(qs_tat(q, moves[i].to),
			      atomic_load_explicit(qs_tat(q, moves[i].from), memory_order_relaxed));
	}
}

void qd_reload_tick(struct daemon *d)
{
	if (fixup_ticks <= 0)
		return;
	fixup(d);
	if (--fixup_ticks == 0)
		nmoves = 0;
}

static int64_t period_of(uint32_t kind)
{
	return (kind & 1) ? QC_DAY_NS : QC_MINUTE_NS;
}

/* Rewrite live quota @id with @qc under its cfg_seq (see the top). */
static int rewrite(struct daemon *d, uint32_t id, const struct qd_quota *qc)
{
	struct qs_quota *q = qs_quota_at(d->base, id);
	struct qs_limit_cfg bykind[QS_RATE_KINDS];
	bool want[QS_RATE_KINDS] = { false };
	uint32_t n_new = 0;
	for (uint32_t k = 0; k < QS_RATE_KINDS; k++) {
		if (!qc->rate[k])
			continue;
		int r = qg_limit_init(&bykind[k], k, qc->rate[k], period_of(k), qc->burst_ppm);
		if (r < 0)
			return r;
		want[k] = true;
		n_new++;
	}
	uint32_t n_old = q->nlimits <= QS_RATE_KINDS ? q->nlimits : QS_RATE_KINDS;
	int at[QS_RATE_KINDS];      /* new layout: position -> kind, -1 empty */
	bool kept[QS_RATE_KINDS] = { false };
	for (uint32_t p = 0; p < QS_RATE_KINDS; p++)
		at[p] = -1;
	for (uint32_t p = 0; p < n_old; p++) {
		uint32_t k = q->cfg[p].kind;
		if (k < QS_RATE_KINDS && want[k] && !kept[k]) {
			at[p] = (int)k;
			kept[k] = true;
		}
	}
	/* Kinds kept beyond the new length move down; new kinds fill in. */
	struct move mv[QS_RATE_KINDS];
	uint32_t nmv = 0, fresh[QS_RATE_KINDS], nfresh = 0;
	for (uint32_t p = n_new; p < QS_RATE_KINDS; p++)
		if (at[p] >= 0) {
			mv[nmv++] = (struct move){ id, p, 0 };
			at[p] = -1;
		}
	for (uint32_t p = 0, m = 0; p < n_new; p++) {
		if (at[p] >= 0)
			continue;
		if (m < nmv) {
			mv[m].to = p;
			at[p] = (int)q->cfg[mv[m].from].kind;
			m++;
		} else {
			fresh[nfresh++] = p;
		}
	}
	for (uint32_t k = 0, f = 0; k < QS_RATE_KINDS; k++)
		if (want[k] && !kept[k])
			at[fresh[f++]] = (int)k;

	uint32_t seq = atomic_load_explicit(&q->cfg_seq, memory_order_relaxed);
	/* seq_cst: a reservation whose slots were taken (seq_cst CAS) after
	 * this store sees the odd value in its re-check and starts over */
	atomic_store_explicit(&q->cfg_seq, seq + 1, memory_order_seq_cst);
	/* release fence: the odd cfg_seq is visible before any config store */
	atomic_thread_fence(memory_order_release);
	q->flags = qc->refund_actual ? QS_QUOTA_REFUND_ACTUAL : 0;
	q->context_window = qc->context_window;
	q->max_inflight = qc->max_inflight;
	q->price_in_pusd = qc->price_in_pusd;
	q->price_out_pusd = qc->price_out_pusd;
	q->budget_day_nusd = qc->budget_day_nusd;
	q->budget_month_nusd = qc->budget_month_nusd;
	for (uint32_t i = 0; i < nmv; i++)
		atomic_store_explicit(qs_tat(q, mv[i].to),
				      atomic_load_explicit(qs_tat(q, mv[i].from), memory_order_relaxed),
				      memory_order_relaxed);
	for (uint32_t i = 0; i < nfresh; i++)
		atomic_store_explicit(qs_tat(q, fresh[i]), 0, memory_order_relaxed); /* full */
	for (uint32_t p = 0; p < QS_RATE_KINDS; p++) {
		bool was = p < n_old, is = p < n_new;
		if (was != is || (is && q->cfg[p].kind != (uint32_t)at[p])) {
			/* Another kind here now: tickets taken before (open ones,
			 * and waiters asleep) must not refund into it nor trust
			 * its refund accounting. Moving both counters by REFUND_FENCE
			 * makes their "refunds since" look unbounded: no refund,
			 * and a waiter queues again (gcra.c, reserve.c). */
			atomic_fetch_add(&q->refund_begun[p], REFUND_FENCE);
			atomic_fetch_add(&q->refund_done[p], REFUND_FENCE);
		}
		if (is)
			q->cfg[p] = bykind[at[p]];
		else
			memset(&q->cfg[p], 0, sizeof(q->cfg[p]));
	}
	q->nlimits = n_new;
	/* release: the new config is complete before cfg_seq is even again */
	atomic_store_explicit(&q->cfg_seq, seq + 2, memory_order_release);

	if (nmv) {
		struct move *m = realloc(moves, (nmoves + nmv) * sizeof(*m));
		if (m) {
			moves = m;
			memcpy(moves + nmoves, mv, nmv * sizeof(*m));
			nmoves += nmv;
			fixup_ticks = FIXUP_TICKS;
		}
	}
	return 0;
}

static int find_name(struct daemon *d, const char *name, uint32_t count)
{
	for (uint32_t id = 0; id < count; id++) {
		struct qs_quota *q = qs_quota_at(d->base, id);
		uint32_t st = atomic_load_explicit(&q->state, memory_order_acquire);
		if ((st == QS_QUOTA_ACTIVE || st == QS_QUOTA_REMOVED) &&
		    strncmp(q->name, name, sizeof(q->name)) == 0)
			return (int)id;
	}
	return -1;
}

int qd_reload_apply(struct daemon *d, const struct qd_config *cfg, char *err, size_t errlen)
{
	struct qs_header *h = d->h;
	bool manual = (h->incompat_flags & QS_INCOMPAT_MANUAL_CLOCK) != 0;
	if (cfg->manual_clock != manual) {
		snprintf(err, errlen, "clock: the segment uses the %s clock, fixed when it was created",
			 manual ? "manual" : "monotonic");
		return -EINVAL;
	}
	uint32_t count = atomic_load_explicit(&h->quota_count, memory_order_acquire);
	int *id_of = calloc(cfg->nquotas ? cfg->nquotas : 1, sizeof(*id_of));
	if (!id_of) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	uint32_t need = 0;
	for (uint32_t i = 0; i < cfg->nquotas; i++) {
		id_of[i] = find_name(d, cfg->quotas[i].name, count);
		if (id_of[i] < 0)
			need++;
	}
	if (count + need > h->quota_capacity) {
		snprintf(err, errlen, "quotas: %u new quota%s but the segment has %u free entr%s of %u "
			 "(max_quotas is fixed when the segment is created and removed quotas keep "
			 "their entries): restart on a new segment to grow it", need, need == 1 ? "" : "s",
			 h->quota_capacity - count, h->quota_capacity - count == 1 ? "y" : "ies",
			 h->quota_capacity);
		free(id_of);
		return -ENOSPC;
	}
	if (cfg->max_quotas != h->quota_capacity || cfg->max_clients != h->client_capacity)
		qd_log("warning", "max_quotas %u / max_clients %u of the config differ from the segment's "
		       "%u / %u, which are fixed at creation: the segment's stay", cfg->max_quotas,
		       cfg->max_clients, h->quota_capacity, h->client_capacity);

	/* Late fix-ups of an earlier reload first: positions may change again. */
	fixup(d);
	nmoves = 0;
	fixup_ticks = 0;

	uint32_t added = 0, removed = 0, changed = 0;
	bool index_changed = false;
	for (uint32_t id = 0; id < count; id++) {
		struct qs_quota *q = qs_quota_at(d->base, id);
		if (atomic_load_explicit(&q->state, memory_order_relaxed) != QS_QUOTA_ACTIVE)
			continue;
		bool keep = false;
		for (uint32_t i = 0; i < cfg->nquotas && !keep; i++)
			keep = id_of[i] == (int)id;
		if (!keep) {
			/* release: pairs with reserve's acquire of the state */
			atomic_store_explicit(&q->state, QS_QUOTA_REMOVED, memory_order_release);
			removed++;
			index_changed = true;
			qd_log("info", "reload: quota %s removed (id %u kept for its tickets)", q->name, id);
		}
	}
	int r = 0;
	for (uint32_t i = 0; i < cfg->nquotas && r == 0; i++) {
		const struct qd_quota *qc = &cfg->quotas[i];
		if (id_of[i] >= 0) {
			struct qs_quota *q = qs_quota_at(d->base, (uint32_t)id_of[i]);
			r = rewrite(d, (uint32_t)id_of[i], qc);
			changed++;
			if (r == 0 && atomic_load_explicit(&q->state, memory_order_relaxed) == QS_QUOTA_REMOVED) {
				atomic_store_explicit(&q->state, QS_QUOTA_ACTIVE, memory_order_release);
				index_changed = true;
				qd_log("info", "reload: quota %s back (id %u, budget state kept)", qc->name, id_of[i]);
			}
			continue;
		}
		uint32_t id = count++;
		/* The entry is FREE until ACTIVE: counting it first keeps the
		 * segment valid for a client attaching meanwhile. */
		atomic_store_explicit(&h->quota_count, count, memory_order_release);
		r = qd_quota_write(d->base, id, qc);
		if (r == 0) {
			atomic_store_explicit(&qs_quota_at(d->base, id)->state, QS_QUOTA_ACTIVE,
					      memory_order_release);
			added++;
			index_changed = true;
			qd_log("info", "reload: quota %s added (id %u)", qc->name, id);
		}
	}
	free(id_of);
	if (index_changed) {
		uint32_t seq = atomic_load_explicit(&h->index_seq, memory_order_relaxed);
		atomic_store_explicit(&h->index_seq, seq + 1, memory_order_relaxed);
		/* release fence: odd index_seq is visible before the index changes */
		atomic_thread_fence(memory_order_release);
		qs_index_rebuild(d->base);
		/* release: pairs with qs_index_find()'s acquire */
		atomic_store_explicit(&h->index_seq, seq + 2, memory_order_release);
	}
	atomic_fetch_add_explicit(&h->generation, 1, memory_order_release);
	if (r < 0) {
		snprintf(err, errlen, "applying the config: %s", strerror(-r));
		return r;
	}
	qd_log("info", "config applied: %u quota%s (%u updated in place, %u added, %u removed)",
	       cfg->nquotas, cfg->nquotas == 1 ? "" : "s", changed, added, removed);
	return 0;
}

int qd_reload(struct daemon *d, char *err, size_t errlen)
{
	struct qd_config cfg;
	int r = d->config_path ? qd_config_load(d->config_path, &cfg, err, errlen) :
				 qd_config_parse(qd_default_config, strlen(qd_default_config),
						 "<embedded default>", &cfg, err, errlen);
	if (r == 0) {
		r = qd_reload_apply(d, &cfg, err, errlen);
		qd_config_free(&cfg);
	}
	if (r < 0) {
		d->st.reloads_failed++;
	} else {
		d->st.reloads_ok++;
		d->noverrides = 0; /* `set` changes end: back to what the source says */
	}
	return r;
}
