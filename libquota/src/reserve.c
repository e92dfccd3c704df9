/* SPDX-License-Identifier: MIT */
/*
 * reserve.c - the hot path: reserve, commit, cancel and backoff on one quota.
 *
 * A reservation is all or nothing across the quota's limits. It first reads
 * every word it depends on and decides (a refusal writes nothing shared),
 * then takes, in this order, the in-flight slots (CAS), the spend (CAS) and
 * one slot per rate limit (CAS each, at the common admission time computed
 * in gcra.c's terms). If a rate limit moved so that the admission time would
 * have to be later, everything taken so far is given back and the
 * reservation starts over; otherwise the CAS is simply retried. Waiting
 * means sleeping until the admission time the slots were taken for; FIFO
 * follows because slots are handed out in CAS order.
 *
 * Per-process statistics go to the caller's own row in its client slot (one
 * writer, relaxed stores): nothing shared is written for them.
 */
#include <errno.h>
#include <linux/futex.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "gcra.h"
#include "internal.h"

/* Largest cost field accepted: keeps every sum and product in range. */
#define QC_COST_MAX (1ULL << 62)
/* A waiting reservation's slots start at least tau / this after its
 * admission time: the room refunds have to move them while it waits. */
#define QC_WAIT_SLACK_DIV 8
/* quota_backoff() accepts at most a day. */
#define QC_BACKOFF_MAX QC_DAY_NS

static inline uint64_t units_of(uint32_t kind, uint64_t req, uint64_t in, uint64_t out)
{
	switch (kind >> 1) {
	case 0: return req;            /* RPM, RPD */
	case 1: return in + out;       /* TPM, TPD */
	case 2: return in;             /* ITPM, ITPD */
	default: return out;           /* OTPM, OTPD */
	}
}

