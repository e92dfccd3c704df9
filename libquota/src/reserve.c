/* SPDX-License-Identifier: MIT */
/*
 * reserve.c - the hot path's first half: quota_reserve() and quota_backoff().
 *
 * A reservation is all or nothing across the quota's limits, done in named
 * steps over one struct qc_resv:
 *   plan    the costs in ns per limit from the thread's cached config (the
 *           quota's config word is one load; the record is decoded again
 *           only when quotad published a new one); costs that can never fit
 *           are refused at once;
 *   decide  read every word the reservation depends on and compute the
 *           common admission time (a refusal writes nothing shared);
 *   take    the in-flight slots (CAS), the spend (CAS), one slot per rate
 *           limit (CAS each, at the admission time, gcra.c);
 *   undo    give back what take took when a limit moved past the admission
 *           time or quotad published a new config meanwhile; start over;
 *   wait    sleep until the admission time, then check that refunds made
 *           meanwhile cannot have moved the slots before it (else requeue).
 * The common case - a cached config of one or two rate limits without an
 * in-flight limit or a budget, admitted at once - goes through fast(): the
 * same decide and take specialised to admission now, in registers, the
 * ticket written in place. Whatever it cannot settle (a refusal, a wait, a
 * CAS that lost, a new config) it leaves to the general steps, having
 * taken nothing.
 *
 * ORDER OF ADMISSION. Rate waits are first come, first served by
 * construction: a waiting reservation takes its slots at once, in CAS order,
 * and sleeps until its own admission time. A lower lane's waiter takes no
 * slot while it waits (LANES), but decides only when no older waiter of its
 * quota and lane is left, so its lane's waiters are admitted in the order
 * they came (waitline.c). Two exceptions, both documented in quota.h: a
 * waiter whose slack was used up by refunds while it slept queues again,
 * and in-flight waiters (max_inflight) are all woken when a slot frees and
 * race for it.
 *
 * GLOBAL IN FLIGHT. On a quota whose max_inflight is leased from Redis
 * (record flag QS_REC_GLOBAL_INFLIGHT), decide() takes an in-flight slot
 * only at an admission time before the quota's inflight_until, which quotad
 * sets to half the lease after it sent the last call Redis answered: a host
 * whose quotad died, stopped, or lost Redis stops admitting by then, before
 * Redis reaps its slots and grants them to other hosts. One relaxed load of
 * a line quotad writes about twice a second; host quotas do not read it.
 *
 * Per-thread statistics go to the caller's own row in its client slot (one
 * writer, relaxed stores): nothing shared is written for them.
 */
#include <errno.h>
#include <linux/futex.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/* Largest cost field accepted: keeps every sum and product in range. */
#define QC_COST_MAX (1ULL << 62)
/* A waiting reservation's slots start at least tau / this after its
 * admission time: the room refunds have to move them while it waits. */
#define QC_WAIT_SLACK_DIV 8
/* quota_backoff() accepts at most a day. */
#define QC_BACKOFF_MAX QC_DAY_NS

