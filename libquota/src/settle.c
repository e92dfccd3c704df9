/* SPDX-License-Identifier: MIT */
/*
 * settle.c - the hot path's second half: commit and cancel an admitted
 * ticket. A ticket is bound to the handle that took it (the handle's nonce,
 * unique per quota_open()), so a ticket of another handle, or of an earlier
 * open of this one at the same address, is refused with -EINVAL and touches
 * nothing. Any thread of the handle may settle it.
 *
 * Refunds go through qg_refund() (gcra.c), whose fast path needs neither the
 * clock nor a contended counter when the ticket's slot is still the last
 * one on its limit's time line. A ticket planned with the config still in
 * force, without in-flight slots, spend or debt, on one or two limits, is
 * settled by fast_settle(): the same refunds and statistics, straight.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

/* Largest cost field accepted: keeps every sum and product in range. */
#define QC_COST_MAX (1ULL << 62)

/* The part of @est_inc (the charge of the ticket's whole estimate on a
 * limit) that is not in the ticket's own slot @tl: 0 unless the ticket was
 * extended or partly settled, whose slot is the last piece taken (EXTEND
 * in gcra.c): the pieces before it are spent, refunds come from the last. */
static inline uint64_t before_slot(const struct qt_priv *tk, const struct qt_limit *tl, uint64_t est_inc)
{
	return (tk->held & QT_EXTENDED) && est_inc > tl->inc ? est_inc - tl->inc : 0;
}

/* Refunds and debt of every limit the ticket holds. */
static void settle_limits(struct qc_thread *t, struct qs_quota *q, const struct qt_priv *tk,
			  const struct quota_cost *actual, const struct qc_cfg *cf)
{
	uint64_t areq = actual ? actual->requests : 0;
	uint64_t ain = actual ? actual->input_tokens : 0;
	uint64_t aout = actual ? actual->output_tokens : 0;
	bool refund_tokens = actual == NULL || (cf->flags & QS_REC_REFUND_ACTUAL);
	int64_t now = -1;
	for (uint32_t k = 0; k < tk->nlimits; k++) {
		const struct qt_limit *tl = &tk->lim[k];
		uint32_t kind = tl->kind & (QS_KINDS - 1);
		int p = cf->pos[kind];
		if (p < 0)
			continue; /* a reload removed this kind: nothing to settle */
		const struct qs_limit_cfg *l = &cf->lim[p];
		uint64_t est = qc_units_of(kind, tk->requests, tk->input_tokens, tk->output_tokens);
		uint64_t act = qc_units_of(kind, areq, ain, aout);
		if (act < est && (refund_tokens || (kind >> 1) == 0)) {
			uint64_t keep = qg_charge(l, act);
			uint64_t before = before_slot(tk, tl, qg_charge(l, est));
			keep = keep > before ? keep - before : 0;
			if (keep < tl->inc)
				qg_refund(t, q, tk->quota, tl, tl->inc - keep);
		} else if (act > est) {
			if (now < 0)
				now = qc_clock(t->c);
			qg_debt(q, kind, qg_charge(l, act - est), now);
		}
	}
}

/* Spend at @actual instead of what was charged at reserve. */
static void settle_spend(struct qc_thread *t, struct qs_quota *q, struct qt_priv *tk,
			 const struct quota_cost *actual, const struct qc_cfg *cf)
{
	uint64_t spent = actual ? qc_spend_nusd(cf, actual->input_tokens, actual->output_tokens) : 0;
	int64_t delta = (int64_t)spent - (int64_t)tk->spend_nusd;
	if (!delta)
		return;
	uint32_t day, month;
	qc_periods(t->c, qc_clock(t->c), &day, &month);
	if (!tk->spend_nusd) /* no budget: charged at commit only */
		tk->day = day, tk->month = month;
	qc_spend_adjust(&q->spend_day, tk->day, day, delta);
	qc_spend_adjust(&q->spend_month, tk->month, month, delta);
}

/* Statistics: commit corrects the token counts, cancel undoes the admission. */
static void settle_stats(struct qc_thread *t, struct qs_quota *q, const struct qt_priv *tk,
			 const struct quota_cost *actual, struct qs_row *row)
{
	uint64_t dadm = actual ? 0 : (uint64_t)-1;
	uint64_t din = (actual ? actual->input_tokens : 0) - tk->input_tokens;
	uint64_t dout = (actual ? actual->output_tokens : 0) - tk->output_tokens;
	(void)t;
	if (row) {
		if (dadm)
			qc_row_add(&row->admitted, dadm);
		if (din)
			qc_row_add(&row->in_tokens, din);
		if (dout)
			qc_row_add(&row->out_tokens, dout);
	} else {
		atomic_fetch_add_explicit(&q->st_admitted, dadm, memory_order_relaxed);
		atomic_fetch_add_explicit(&q->st_in_tokens, din, memory_order_relaxed);
		atomic_fetch_add_explicit(&q->st_out_tokens, dout, memory_order_relaxed);
	}
}

/* Learning and alarms of a commit, in the settling thread's row (one
 * writer: plain loads and stores). */