static inline int64_t add_sat(int64_t a, int64_t b)
{
	int64_t r;
	return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

uint64_t qc_spend_nusd(const struct qs_quota *q, uint64_t in, uint64_t out)
{
	unsigned __int128 p = (unsigned __int128)in * q->price_in_pusd +
			      (unsigned __int128)out * q->price_out_pusd;
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

static inline void row_add(_Atomic uint64_t *f, uint64_t v)
{
	/* One writer (this process): a relaxed load and store, no lock prefix. */
	atomic_store_explicit(f, atomic_load_explicit(f, memory_order_relaxed) + v,
			      memory_order_relaxed);
}

void qc_count_reject(struct quota_client *c, struct qs_quota *q, uint32_t id, unsigned reason)
{
	struct qs_row *row = qc_row(c, id);
	if (row)
		row_add(&row->rejected[reason], 1);
	else
		atomic_fetch_add_explicit(&q->st_rejected[reason], 1, memory_order_relaxed);
}

/* Take @n in-flight slots if fewer than @max - @n are taken. */
static bool inflight_take(struct quota_client *c, struct qs_quota *q, struct qs_row *row,
			  uint32_t id, uint32_t n, uint64_t max)
{
	/* release (by the CAS): the intent is visible before the counter moves */
	atomic_store_explicit(&c->cs->intent, ((uint64_t)n << 32) | (id + 1), memory_order_relaxed);
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
		atomic_store_explicit(&row->held, atomic_load_explicit(&row->held, memory_order_relaxed) + n,
				      memory_order_relaxed);
	/* release: held is final before the intent is withdrawn */
	atomic_store_explicit(&c->cs->intent, 0, memory_order_release);
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
		uint32_t seq = atomic_load_explicit(&c->h->clock_seq, memory_order_acquire);
		if (qc_clock(c) >= until)
			return;
		syscall(SYS_futex, &c->h->clock_seq, FUTEX_WAIT, seq, NULL, NULL, 0);
	}
}

/* Give back what a ticket holds: everything (cancel, @actual NULL) or the
 * difference to @actual (commit). */
static void settle(struct quota_client *c, struct qs_quota *q, struct qt_priv *tk,
		   const struct quota_cost *actual)
{
	uint64_t areq = actual ? actual->requests : 0;
	uint64_t ain = actual ? actual->input_tokens : 0;
	uint64_t aout = actual ? actual->output_tokens : 0;
	int64_t now = -1; /* read only if debt or spend needs it */
	/* The limits, copied consistently (quotad may be reloading); not
	 * needed when the usage is exactly what was reserved. */
	struct qs_quota cfg;
	uint32_t n = 0, flags = 0;
	bool exact = actual && areq == tk->requests && ain == tk->input_tokens &&
		     aout == tk->output_tokens;
	if (!exact) {
		while (qs_quota_snapshot_n(q, &cfg, tk->nlimits) < 0)
			; /* quotad is rewriting it: it finishes in microseconds */
		n = tk->nlimits <= cfg.nlimits ? tk->nlimits : cfg.nlimits;
		flags = cfg.flags;
	}
	const struct qs_limit_cfg *lc = cfg.cfg;
	bool refund_tokens = actual == NULL || (flags & QS_QUOTA_REFUND_ACTUAL);

	for (uint32_t k = 0; k < n; k++) {
		const struct qs_limit_cfg *l = &lc[k];
		struct qt_limit *tl = &tk->lim[k];
		if (l->kind != tl->kind)
			continue; /* a reload changed this limit: nothing to settle */
		uint64_t est = units_of(tl->kind, tk->requests, tk->input_tokens, tk->output_tokens);
		uint64_t act = units_of(tl->kind, areq, ain, aout);
		if (act < est && (refund_tokens || (tl->kind >> 1) == 0)) {
			uint64_t keep = qg_charge(l, act);
			if (keep < tl->inc)
				qg_refund(c, q, tk->quota, k, tl, tl->inc - keep);
		} else if (act > est) {
			if (now < 0)
				now = qc_clock(c);
			qg_debt(q, k, qg_charge(l, act - est), now);
		}
	}

	if (tk->spend_nusd || actual) {
		uint64_t spent = actual ? qc_spend_nusd(q, ain, aout) : 0;
		int64_t delta = (int64_t)spent - (int64_t)tk->spend_nusd;
		if (delta) {
			uint32_t day, month;
			if (now < 0)
				now = qc_clock(c);
			qc_periods(c, now, &day, &month);
			if (!tk->spend_nusd) /* no budget: charged at commit only */
				tk->day = day, tk->month = month;
			qc_spend_adjust(&q->spend_day, tk->day, day, delta);
			qc_spend_adjust(&q->spend_month, tk->month, month, delta);
		}
	}

	struct qs_row *row = tk->row1 ? &c->cs->rows[tk->row1 - 1] : NULL;
	if (tk->held && row)
		qc_inflight_release(c, q, row, tk->quota, tk->held);
	if (actual) {
		if (row) {
			row_add(&row->in_tokens, ain - tk->input_tokens);
			row_add(&row->out_tokens, aout - tk->output_tokens);
		} else {
			atomic_fetch_add_explicit(&q->st_in_tokens, ain - tk->input_tokens, memory_order_relaxed);
			atomic_fetch_add_explicit(&q->st_out_tokens, aout - tk->output_tokens, memory_order_relaxed);
		}
	} else if (row) {
		row_add(&row->admitted, (uint64_t)-1);
		row_add(&row->in_tokens, 0 - tk->input_tokens);
		row_add(&row->out_tokens, 0 - tk->output_tokens);
	} else {
		atomic_fetch_sub_explicit(&q->st_admitted, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(&q->st_in_tokens, tk->input_tokens, memory_order_relaxed);
		atomic_fetch_sub_explicit(&q->st_out_tokens, tk->output_tokens, memory_order_relaxed);
	}
}

/* The refunds begun since the ticket's CAS may have moved a waiting slot
 * earlier than its admission time (gcra.c); true if none can have. */
static bool waiter_still_valid(struct qs_quota *q, const struct qt_priv *tk)
{
	for (uint32_t k = 0; k < tk->nlimits; k++) {
		const struct qt_limit *tl = &tk->lim[k];
		/* seq_cst: pairs with the refund's seq_cst increment (gcra.c) */
		uint64_t moved = atomic_load(&q->refund_begun[k]) - tl->done0;
		int64_t start = tl->end - (int64_t)tl->inc;
		if (moved > (uint64_t)INT64_MAX / 4 || start - (int64_t)moved < tk->admitted_at)
			return false;
	}
	return true;
}

int quota_reserve(quota_client *c, int id, const struct quota_cost *cost, int64_t timeout_ns,
		  struct quota_ticket *ret)
{
	if (!c || !cost || !ret || timeout_ns < 0)
		return -EINVAL;
	struct qs_quota *q;
	int err = qc_writable_quota(c, id, &q);
	if (err < 0)
		return err;
	uint64_t req = cost->requests, in = cost->input_tokens, out = cost->output_tokens;
	if ((req | in | out) == 0 || req > QC_COST_MAX || in > QC_COST_MAX || out > QC_COST_MAX)
		return -EINVAL;
	/* Costs that can never fit are refused at once, whatever else is short.
	 * The config is read between two loads of cfg_seq (quotad rewrites it
	 * on reload, odd while it does): retry on a torn read. */
	uint64_t inc[QS_RATE_KINDS];
	int64_t tau[QS_RATE_KINDS];
	uint32_t kind[QS_RATE_KINDS];
	uint64_t maxif, bday, bmonth, spend;
	uint32_t n, seq;
	bool big;
	do {
		/* acquire: the config loads below are not hoisted above it */
		seq = atomic_load_explicit(&q->cfg_seq, memory_order_acquire);
		n = q->nlimits;
		maxif = q->max_inflight;
		bday = q->budget_day_nusd, bmonth = q->budget_month_nusd;
		spend = 0;
		big = n > QS_RATE_KINDS || (q->context_window && in + out > q->context_window);
		for (uint32_t k = 0; k < n && !big; k++) {
			kind[k] = q->cfg[k].kind;
			tau[k] = q->cfg[k].tau_ns;
			uint64_t u = units_of(kind[k], req, in, out);
			big = u > q->cfg[k].capacity;
			inc[k] = big ? 0 : qg_charge(&q->cfg[k], u);
		}
		big = big || (maxif && req > maxif);
		if (!big && (bday || bmonth)) {
			spend = qc_spend_nusd(q, in, out);
			big = (bday && spend > bday) || (bmonth && spend > bmonth);
		}
		/* acquire fence: the config loads complete before the re-check */
		atomic_thread_fence(memory_order_acquire);
	} while ((seq & 1) || atomic_load_explicit(&q->cfg_seq, memory_order_relaxed) != seq);
	if (n > QS_RATE_KINDS)
		return -EBADMSG;
	if (big)
		goto too_big;
	struct qs_row *row = qc_row(c, (uint32_t)id);
	if (maxif && !row)
		return -ENOSPC;

	int64_t start = qc_clock(c), now = start;
	int64_t deadline = add_sat(start, timeout_ns);
	struct qt_priv tk;
	unsigned reason;
	int64_t retry_at;
	int r;

again:;
	int64_t paused = atomic_load_explicit(&q->paused_until, memory_order_relaxed);
	int64_t t = paused > now ? paused : now;
	uint32_t day = 0, month = 0;
	if (bday || bmonth) {
		qc_periods(c, now, &day, &month);
		if ((bday && qs_spend_in(atomic_load_explicit(&q->spend_day, memory_order_relaxed), day) + spend > bday) ||
		    (bmonth && qs_spend_in(atomic_load_explicit(&q->spend_month, memory_order_relaxed), month) + spend > bmonth)) {
			r = -EDQUOT;
			reason = QUOTA_REJECT_SPEND;
			goto refuse;
		}
	}

	/* Decide: the common admission time over all limits, reading only. */
	int64_t tat[QS_RATE_KINDS];
	uint64_t done0[QS_RATE_KINDS];
	int64_t a = t;
	reason = QUOTA_REJECT_PAUSED;
	for (uint32_t k = 0; k < n; k++) {
		/* acquire: pairs with the release in qg_refund(); a refund counted
		 * as done here is already in the TAT we read next. */
		done0[k] = atomic_load_explicit(&q->refund_done[k], memory_order_acquire);
		tat[k] = atomic_load_explicit(qs_tat(q, k), memory_order_relaxed);
		int64_t need = tat[k] + (int64_t)inc[k] - tau[k];
		if (need > a) {
			a = need;
			reason = kind[k];
		}
	}
	if (maxif) {
		uint64_t w = atomic_load_explicit(&q->inflight, memory_order_relaxed);
		if (QS_INFLIGHT_COUNT(w) + req > maxif) {
			if (!c->manual && now < deadline && a <= deadline) {
				inflight_wait(c, q, req, maxif, deadline);
				now = qc_clock(c);
				goto again;
			}
			r = -EAGAIN;
			reason = QUOTA_REJECT_INFLIGHT;
			retry_at = a > now ? a : now + 1000000; /* frees when a call ends */
			goto refuse;
		}
	}
	if (a > deadline) {
		r = -EAGAIN;
		retry_at = a;
		goto refuse;
	}

	/* Take: in-flight, spend, then a slot per rate limit. */
	if (maxif && !inflight_take(c, q, row, (uint32_t)id, (uint32_t)req, maxif)) {
		now = qc_clock(c);
		goto again;
	}
	if (bday || bmonth) {
		bool ok = spend_take(&q->spend_day, day, bday, spend);
		if (ok && !spend_take(&q->spend_month, month, bmonth, spend)) {
			qc_spend_adjust(&q->spend_day, day, day, -(int64_t)spend);
			ok = false;
		}
		if (!ok) {
			if (maxif)
				qc_inflight_release(c, q, row, (uint32_t)id, (uint32_t)req);
			r = -EDQUOT;
			reason = QUOTA_REJECT_SPEND;
			goto refuse;
		}
	}
	/* A reservation that waits places each slot at least tau/8 after its
	 * admission time (within its window [a, a + tau]), so that refunds made
	 * while it sleeps have room to move it (see gcra.c) instead of making it
	 * requeue. Not later: a limit that does not bind keeps 7/8 of its burst
	 * to absorb the mix of costs, instead of pacing every request. */
	bool waits = a > now;
	uint32_t k;
	for (k = 0; k < n; k++) {
		_Atomic int64_t *w = qs_tat(q, k);
		int64_t cur = tat[k];
		int64_t room = tau[k] - (int64_t)inc[k];
		int64_t lo = waits ? a + (room < tau[k] / QC_WAIT_SLACK_DIV ?
					  room : tau[k] / QC_WAIT_SLACK_DIV) : a;
		bool later = false;
		for (;;) {
			int64_t e = (cur > lo ? cur : lo) + (int64_t)inc[k];
			/* relaxed: what the slot is worth was decided from values
			 * this CAS validates; the order against the cfg_seq
			 * re-check below comes from the fence there. */
			if (atomic_compare_exchange_weak_explicit(w, &cur, e, memory_order_relaxed,
								  memory_order_relaxed)) {
				tk.lim[k] = (struct qt_limit){ .end = e, .inc = inc[k], .done0 = done0[k],
							       .kind = kind[k] };
				break;
			}
			c->cas_retries++;
			if (cur + (int64_t)inc[k] - tau[k] > a) {
				later = true;
				break;
			}
		}
		if (later)
			break;
	}
	/* A reload that rewrote the config after our snapshot but before our
	 * slots were taken: they were sized by the old limits. Give them back
	 * and reserve again under the new ones. */
	bool reloaded = false;
	if (k == n) {
		/* The slots taken before the re-check. On x86 a locked CAS is
		 * already a full barrier, so only the compiler must be held back
		 * (a seq_cst CAS there cost 20 % of reserve's throughput); other
		 * architectures get the fence C11 asks for. */
#if defined(__x86_64__) || defined(__i386__)
		atomic_signal_fence(memory_order_seq_cst);
#else
		atomic_thread_fence(memory_order_seq_cst);
#endif
		reloaded = atomic_load_explicit(&q->cfg_seq, memory_order_relaxed) != seq;
	}
	if (k < n || reloaded) {
		/* A limit moved past our admission time: give back, start over. */
		for (uint32_t j = 0; j < k; j++)
			qg_refund(c, q, (uint32_t)id, j, &tk.lim[j], tk.lim[j].inc);
		if (bday || bmonth) {
			qc_spend_adjust(&q->spend_day, day, day, -(int64_t)spend);
			qc_spend_adjust(&q->spend_month, month, month, -(int64_t)spend);
		}
		if (maxif)
			qc_inflight_release(c, q, row, (uint32_t)id, (uint32_t)req);
		now = qc_clock(c);
		if (reloaded)
			return quota_reserve(c, id, cost, deadline > now ? deadline - now : 0, ret);
		goto again;
	}

	tk.magic = QT_OPEN;
	tk.serial = ++c->serial;
	tk.owner = (uint64_t)(uintptr_t)c ^ tk.serial;
	tk.quota = (uint32_t)id;
	tk.row1 = row ? c->row_of[id] : 0;
	tk.nlimits = n;
	tk.held = maxif ? (uint32_t)req : 0;
	tk.admitted_at = a;
	tk.requests = req;
	tk.input_tokens = in;
	tk.output_tokens = out;
	tk.spend_nusd = spend;
	tk.day = day;
	tk.month = month;
	/* Counted now so that a requeue below (which cancels) undoes it. */
	if (row) {
		row_add(&row->admitted, 1);
		row_add(&row->in_tokens, in);
		row_add(&row->out_tokens, out);
	} else {
		atomic_fetch_add_explicit(&q->st_admitted, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&q->st_in_tokens, in, memory_order_relaxed);
		atomic_fetch_add_explicit(&q->st_out_tokens, out, memory_order_relaxed);
	}

	if (a > now) {
		sleep_until(c, a);
		now = qc_clock(c);
		int64_t p = atomic_load_explicit(&q->paused_until, memory_order_relaxed);
		if (!waiter_still_valid(q, &tk) || p > a) {
			/* Our slot may have moved before our admission time, or the
			 * provider asked the host to pause: requeue. */
			settle(c, q, &tk, NULL);
			goto again;
		}
	}
	ret->waited_ns = now - start;
	ret->retry_after_ns = 0;
	/* Only the limits in use: the rest of the ticket is never read. */
	memcpy(ret->private_, &tk, offsetof(struct qt_priv, lim) + n * sizeof(tk.lim[0]));
	return 0;

refuse:
	qc_count_reject(c, q, (uint32_t)id, reason);
	if (r == -EAGAIN)
		ret->retry_after_ns = retry_at > now ? retry_at - now : 0;
	return r;

too_big:
	qc_count_reject(c, q, (uint32_t)id, QUOTA_REJECT_TOO_BIG);
	return -E2BIG;
}

static int settle_ticket(quota_client *c, struct quota_ticket *t, const struct quota_cost *actual)
{
	if (!c || !t)
		return -EINVAL;
	struct qt_priv *tk = qt_priv(t);
	if (tk->magic != QT_OPEN || tk->owner != ((uint64_t)(uintptr_t)c ^ tk->serial) ||
	    tk->nlimits > QS_RATE_KINDS || tk->row1 > QS_CLIENT_ROWS)
		return -EINVAL;
	if (actual && (actual->requests > QC_COST_MAX || actual->input_tokens > QC_COST_MAX ||
		       actual->output_tokens > QC_COST_MAX))
		return -EINVAL;
	if (c->fork_gen != qc_fork_gen)
		return -ECHILD;
	if (!c->cs)
		return -EPERM;
	struct qs_quota *q = qc_quota(c, (int)tk->quota);
	if (!q)
		return -EINVAL;
	tk->magic = QT_CLOSED;
	settle(c, q, tk, actual);
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

int quota_backoff(quota_client *c, int id, int64_t retry_after_ns)
{
	if (!c || retry_after_ns < 0 || retry_after_ns > QC_BACKOFF_MAX)
		return -EINVAL;
	struct qs_quota *q;
	int err = qc_writable_quota(c, id, &q);
	if (err < 0)
		return err;
	qg_atomic_max(&q->paused_until, qc_clock(c) + retry_after_ns);
	return 0;
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