static inline int64_t add_sat(int64_t a, int64_t b)
{
	int64_t r;
	return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

uint64_t qc_spend_nusd(const struct qc_cfg *cf, uint64_t in, uint64_t out)
{
	unsigned __int128 p = (unsigned __int128)in * cf->price_in_pusd +
			      (unsigned __int128)out * cf->price_out_pusd;
	p = (p + 999) / 1000; /* pico -> nano USD, rounded up */
	return p > QS_SPEND_AMOUNT_MAX ? QS_SPEND_AMOUNT_MAX : (uint64_t)p;
}

void qc_spend_adjust(_Atomic uint64_t *w, uint32_t period, uint32_t current, int64_t delta)
{
	if (delta == 0)
		return;
	uint64_t cur = atomic_load_explicit(w, memory_order_relaxed), next;
	do {
		uint32_t target;
		if (qs_spend_period(cur) == (period & ((1u << QS_SPEND_PERIOD_BITS) - 1)))
			target = period;
		else if (delta > 0)
			target = current;
		else
			return; /* that period is over: nothing to give back */
		uint64_t have = qs_spend_in(cur, target);
		uint64_t amount = delta > 0 ? have + (uint64_t)delta :
			(have > (uint64_t)-delta ? have - (uint64_t)-delta : 0);
		next = qs_spend_pack(target, amount);
	} while (!atomic_compare_exchange_weak_explicit(w, &cur, next, memory_order_relaxed,
							memory_order_relaxed));
}

void qc_spend_raise(_Atomic uint64_t *w, uint32_t period, uint64_t amount)
{
	uint64_t cur = atomic_load_explicit(w, memory_order_relaxed), next;
	do {
		if (qs_spend_in(cur, period) >= amount)
			return;
		next = qs_spend_pack(period, amount);
	} while (!atomic_compare_exchange_weak_explicit(w, &cur, next, memory_order_relaxed,
							memory_order_relaxed));
}


/* Take @spend in the period @period of @w if the budget allows. */
static bool spend_take(_Atomic uint64_t *w, uint32_t period, uint64_t budget, uint64_t spend)
{
	uint64_t cur = atomic_load_explicit(w, memory_order_relaxed), next;
	do {
		uint64_t have = qs_spend_in(cur, period);
		if (budget && have + spend > budget)
			return false;
		next = qs_spend_pack(period, have + spend);
	} while (!atomic_compare_exchange_weak_explicit(w, &cur, next, memory_order_relaxed,
							memory_order_relaxed));
	return true;
}

void qc_count_reject(struct qc_thread *t, struct qs_quota *q, uint32_t id, unsigned reason)
{
	struct qs_row *row = qc_row(t, id);
	if (row)
		qc_row_add(&row->rejected[reason], 1);
	else
		atomic_fetch_add_explicit(&q->st_rejected[reason], 1, memory_order_relaxed);
}

/* Take @n in-flight slots if fewer than @max - @n are taken. */
static bool inflight_take(struct qc_thread *t, struct qs_quota *q, struct qs_row *row, uint32_t id,
			  uint32_t n, uint64_t max)
{
	/* release (by the CAS): the intent is visible before the counter moves */
	atomic_store_explicit(&t->cs->intent, ((uint64_t)n << 32) | (id + 1), memory_order_relaxed);
	uint64_t w = atomic_load_explicit(&q->inflight, memory_order_relaxed);
	bool ok = false;
	while (QS_INFLIGHT_COUNT(w) + (uint64_t)n <= max) {
		if (atomic_compare_exchange_weak_explicit(&q->inflight, &w, w + n + QS_INFLIGHT_SEQ1,
							  memory_order_acq_rel, memory_order_relaxed)) {
			ok = true;
			break;
		}
	}
	if (ok)
		atomic_store_explicit(&row->held, atomic_load_explicit(&row->held, memory_order_relaxed) + (int32_t)n,
				      memory_order_relaxed);
	/* release: held is final before the intent is withdrawn */
	atomic_store_explicit(&t->cs->intent, 0, memory_order_release);
	return ok;
}

/* Sleep until the in-flight count may have dropped or @deadline passes. */
static void inflight_wait(struct quota_client *c, struct qs_quota *q, uint64_t need, uint64_t max,
			  int64_t deadline)
{
	atomic_fetch_add_explicit(&q->inflight_waiters, 1, memory_order_seq_cst);
	uint32_t seq = atomic_load_explicit(&q->inflight_futex, memory_order_acquire);
	/* seq_cst: either the releaser sees our waiter count, or we see its
	 * release here and do not sleep. */
	uint64_t w = atomic_load_explicit(&q->inflight, memory_order_seq_cst);
	int64_t now = qc_clock(c);
	if (QS_INFLIGHT_COUNT(w) + need > max && now < deadline) {
		int64_t left = deadline - now;
		struct timespec ts = { left / QC_NS_PER_S, left % QC_NS_PER_S };
		syscall(SYS_futex, &q->inflight_futex, FUTEX_WAIT, seq, &ts, NULL, 0);
	}
	atomic_fetch_sub_explicit(&q->inflight_waiters, 1, memory_order_relaxed);
}

/* Sleep until the segment clock reaches @until. */
static void sleep_until(struct quota_client *c, int64_t until)
{
	if (!c->manual) {
		struct timespec ts = { until / QC_NS_PER_S, until % QC_NS_PER_S };
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		return;
	}
	for (;;) {
		uint32_t seq = atomic_load_explicit(&c->g.h->clock_seq, memory_order_acquire);
		if (qc_clock(c) >= until)
			return;
		syscall(SYS_futex, &c->g.h->clock_seq, FUTEX_WAIT, seq, NULL, NULL, 0);
	}
}

/* One reservation in progress. */
struct qc_resv {
	struct qc_thread *t;
	struct quota_client *c;
	struct qs_quota *q;
	struct qc_cfg *cf;
	uint32_t id;
	uint64_t req, in, out;
	uint64_t inc[QS_KINDS];
	uint64_t spend;
	struct qs_row *row;
	int64_t start, now, deadline;
	int64_t a;                 /* admission time */
	int64_t tat[QS_KINDS];     /* as read by decide, raw */
	uint64_t done0[QS_KINDS];
	uint32_t day, month;
	unsigned reason;
	int64_t retry_at;
	uint32_t lane;             /* asked for (UINT32_MAX: the last) */
	uint32_t in_lane;          /* the quota's lane it is: plan */
	bool lower;                /* a lane below the top: waits without a slot */
	uint64_t wait_key;         /* lower lane: its wait published (waitline.c), 0 none */
	int64_t since;             /* its place in a lower lane's line: when it began waiting */
	bool ext;                  /* an extension of an open ticket */
	uint64_t base_tokens;      /* extension: the ticket's tokens so far */
	bool auto_out;             /* output 0 asked: the learned estimate, if the quota has it */
	uint64_t max_out;          /* its bound (opts), 0 = none */
	int64_t tau[QS_KINDS];     /* each limit's tolerance for our lane */
	struct qt_priv tk;
};

/* Outcomes of decide and take besides 0 and errors. */
enum { STEP_AGAIN = 1, STEP_WAIT_INFLIGHT, STEP_RELOADED };

/* The charge of @units on limit @k of @cf, from the per-thread cache. */
static inline uint64_t charge_cached(struct qc_cfg *cf, uint32_t k, uint64_t units)
{
	if (units != cf->last_units[k]) {
		cf->last_units[k] = units;
		cf->last_inc[k] = qg_charge(&cf->lim[k], units);
	}
	return cf->last_inc[k];
}

/* LEARNING: the output tokens to reserve for a caller that passed 0 on a
 * quota with "auto_estimate": the p99 of actual output that quotad merged
 * from the clients' histograms, bounded by the caller's max_tokens and the
 * context window; before anything was learned, that bound, else
 * QC_AUTO_DEFAULT. 0 on a quota without auto_estimate. */
#define QC_AUTO_DEFAULT 4096u
static uint64_t auto_estimate(const struct qc_resv *r)
{
	if (!(r->cf->flags2 & QS_REC2_AUTO_EST))
		return 0;
	uint64_t est = atomic_load_explicit(&r->q->learned_out, memory_order_relaxed);
	uint64_t cap = r->max_out;
	if (r->cf->context_window && r->cf->context_window > r->in &&
	    (!cap || r->cf->context_window - r->in < cap))
		cap = r->cf->context_window - r->in;
	if (!est || est > QC_COST_MAX)
		est = cap ? cap : QC_AUTO_DEFAULT;
	if (cap && est > cap)
		est = cap;
	return est ? est : 1;
}

/* Plan: the config and the cost of each limit. 0, -E2BIG, or an error of
 * qc_cfg_get(). */
static int plan(struct qc_resv *r)
{
	int err = qc_cfg_get(r->t, r->id, r->q, &r->cf);
	if (err < 0)
		return err;
	struct qc_cfg *cf = r->cf;
	if (cf->flags & QS_REC_REMOVED)
		return -ENOENT;
	if ((cf->context_window && r->in + r->out + r->base_tokens > cf->context_window) ||
	    (cf->max_inflight && r->req > cf->max_inflight))
		return -E2BIG;
	if (r->auto_out)
		r->out = auto_estimate(r);
	/* A lane the quota does not have (any, for a quota without lanes; or
	 * removed by a reload) is its last one. */
	uint32_t last = cf->nlanes ? cf->nlanes - 1 : 0;
	uint32_t lane = r->lane < last ? r->lane : last;
	r->in_lane = lane;
	r->lower = lane > 0;
	for (uint32_t k = 0; k < cf->n; k++) {
		const struct qs_limit_cfg *l = &cf->lim[k];
		uint64_t u = qc_units_of(l->kind, r->req, r->in, r->out);
		if (u > l->capacity)
			return -E2BIG;
		r->inc[k] = charge_cached(cf, k, u);
		r->tau[k] = cf->lane_tau[lane][k];
		if ((int64_t)r->inc[k] > r->tau[k])
			return -E2BIG; /* above what the lane may hold */
	}
	r->spend = 0;
	if (cf->budget_day_nusd || cf->budget_month_nusd) {
		r->spend = qc_spend_nusd(cf, r->in, r->out);
		if ((cf->budget_day_nusd && r->spend > cf->budget_day_nusd) ||
		    (cf->budget_month_nusd && r->spend > cf->budget_month_nusd))
			return -E2BIG;
	}
	if (cf->max_inflight && r->req && !r->row)
		return -ENOSPC;
	return 0;
}

/* Decide: 0 to take at admission time r->a, STEP_WAIT_INFLIGHT, or a
 * refusal (-EAGAIN with r->retry_at, -EDQUOT) with r->reason set. Reads
 * only. */
static int decide(struct qc_resv *r)
{
	const struct qc_cfg *cf = r->cf;
	struct qs_quota *q = r->q;
	int64_t paused = atomic_load_explicit(&q->paused_until, memory_order_relaxed);
	int64_t a = paused > r->now ? paused : r->now;
	if (cf->budget_day_nusd || cf->budget_month_nusd) {
		qc_periods(r->c, r->now, &r->day, &r->month);
		uint64_t sd = qs_spend_in(atomic_load_explicit(&q->spend_day, memory_order_relaxed), r->day);
		uint64_t sm = qs_spend_in(atomic_load_explicit(&q->spend_month, memory_order_relaxed), r->month);
		if ((cf->budget_day_nusd && sd + r->spend > cf->budget_day_nusd) ||
		    (cf->budget_month_nusd && sm + r->spend > cf->budget_month_nusd)) {
			r->reason = QUOTA_REJECT_SPEND;
			return -EDQUOT;
		}
	}
	r->reason = QUOTA_REJECT_PAUSED;
	for (uint32_t k = 0; k < cf->n; k++) {
		uint32_t kind = cf->lim[k].kind;
		/* acquire: pairs with the release in qg_refund(); a refund counted
		 * as done here is already in the TAT we read next. */
		r->done0[k] = atomic_load_explicit(cf->done[k], memory_order_acquire);
		r->tat[k] = atomic_load_explicit(cf->tat[k], memory_order_relaxed);
		int64_t need = qg_tat_clamp(r->tat[k]) + (int64_t)r->inc[k] - r->tau[k];
		if (need > a) {
			a = need;
			r->reason = kind;
		}
	}
	r->a = a;
	if (cf->max_inflight) {
		/* A global max_inflight: only while quotad's lease from Redis
		 * holds (GLOBAL IN FLIGHT, docs/ARCHITECTURE.md, Theorem S). */
		if ((cf->flags & QS_REC_GLOBAL_INFLIGHT) && r->req &&
		    a >= atomic_load_explicit(&q->inflight_until, memory_order_relaxed)) {
			r->reason = QUOTA_REJECT_INFLIGHT;
			r->retry_at = r->now + QC_NS_PER_S; /* until quotad hears from Redis again */
			return -EAGAIN;
		}
		uint64_t w = atomic_load_explicit(&q->inflight, memory_order_relaxed);
		if (QS_INFLIGHT_COUNT(w) + r->req > cf->max_inflight) {
			if (!r->c->manual && r->now < r->deadline && a <= r->deadline)
				return STEP_WAIT_INFLIGHT;
			r->reason = QUOTA_REJECT_INFLIGHT;
			r->retry_at = a > r->now ? a : r->now + 1000000; /* frees when a call ends */
			return -EAGAIN;
		}
	}
	if (a > r->deadline) {
		r->retry_at = a;
		return -EAGAIN;
	}
	return 0;
}

/* Undo: give back the first @k rate slots, the spend and the in-flight
 * slots that take took. */
static void undo(struct qc_resv *r, uint32_t k)
{
	for (uint32_t j = 0; j < k; j++)
		qg_refund(r->t, r->q, r->id, &r->tk.lim[j], r->tk.lim[j].inc);
	if (r->spend) {
		qc_spend_adjust(&r->q->spend_day, r->day, r->day, -(int64_t)r->spend);
		qc_spend_adjust(&r->q->spend_month, r->month, r->month, -(int64_t)r->spend);
	}
	if (r->cf->max_inflight && r->req)
		qc_inflight_release(r->t, r->q, r->row, r->id, (uint32_t)r->req);
}

/* Take one slot on limit @k at admission time r->a: false if the limit
 * moved past it (the caller undoes and starts over). */
static bool take_slot(struct qc_resv *r, uint32_t k, bool waits)
{
	const struct qs_limit_cfg *l = &r->cf->lim[k];
	_Atomic int64_t *w = r->cf->tat[k];
	int64_t cur = r->tat[k], tau = r->tau[k], inc = (int64_t)r->inc[k];
	/* A reservation that waits places its slot at least tau/8 after its
	 * admission time (within its window [a, a + tau]), so that refunds
	 * made while it sleeps have room to move it (gcra.c) instead of making
	 * it requeue. Not later: a limit that does not bind keeps 7/8 of its
	 * burst to absorb the mix of costs, instead of pacing every request. */
	int64_t lo = r->a;
	if (waits) {
		int64_t room = tau - inc;
		lo += room < tau / QC_WAIT_SLACK_DIV ? room : tau / QC_WAIT_SLACK_DIV;
	}
	for (;;) {
		int64_t c = qg_tat_clamp(cur);
		int64_t e = (c > lo ? c : lo) + inc;
		/* relaxed: what the slot is worth was decided from values this
		 * CAS validates; the order against the config word re-check
		 * comes from the barrier in take(). */
		if (atomic_compare_exchange_weak_explicit(w, &cur, e, memory_order_relaxed,
							  memory_order_relaxed)) {
			r->tk.lim[k] = (struct qt_limit){ .end = e, .inc = (uint64_t)inc,
							  .done0 = r->done0[k], .kind = l->kind };
			return true;
		}
		r->t->cas_retries++;
		if (qg_tat_clamp(cur) + inc - tau > r->a)
			return false;
	}
}

/* Take: 0 when everything is taken, STEP_AGAIN (given back: decide again),
 * STEP_RELOADED (given back: plan again), -EDQUOT. */
static int take(struct qc_resv *r)
{
	const struct qc_cfg *cf = r->cf;
	if (cf->max_inflight && r->req &&
	    !inflight_take(r->t, r->q, r->row, r->id, (uint32_t)r->req, cf->max_inflight))
		return STEP_AGAIN;
	if (r->spend) {
		bool ok = spend_take(&r->q->spend_day, r->day, cf->budget_day_nusd, r->spend);
		if (ok && !spend_take(&r->q->spend_month, r->month, cf->budget_month_nusd, r->spend)) {
			qc_spend_adjust(&r->q->spend_day, r->day, r->day, -(int64_t)r->spend);
			ok = false;
		}
		if (!ok) {
			if (cf->max_inflight && r->req)
				qc_inflight_release(r->t, r->q, r->row, r->id, (uint32_t)r->req);
			r->reason = QUOTA_REJECT_SPEND;
			return -EDQUOT;
		}
	}
	bool waits = r->a > r->now;
	uint32_t k;
	for (k = 0; k < cf->n; k++)
		if (!take_slot(r, k, waits))
			break;
	if (k < cf->n) {
		undo(r, k);
		return STEP_AGAIN;
	}
	/* A config published after plan read it, before our slots were taken:
	 * they were sized by the old limits. The slots are taken before the
	 * re-check: on x86 a locked CAS is already a full barrier, so only the
	 * compiler must be held back (a seq_cst CAS there cost 20 % of
	 * reserve's throughput); other architectures get the fence C11 asks
	 * for. Pairs with the seq_cst store of the word (records.c). */
#if defined(__x86_64__) || defined(__i386__)
	atomic_signal_fence(memory_order_seq_cst);
#else
	atomic_thread_fence(memory_order_seq_cst);
#endif
	if (atomic_load_explicit(&r->q->cfg, memory_order_relaxed) != cf->word) {
		undo(r, k);
		return STEP_RELOADED;
	}
	return 0;
}

/* The refunds begun since the ticket's CAS may have moved a waiting slot
 * earlier than its admission time (gcra.c); true if none can have. */
static bool waiter_still_valid(struct qs_quota *q, const struct qt_priv *tk)
{
	for (uint32_t k = 0; k < tk->nlimits; k++) {
		const struct qt_limit *tl = &tk->lim[k];
		/* seq_cst: pairs with the refund's seq_cst increment (gcra.c) */
		uint64_t moved = atomic_load(&q->refund_begun[tl->kind & (QS_KINDS - 1)]) - tl->done0;
		int64_t start = tl->end - (int64_t)tl->inc;
		if (moved > (uint64_t)INT64_MAX / 4 || start - (int64_t)moved < tk->admitted_at)
			return false;
	}
	return true;
}

/* Fill ticket @tk (the caller's, or r->tk while it waits) and count the
 * admission. Field by field: a block copy of r->tk right after take()
 * wrote it costs store-forwarding stalls. */
static inline __attribute__((always_inline)) void admit(struct qc_resv *r, struct qt_priv *tk)
{
	tk->magic = QT_OPEN;
	tk->owner = r->c->nonce;
	tk->quota = r->id;
	tk->nlimits = r->cf->n;
	tk->held = (r->cf->max_inflight ? (uint32_t)r->req : 0) | QT_LANE_BITS(r->in_lane) |
		   (r->ext ? QT_EXTENSION : 0);
	tk->cfg_word = r->cf->word;
	tk->solo = 0;
	tk->admitted_at = r->a;
	tk->requests = r->req;
	tk->input_tokens = r->in;
	tk->output_tokens = r->out;
	tk->spend_nusd = r->spend;
	tk->day = r->day;
	tk->month = r->month;
	if (tk != &r->tk)
		for (uint32_t k = 0; k < r->cf->n; k++) {
			tk->lim[k].end = r->tk.lim[k].end;
			tk->lim[k].inc = r->tk.lim[k].inc;
			tk->lim[k].done0 = r->tk.lim[k].done0;
			tk->lim[k].kind = r->tk.lim[k].kind;
		}
	/* Counted now so that a requeue (which cancels) undoes it; an
	 * extension adds tokens to a call already counted. */
	if (r->row) {
		qc_row_add(&r->row->admitted, r->ext ? 0 : 1);
		qc_row_add(&r->row->in_tokens, r->in);
		qc_row_add(&r->row->out_tokens, r->out);
	} else {
		atomic_fetch_add_explicit(&r->q->st_admitted, r->ext ? 0 : 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&r->q->st_in_tokens, r->in, memory_order_relaxed);
		atomic_fetch_add_explicit(&r->q->st_out_tokens, r->out, memory_order_relaxed);
	}
}

/* A lower lane's wait is over (admitted, refused, or no longer lower). */
static void lower_done(struct qc_resv *r)
{
	if (r->wait_key) {
		qc_wait_end(&r->c->g, r->t->cs);
		r->wait_key = 0;
	}
}

/* The limit a lower lane's reservation refused for older waiters names as
 * its reason: the one closest to binding. */
static uint32_t closest_limit(const struct qc_resv *r)
{
	uint32_t best = 0;
	for (uint32_t k = 1; k < r->cf->n; k++)
		if (qg_tat_clamp(r->tat[k]) + (int64_t)r->inc[k] - r->tau[k] >
		    qg_tat_clamp(r->tat[best]) + (int64_t)r->inc[best] - r->tau[best])
			best = k;
	return r->cf->n ? r->cf->lim[best].kind : QUOTA_REJECT_PAUSED;
}

/* A lower lane holds no place in line (LANES): it waits without a slot, so
 * that a higher lane's reservation never queues behind it, and decides only
 * when no older waiter of its lane is left (waitline.c): then it sleeps
 * until its lane would admit it, or takes now. Also a reservation that
 * would fit at once comes here while its lane has waiters, so that it does
 * not pass them. 1 if it slept (decide again), 0 if it may take now,
 * -EAGAIN (r->retry_at set) if older waiters are ahead and its time is up. */
static int lower_wait(struct qc_resv *r)
{
	uint64_t line = QS_WAIT_LINE_OF(r->id, r->in_lane);
	if (QS_WAIT_LINE(r->wait_key) != line) /* not yet, or a reload moved its lane */
		r->wait_key = qc_wait_begin(r->t, line, r->since, r->deadline);
	struct qc_waiter w;
	if (qc_wait_ahead(&r->c->g, r->t->slot, r->wait_key, r->since, r->now, &w)) {
		if (r->now >= r->deadline) {
			/* its turn comes after theirs, which is not known */
			r->retry_at = r->a > r->now ? r->a : r->now + QC_WAIT_POLL_NS;
			if (r->a <= r->now)
				r->reason = closest_limit(r);
			return -EAGAIN;
		}
		qc_wait_behind(r->c, &w, r->deadline);
	} else if (r->a > r->now) {
		sleep_until(r->c, r->a);
	} else {
		return 0;
	}
	r->now = qc_clock(r->c);
	return 1;
}

/* Plan, decide, take and wait until admitted (the ticket written into
 * @ret) or refused. */
static int run_steps(struct qc_resv *r, struct quota_ticket *ret)
{
	int s;
replan:
	s = plan(r);
	if (s < 0)
		return s == -E2BIG ? (r->reason = QUOTA_REJECT_TOO_BIG, -E2BIG) : s;
	if (!r->lower)
		lower_done(r);
	for (;;) {
		s = decide(r);
		if (s == STEP_WAIT_INFLIGHT) {
			inflight_wait(r->c, r->q, r->req, r->cf->max_inflight, r->deadline);
			r->now = qc_clock(r->c);
			continue;
		}
		if (s < 0)
			return s;
		if (r->lower && (r->a > r->now || r->wait_key || qc_wait_any(r->q, r->in_lane))) {
			s = lower_wait(r);
			if (s < 0)
				return s;
			if (s)
				continue;
		}
		s = take(r);
		if (s == STEP_RELOADED) {
			r->now = qc_clock(r->c);
			goto replan;
		}
		if (s == STEP_AGAIN) {
			r->now = qc_clock(r->c);
			continue;
		}
		if (s < 0)
			return s;
		if (r->a <= r->now) {
			admit(r, qt_priv(ret));
			return 0;
		}
		admit(r, &r->tk);
		/* Wait: until our admission time; then requeue if our slots may
		 * have moved before it, or the provider asked the host to pause. */
		sleep_until(r->c, r->a);
		r->now = qc_clock(r->c);
		if (waiter_still_valid(r->q, &r->tk) &&
		    atomic_load_explicit(&r->q->paused_until, memory_order_relaxed) <= r->a) {
			/* Only the limits in use: the rest is never read. */
			memcpy(ret->private_, &r->tk, offsetof(struct qt_priv, lim) +
			       r->tk.nlimits * sizeof(r->tk.lim[0]));
			return 0;
		}
		qc_settle(r->t, r->q, &r->tk, NULL);
	}
}

static int run(struct qc_resv *r, struct quota_ticket *ret)
{
	r->wait_key = 0;
	int s = run_steps(r, ret);
	lower_done(r);
	return s;
}

/* fast(), one limit: the slot's end if it admits now, else 0. */
static inline int64_t fast_slot(struct qc_cfg *cf, uint32_t k, uint64_t units, int64_t now,
				uint64_t *inc, uint64_t *done0, int64_t *tat)
{
	const struct qs_limit_cfg *l = &cf->lim[k];
	if (units > l->capacity)
		return 0;
	*inc = charge_cached(cf, k, units);
	/* acquire: pairs with the release in qg_refund(), as in decide() */
	*done0 = atomic_load_explicit(cf->done[k], memory_order_acquire);
	*tat = atomic_load_explicit(cf->tat[k], memory_order_relaxed);
	int64_t c = qg_tat_clamp(*tat);
	if (c + (int64_t)*inc - l->tau_ns > now)
		return 0;
	return (c > now ? c : now) + (int64_t)*inc;
}

/* The common case (see the top): 0 with the ticket written, or 1 to take
 * the general path, nothing taken. Always inlined: quota_reserve() and
 * quota_reserve_ex() each carry it (a call costs the common case ~5 %). */
static inline __attribute__((always_inline)) int fast(struct qc_thread *t, struct qs_quota *q,
						      uint32_t id, uint64_t req, uint64_t in,
						      uint64_t out, int64_t now,
						      struct quota_ticket *ret)
{
	/* acquire: pairs with quotad's publication of the word (records.c) */
	uint64_t w = atomic_load_explicit(&q->cfg, memory_order_acquire);
	struct qc_cfg *cf = t->cfg[id];
	if (!cf || cf->word != w || !cf->fast || (cf->context_window && in + out > cf->context_window) ||
	    atomic_load_explicit(&q->paused_until, memory_order_relaxed) > now)
		return 1;
	uint64_t inc0, inc1 = 0, done0, done1 = 0;
	int64_t tat0, tat1 = 0, e1 = 0;
	uint32_t kind0 = cf->lim[0].kind, kind1 = cf->lim[1].kind;
	int64_t e0 = fast_slot(cf, 0, qc_units_of(kind0, req, in, out), now, &inc0, &done0, &tat0);
	if (!e0 || (cf->n == 2 && !(e1 = fast_slot(cf, 1, qc_units_of(kind1, req, in, out), now, &inc1,
						      &done1, &tat1))))
		return 1;
	/* relaxed, as in take_slot() */
	if (!atomic_compare_exchange_strong_explicit(cf->tat[0], &tat0, e0, memory_order_relaxed,
						     memory_order_relaxed))
		return 1;
	if (cf->n == 2 && !atomic_compare_exchange_strong_explicit(cf->tat[1], &tat1, e1,
								   memory_order_relaxed,
								   memory_order_relaxed)) {
		struct qt_limit l0 = { .end = e0, .inc = inc0, .done0 = done0, .kind = kind0 };
		qg_refund(t, q, id, &l0, inc0);
		return 1;
	}
	/* take()'s re-check of the config word, with its barrier. */
#if defined(__x86_64__) || defined(__i386__)
	atomic_signal_fence(memory_order_seq_cst);
#else
	atomic_thread_fence(memory_order_seq_cst);
#endif
	if (atomic_load_explicit(&q->cfg, memory_order_relaxed) != w) {
		struct qt_limit l0 = { .end = e0, .inc = inc0, .done0 = done0, .kind = kind0 };
		struct qt_limit l1 = { .end = e1, .inc = inc1, .done0 = done1, .kind = kind1 };
		qg_refund(t, q, id, &l0, inc0);
		if (cf->n == 2)
			qg_refund(t, q, id, &l1, inc1);
		return 1;
	}
	struct qt_priv *tk = qt_priv(ret);
	tk->magic = QT_OPEN;
	tk->owner = t->c->nonce;
	tk->quota = id;
	tk->nlimits = cf->n;
	tk->held = 0;
	tk->cfg_word = w;
	tk->solo = tat0 == cf->last_end;
	cf->last_end = e0;
	tk->admitted_at = now;
	tk->requests = req;
	tk->input_tokens = in;
	tk->output_tokens = out;
	tk->spend_nusd = 0;
	tk->day = tk->month = 0;
	tk->lim[0].end = e0;
	tk->lim[0].inc = inc0;
	tk->lim[0].done0 = done0;
	tk->lim[0].kind = kind0;
	if (cf->n == 2) {
		tk->lim[1].end = e1;
		tk->lim[1].inc = inc1;
		tk->lim[1].done0 = done1;
		tk->lim[1].kind = kind1;
	}
	ret->waited_ns = 0;
	ret->retry_after_ns = 0;
	return 0;
}

/* HELD OPEN (held.c; the proof is in ARCHITECTURE, Alarms): an admitted
 * ticket of a quota with an alarm time counts itself open in its row, in the
 * alarm phase it reads now. The phase is read after the admission: the
 * clock read that admitted it (at or after its admission time) comes first,
 * so a ticket that reads a phase older than quotad's last flip was admitted
 * before that flip. Only such quotas pay for this (they leave fast()). */
static void open_count(const struct qc_resv *r, struct qt_priv *tk)
{
	if (!r->cf->alarm_held_ns || !r->row)
		return;
	/* seq_cst: in one order with the clock read before it (the manual
	 * clock's is a seq_cst load) and with quotad's store of the flip, made
	 * after it summed the rows (held.c); a plain load on x86 */
	uint32_t p = (uint32_t)atomic_load_explicit(&r->q->held_phase, memory_order_seq_cst) & 1;
	_Atomic int32_t *o = &r->row->open[p];
	atomic_store_explicit(o, atomic_load_explicit(o, memory_order_relaxed) + 1, memory_order_relaxed);
	tk->held |= QT_OPEN_COUNTED | (p ? QT_OPEN_PHASE : 0);
}

/* A reservation or extension refused with @err: a refusal of budget is
 * counted under its reason, and -EAGAIN says in @out when to retry. */
static int refused(const struct qc_resv *r, int err, struct quota_ticket *out)
{
	if (err == -EAGAIN || err == -EDQUOT || err == -E2BIG) {
		qc_count_reject(r->t, r->q, r->id, r->reason);
		if (err == -EAGAIN)
			out->retry_after_ns = r->retry_at > r->now ? r->retry_at - r->now : 0;
	}
	return err;
}

/* quota_reserve() in lane @lane (UINT32_MAX: the quota's last), its place
 * in a lower lane's line that of a wait begun at @since (0: now). */
static inline __attribute__((always_inline)) int reserve(quota_client *c, int id,
							  const struct quota_cost *cost,
							  int64_t timeout_ns, uint32_t lane,
							  uint64_t max_out, int64_t since,
							  struct quota_ticket *ret)
{
	if (!c || !cost || !ret || timeout_ns < 0)
		return -EINVAL;
	struct qc_resv r;
	int err = qc_writer(c, &r.t);
	if (err < 0)
		return err;
	r.q = qc_quota(c, id);
	if (!r.q)
		return -ENOENT;
	r.c = c;
	r.id = (uint32_t)id;
	r.req = cost->requests, r.in = cost->input_tokens, r.out = cost->output_tokens;
	if ((r.req | r.in | r.out) == 0 || r.req > QC_COST_MAX || r.in > QC_COST_MAX ||
	    r.out > QC_COST_MAX)
		return -EINVAL;
	r.row = qc_row(r.t, r.id);
	/* Ask for the hot line in exclusive state now: a transfer from another
	 * core overlaps the clock read, and the CAS that follows needs no
	 * second (read, then upgrade) transaction. */
	__builtin_prefetch(r.q, 1, 3);
	r.start = r.now = qc_clock(c);
	if (fast(r.t, r.q, r.id, r.req, r.in, r.out, r.now, ret) == 0) {
		if (r.row) {
			qc_row_add(&r.row->admitted, 1);
			qc_row_add(&r.row->in_tokens, r.in);
			qc_row_add(&r.row->out_tokens, r.out);
		} else {
			atomic_fetch_add_explicit(&r.q->st_admitted, 1, memory_order_relaxed);
			atomic_fetch_add_explicit(&r.q->st_in_tokens, r.in, memory_order_relaxed);
			atomic_fetch_add_explicit(&r.q->st_out_tokens, r.out, memory_order_relaxed);
		}
		return 0;
	}
	r.deadline = add_sat(r.start, timeout_ns);
	r.since = since > 0 && since < r.start ? since : r.start;
	r.day = r.month = 0;
	r.lane = lane;
	r.ext = false;
	r.base_tokens = 0;
	r.auto_out = r.out == 0;
	r.max_out = max_out;
	err = run(&r, ret);
	if (err == 0) {
		open_count(&r, qt_priv(ret));
		ret->waited_ns = r.now - r.start;
		ret->retry_after_ns = 0;
		return 0;
	}
	return refused(&r, err, ret);
}

int quota_reserve(quota_client *c, int id, const struct quota_cost *cost, int64_t timeout_ns,
		  struct quota_ticket *ret)
{
	return reserve(c, id, cost, timeout_ns, UINT32_MAX, 0, 0, ret);
}

void quota_reserve_opts_init(struct quota_reserve_opts *o, size_t size)
{
	if (!o || size < offsetof(struct quota_reserve_opts, queued_since_ns))
		return;
	memset(o, 0, size);
	o->size = (uint32_t)size;
	o->lane = QUOTA_LANE_DEFAULT;
}

int quota_reserve_ex(quota_client *c, int id, const struct quota_cost *cost, int64_t timeout_ns,
		     const struct quota_reserve_opts *opts, struct quota_ticket *ret)
{
	uint32_t lane = QUOTA_LANE_DEFAULT;
	uint64_t max_out = 0;
	int64_t since = 0;
	if (opts) {
		if (opts->size < offsetof(struct quota_reserve_opts, queued_since_ns) || opts->flags ||
		    opts->max_output_tokens > QC_COST_MAX)
			return -EINVAL;
		lane = opts->lane;
		max_out = opts->max_output_tokens;
		/* 2.2: a 2.1 caller's struct is as large, its word zeroed by init */
		if (opts->size >= offsetof(struct quota_reserve_opts, reserved_)) {
			if (opts->queued_since_ns < 0)
				return -EINVAL;
			since = opts->queued_since_ns;
		}
	}
	return reserve(c, id, cost, timeout_ns, lane, max_out, since, ret);
}

int quota_lane(quota_client *c, int id, const char *name)
{
	if (!c || !name)
		return -EINVAL;
	if (id < 0 || !qs_quota_at(&c->g, (uint32_t)id))
		return -ENOENT;
	struct qs_config cfg;
	int err = qs_config_get(&c->g, (uint32_t)id, &cfg, NULL);
	if (err < 0)
		return err;
	if (cfg.flags & QS_REC_REMOVED)
		return -ENOENT;
	for (uint32_t i = 0; i < cfg.nlanes && i < QS_LANES; i++)
		if (strncmp(cfg.lanes[i].name, name, QS_LANE_NAME) == 0)
			return (int)i;
	return -ENOENT;
}

/* Merge the slots of extension @x into ticket @tk: on every limit the
 * extension charged, its slot becomes the ticket's (settle.c, EXTEND). */
static void merge_extension(struct qt_priv *tk, const struct qt_priv *x, const struct qc_resv *r)
{
	for (uint32_t j = 0; j < x->nlimits; j++) {
		if (x->lim[j].inc == 0)
			continue;
		uint32_t k = 0;
		while (k < tk->nlimits && tk->lim[k].kind != x->lim[j].kind)
			k++;
		if (k == QS_KINDS)
			continue; /* cannot happen: kinds are distinct */
		if (k == tk->nlimits)
			tk->nlimits++;
		tk->lim[k] = x->lim[j];
	}
	tk->input_tokens += r->in;
	tk->output_tokens += r->out;
	if (r->spend) {
		if (!tk->spend_nusd)
			tk->day = r->day, tk->month = r->month;
		tk->spend_nusd += r->spend;
	}
	tk->piece_at = x->admitted_at;
	tk->held |= QT_EXTENDED;
}

int quota_extend(quota_client *c, struct quota_ticket *ticket, const struct quota_cost *more,
		 int64_t timeout_ns)
{
	if (!c || !ticket || !more || timeout_ns < 0 || more->requests ||
	    (more->input_tokens | more->output_tokens) == 0 || more->input_tokens > QC_COST_MAX ||
	    more->output_tokens > QC_COST_MAX)
		return -EINVAL;
	struct qt_priv *tk = qc_open_ticket(c, ticket);
	if (!tk)
		return -EINVAL;
	if (tk->input_tokens + more->input_tokens > QC_COST_MAX ||
	    tk->output_tokens + more->output_tokens > QC_COST_MAX)
		return -EINVAL;
	struct qc_resv r;
	int err = qc_writer(c, &r.t);
	if (err < 0)
		return err;
	r.q = qc_quota(c, (int)tk->quota);
	if (!r.q)
		return -EINVAL;
	r.c = c;
	r.id = tk->quota;
	r.req = 0, r.in = more->input_tokens, r.out = more->output_tokens;
	r.row = qc_row(r.t, r.id);
	r.start = r.now = qc_clock(c);
	r.deadline = add_sat(r.start, timeout_ns);
	r.since = r.start;
	r.day = r.month = 0;
	r.lane = QT_LANE(tk->held);
	r.ext = true;
	r.base_tokens = tk->input_tokens + tk->output_tokens;
	r.auto_out = false;
	r.max_out = 0;
	struct quota_ticket x;
	err = run(&r, &x);
	if (err == 0) {
		merge_extension(tk, qt_priv(&x), &r);
		ticket->waited_ns = r.now - r.start;
		ticket->retry_after_ns = 0;
		return 0;
	}
	return refused(&r, err, ticket);
}

int quota_backoff(quota_client *c, int id, int64_t retry_after_ns)
{
	if (!c || retry_after_ns < 0 || retry_after_ns > QC_BACKOFF_MAX)
		return -EINVAL;
	struct qc_thread *t;
	int err = qc_writer(c, &t);
	if (err < 0)
		return err;
	struct qs_quota *q = qc_quota(c, id);
	struct qc_cfg *cf;
	if (!q)
		return -ENOENT;
	err = qc_cfg_get(t, (uint32_t)id, q, &cf);
	if (err < 0)
		return err;
	if (cf->flags & QS_REC_REMOVED)
		return -ENOENT;
	qg_atomic_max(&q->paused_until, qc_clock(c) + retry_after_ns);
	return 0;
}