static void observe(struct qc_thread *t, struct qs_quota *q, const struct qt_priv *tk,
		    const struct quota_cost *actual, struct qs_row *row)
{
	struct qc_cfg *cf;
	if (!row || qc_cfg_get(t, tk->quota, q, &cf) < 0)
		return;
	if (actual && (cf->flags2 & QS_REC2_LEARN)) {
		qc_hist_add(row->out_hist, actual->output_tokens);
		qc_hist_add(row->in_hist, actual->input_tokens >> QS_HIST_IN_SHIFT);
		if (tk->output_tokens) /* the estimate held at commit, extensions included */
			qc_hist_add(row->ratio_hist, qc_hist_ratio(actual->output_tokens, tk->output_tokens));
	}
	if (actual && cf->alarm_over_pct &&
	    (unsigned __int128)actual->output_tokens * 100 >
		    (unsigned __int128)tk->output_tokens * cf->alarm_over_pct)
		atomic_store_explicit(&row->alarm_over,
				      atomic_load_explicit(&row->alarm_over, memory_order_relaxed) + 1,
				      memory_order_relaxed);
	if (cf->alarm_held_ns && qc_clock(t->c) - tk->admitted_at > cf->alarm_held_ns)
		atomic_store_explicit(&row->alarm_held,
				      atomic_load_explicit(&row->alarm_held, memory_order_relaxed) + 1,
				      memory_order_relaxed);
}

void qc_settle(struct qc_thread *t, struct qs_quota *q, struct qt_priv *tk,
	       const struct quota_cost *actual)
{
	bool exact = actual && actual->requests == tk->requests &&
		     actual->input_tokens == tk->input_tokens && actual->output_tokens == tk->output_tokens;
	if (!exact) {
		/* The config of now (a removed quota's too); a damaged record
		 * settles nothing but the in-flight slots and the statistics. */
		struct qc_cfg *cf;
		if (qc_cfg_get(t, tk->quota, q, &cf) == 0) {
			settle_limits(t, q, tk, actual, cf);
			if (tk->spend_nusd || (actual && (cf->price_in_pusd || cf->price_out_pusd)))
				settle_spend(t, q, tk, actual, cf);
		}
	}
	struct qs_row *row = qc_row(t, tk->quota);
	if (QT_HELD(tk->held)) {
		if (row)
			qc_inflight_release(t, q, row, tk->quota, QT_HELD(tk->held));
		/* else: no row free in this thread for that quota; the slots stay
		 * counted until an audit finds no process holding them */
	}
	if ((tk->held & QT_OPEN_COUNTED) && row) {
		/* HELD OPEN (reserve.c): no longer open; else (no row free) it
		 * stays counted until the process leaves */
		_Atomic int32_t *o = &row->open[(tk->held & QT_OPEN_PHASE) ? 1 : 0];
		atomic_store_explicit(o, atomic_load_explicit(o, memory_order_relaxed) - 1,
				      memory_order_relaxed);
	}
	/* A waiting extension's own ticket, given back: its tokens go, the
	 * admission it extends stays counted. */
	static const struct quota_cost none;
	settle_stats(t, q, tk, !actual && (tk->held & QT_EXTENSION) ? &none : actual, row);
	observe(t, q, tk, actual, row);
}

/* The common case (see the top): 0 when settled, 1 for the general path
 * (nothing done). */
static int fast_settle(struct qc_thread *t, struct qs_quota *q, const struct qt_priv *tk,
		       const struct quota_cost *actual)
{
	/* The ticket's own config, from the cache: the live config word is not
	 * read (it shares its line with the TATs, which a commit should not
	 * touch on a contended quota). Refunds are computed as the slots were
	 * sized; a reload since then only changes what later reservations pay. */
	struct qc_cfg *cf = t->cfg[tk->quota];
	if (tk->held || tk->spend_nusd || !cf || cf->word != tk->cfg_word || !cf->fast_settle ||
	    tk->nlimits != cf->n)
		return 1;
	uint64_t areq = actual ? actual->requests : 0;
	uint64_t ain = actual ? actual->input_tokens : 0;
	uint64_t aout = actual ? actual->output_tokens : 0;
	bool refund_tokens = actual == NULL || (cf->flags & QS_REC_REFUND_ACTUAL);
	uint64_t delta[2] = { 0, 0 };
	for (uint32_t k = 0; k < tk->nlimits; k++) {
		const struct qt_limit *tl = &tk->lim[k];
		uint64_t est = qc_units_of(tl->kind, tk->requests, tk->input_tokens, tk->output_tokens);
		uint64_t act = qc_units_of(tl->kind, areq, ain, aout);
		if (act > est)
			return 1; /* debt: the general path */
		if (act < est && (refund_tokens || (tl->kind >> 1) == 0)) {
			uint64_t keep = qg_charge(&cf->lim[k], act);
			delta[k] = keep < tl->inc ? tl->inc - keep : 0;
		}
	}
	/* A ticket whose slot followed another process's (a contended quota):
	 * first the clock, so that a slot already ended costs no access to the
	 * hot line at all (most commits: a call outlasts its slot). Alone on
	 * the quota, the last-slot refund is cheaper than the clock. */
	int64_t now = tk->solo ? INT64_MIN : qc_clock(t->c);
	for (uint32_t k = 0; k < tk->nlimits; k++)
		if (delta[k] && tk->lim[k].end > now &&
		    !qg_refund_last(q, tk->lim[k].kind, tk->lim[k].end, tk->lim[k].done0, delta[k]))
			qg_refund(t, q, tk->quota, &tk->lim[k], delta[k]);
	struct qs_row *row = qc_row(t, tk->quota);
	settle_stats(t, q, tk, actual, row);
	return 0;
}

static int settle_ticket(quota_client *c, struct quota_ticket *ticket, const struct quota_cost *actual)
{
	struct qt_priv *tk = qc_open_ticket(c, ticket);
	if (!tk)
		return -EINVAL;
	if (actual && (actual->requests > QC_COST_MAX || actual->input_tokens > QC_COST_MAX ||
		       actual->output_tokens > QC_COST_MAX))
		return -EINVAL;
	struct qc_thread *t;
	int err = qc_writer(c, &t);
	if (err < 0)
		return err;
	struct qs_quota *q = qc_quota(c, (int)tk->quota);
	if (!q)
		return -EINVAL;
	tk->magic = QT_CLOSED;
	if (fast_settle(t, q, tk, actual) != 0)
		qc_settle(t, q, tk, actual);
	return 0;
}

int quota_settle_partial(quota_client *c, struct quota_ticket *ticket,
			 const struct quota_cost *estimate)
{
	struct qt_priv *tk = estimate ? qc_open_ticket(c, ticket) : NULL;
	if (!tk)
		return -EINVAL;
	if (estimate->requests != tk->requests || estimate->input_tokens > tk->input_tokens ||
	    estimate->output_tokens > tk->output_tokens)
		return -EINVAL;
	struct qc_thread *t;
	int err = qc_writer(c, &t);
	if (err < 0)
		return err;
	struct qs_quota *q = qc_quota(c, (int)tk->quota);
	struct qc_cfg *cf;
	if (!q)
		return -EINVAL;
	err = qc_cfg_get(t, tk->quota, q, &cf);
	if (err < 0)
		return err;
	/* Where the provider counts max_tokens, tokens are never given back
	 * before the end: the estimate stays. */
	if (!(cf->flags & QS_REC_REFUND_ACTUAL) ||
	    (estimate->input_tokens == tk->input_tokens && estimate->output_tokens == tk->output_tokens))
		return 0;
	for (uint32_t k = 0; k < tk->nlimits; k++) {
		struct qt_limit *tl = &tk->lim[k];
		uint32_t kind = tl->kind & (QS_KINDS - 1);
		int p = cf->pos[kind];
		if (p < 0)
			continue;
		const struct qs_limit_cfg *l = &cf->lim[p];
		uint64_t est = qc_units_of(kind, tk->requests, tk->input_tokens, tk->output_tokens);
		uint64_t now_est = qc_units_of(kind, estimate->requests, estimate->input_tokens,
					       estimate->output_tokens);
		uint64_t before = before_slot(tk, tl, qg_charge(l, est));
		uint64_t keep = qg_charge(l, now_est);
		keep = keep > before ? keep - before : 0;
		if (keep >= tl->inc)
			continue;
		/* Our slot is shortened by what was given back (EXTEND). */
		uint64_t given = qg_refund(t, q, tk->quota, tl, tl->inc - keep);
		tl->inc -= given;
		tl->end -= (int64_t)given;
	}
	struct qs_row *row = qc_row(t, tk->quota);
	uint64_t din = estimate->input_tokens - tk->input_tokens;
	uint64_t dout = estimate->output_tokens - tk->output_tokens;
	if (row) {
		qc_row_add(&row->in_tokens, din);
		qc_row_add(&row->out_tokens, dout);
	} else {
		atomic_fetch_add_explicit(&q->st_in_tokens, din, memory_order_relaxed);
		atomic_fetch_add_explicit(&q->st_out_tokens, dout, memory_order_relaxed);
	}
	tk->input_tokens = estimate->input_tokens;
	tk->output_tokens = estimate->output_tokens;
	tk->held |= QT_EXTENDED;
	return 0;
}

int quota_commit(quota_client *c, struct quota_ticket *t, const struct quota_cost *actual)
{
	if (!actual)
		return -EINVAL;
	return settle_ticket(c, t, actual);
}

int quota_cancel(quota_client *c, struct quota_ticket *t)
{
	return settle_ticket(c, t, NULL);
}

int64_t quota_ticket_time(const struct quota_ticket *t)
{
	if (!t)
		return -EINVAL;
	const struct qt_priv *tk = (const struct qt_priv *)(const void *)t->private_;
	if (tk->magic != QT_OPEN && tk->magic != QT_CLOSED)
		return -EINVAL;
	return tk->admitted_at;
}
