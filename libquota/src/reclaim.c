/* SPDX-License-Identifier: MIT */
/*
 * reclaim.c - give back what a dead process held (contract 5), and repair
 * in-flight counts that drifted. quotad calls this; it lives in libquota,
 * beside the hot path whose protocol it mirrors, so that the layout is read
 * in one place. No worker ever calls it.
 *
 * WHAT A PROCESS HOLDS. A process has one client slot per thread that used
 * a handle (client.c). Its in-flight slots are counted twice: in the quota's
 * shared in-flight word and in its threads' rows (held, signed: a thread
 * that settles another thread's ticket releases through its own row). Only
 * the sum over the process's slots is meaningful, so a dead process is
 * reclaimed as a GROUP: every slot with its pid and start time. The hot path
 * moves the shared word first and the row second, and brackets the pair
 * with the slot's intent word (quota id + 1, amount). So for a dead group:
 *   - no intent names quota Q: the group's rows for Q are exact; their sum
 *     is given back.
 *   - an intent names Q: the process died between the two; its rows for Q
 *     cannot be trusted, and Q's count is repaired by an AUDIT.
 *
 * THE AUDIT of quota Q sets Q's count to what the processes that can still
 * release it hold: the held of every LIVE slot's rows for Q, plus the held
 * not yet given back by RECLAIMING slots, except the rows of processes in
 * doubt about Q (an intent naming Q, or a journalled row for Q). It reads
 * the in-flight word (w1), requires that no LIVE slot has an intent on Q
 * pending, sums, reads the word again (w2) and, if w1 == w2 (the 32-bit
 * sequence in the high half changes on every move, so an unchanged word
 * means no take or release ran during the scan), installs the sum with
 * CAS(w1 -> sum, seq + 1). Why this is exact: a client's change is intent
 * store -> counter RMW -> row store -> intent clear (release). If its RMW is
 * at or before w1, our acquire of w1 makes its intent visible, so we see
 * either the intent (busy: retry later) or, through the release of the
 * clear, its final row. If its RMW is after w1, either w2 or our CAS sees it
 * and we retry. A process that dies with its intent set stays LIVE until
 * quotad notices (pidfd), which makes the audit wait; once it is RECLAIMING
 * its rows for Q are excluded.
 *
 * RESTARTABLE. quotad may itself be killed mid-reclaim. Every give-back is
 * journalled in the dead slot's row (the process can no longer write it):
 * journal = the amount, the counter moved, held and journal zeroed. A later
 * quotad that finds a journalled row treats it as a doubt: audit that quota.
 * So nothing is given back twice and nothing is lost. Rows with a negative
 * held are given back (re-added) before the positive ones, so that the count
 * only ever errs high (conservative) while a group is half done.
 *
 * QUOTAD'S HOLD. On a global max_inflight quotad holds slots of the count
 * itself (inflight_hold, qc_inflight_hold_set()): the audit adds them to
 * the sum. Only quotad writes the hold and only quotad audits, so the two
 * never race. While the count moves the field holds the smaller of the old
 * and new hold (stored after the count is raised, before it is lowered), so
 * a quotad killed in between leaves count - hold overstating what workers
 * hold and the workers' cap at the lower of the two: both err safe.
 *
 * DRIFT. A count can also drift with every process alive (a ticket settled
 * by a thread that had no row free, a scribbled word): qc_audit_all() runs
 * the audit on every quota, counts what it corrects and records it per
 * quota (st_repaired).
 *
 * NEVER NEGATIVE. A give-back larger than the count (which only a corrupt
 * segment can cause) is clamped at zero and counted as an anomaly.
 *
 * Tokens already charged stay charged: only in-flight is given back. The
 * row statistics are folded into the quota's st_* totals.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

#define AUDIT_ATTEMPTS 64

static uint32_t intent_quota1(uint64_t it)
{
	return (uint32_t)it;
}

static bool id1_ok(const struct qs_geom *g, uint32_t id1)
{
	return id1 != 0 && id1 <= qs_quota_count(g);
}

/* Is slot @cs in doubt about quota @id1 (intent, or a journalled row)? */
static bool slot_doubts(const struct qs_client *cs, uint32_t id1)
{
	/* acquire: pairs with the release that clears an intent */
	if (intent_quota1(atomic_load_explicit(&cs->intent, memory_order_acquire)) == id1)
		return true;
	for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++)
		if (atomic_load_explicit(&cs->rows[r].quota1, memory_order_relaxed) == id1 &&
		    atomic_load_explicit(&cs->rows[r].journal, memory_order_relaxed))
			return true;
	return false;
}

/* Signed held of quota @id1 in slot @cs's rows. */
static int64_t slot_held(const struct qs_client *cs, uint32_t id1)
{
	int64_t sum = 0;
	/* Rows are not cleared in order (quota_close), so scan them all. */
	for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++)
		if (atomic_load_explicit(&cs->rows[r].quota1, memory_order_relaxed) == id1)
			sum += atomic_load_explicit(&cs->rows[r].held, memory_order_relaxed);
	return sum;
}

/* Install @sum as quota @q's count if the word is still @w1. */
static bool install(struct qs_quota *q, uint64_t w1, int64_t sum, struct qc_reclaim_counts *counts)
{
	uint64_t n = sum < 0 ? 0 : sum > UINT32_MAX ? UINT32_MAX : (uint64_t)sum;
	uint64_t next = (w1 & ~0xffffffffULL) + QS_INFLIGHT_SEQ1 + n;
	/* acq_rel: ordered with the clients' RMWs like theirs are */
	if (!atomic_compare_exchange_strong_explicit(&q->inflight, &w1, next, memory_order_acq_rel,
						     memory_order_relaxed))
		return false;
	uint32_t was = QS_INFLIGHT_COUNT(w1);
	counts->audits++;
	if (was != n) {
		uint32_t diff = was > n ? was - (uint32_t)n : (uint32_t)n - was;
		counts->repaired += diff;
		atomic_fetch_add_explicit(&q->st_repaired, diff, memory_order_relaxed);
		if (was > n)
			qc_inflight_wake(q);
	}
	return true;
}

/* The audit of quota @id1 (see the top): 0 done, -EAGAIN not quiet now. */
static int audit(const struct qs_geom *g, uint32_t id1, struct qc_reclaim_counts *counts)
{
	struct qs_quota *q = qs_quota_at(g, id1 - 1);
	for (int attempt = 0; attempt < AUDIT_ATTEMPTS; attempt++) {
		/* acquire: pairs with the clients' acq_rel counter RMWs */
		uint64_t w1 = atomic_load_explicit(&q->inflight, memory_order_acquire);
		int64_t sum = 0;
		bool busy = false;
		for (uint32_t s = 0; s < g->client_capacity && !busy; s++) {
			const struct qs_client *cs = qs_client_at(g, s);
			uint64_t w = atomic_load_explicit(&cs->state, memory_order_acquire);
			if (QS_CLIENT_STATUS(w) == QS_CLIENT_LIVE) {
				if (intent_quota1(atomic_load_explicit(&cs->intent, memory_order_acquire)) == id1)
					busy = true;
				else
					sum += slot_held(cs, id1);
			} else if (QS_CLIENT_STATUS(w) == QS_CLIENT_RECLAIMING) {
				/* A dead process's rows count unless that process is
				 * in doubt about this quota (any of its slots). */
				bool doubt = false;
				for (uint32_t o = 0; o < g->client_capacity && !doubt; o++) {
					const struct qs_client *os = qs_client_at(g, o);
					uint64_t ow = atomic_load_explicit(&os->state, memory_order_acquire);
					doubt = QS_CLIENT_STATUS(ow) == QS_CLIENT_RECLAIMING &&
						QS_CLIENT_PID(ow) == QS_CLIENT_PID(w) && slot_doubts(os, id1);
				}
				if (!doubt)
					sum += slot_held(cs, id1);
			}
		}
		if (busy)
			continue;
		sum += (int64_t)atomic_load_explicit(&q->inflight_hold, memory_order_relaxed);
		/* acquire fence: the row loads above complete before w2 is read */
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&q->inflight, memory_order_relaxed) != w1)
			continue;
		if (install(q, w1, sum, counts))
			return 0;
	}
	return -EAGAIN;
}

/* Give back one row's held (negative: take it back), journalled. */
static void give_back(const struct qs_geom *g, struct qs_row *row, uint32_t id1,
		      struct qc_reclaim_counts *counts)
{
	int32_t held = atomic_load_explicit(&row->held, memory_order_relaxed);
	if (held == 0)
		return;
	struct qs_quota *q = qs_quota_at(g, id1 - 1);
	/* release: the journal is visible before the counter moves */
	atomic_store_explicit(&row->journal, (uint32_t)held, memory_order_release);
	uint64_t w = atomic_load_explicit(&q->inflight, memory_order_relaxed), next;
	uint32_t n;
	do {
		uint32_t cnt = QS_INFLIGHT_COUNT(w);
		if (held > 0) {
			n = cnt < (uint32_t)held ? cnt : (uint32_t)held;
			next = w - n + QS_INFLIGHT_SEQ1;
		} else {
			n = (uint32_t)-held;
			n = n > UINT32_MAX - cnt ? UINT32_MAX - cnt : n;
			next = w + n + QS_INFLIGHT_SEQ1;
		}
		/* acq_rel: like qc_inflight_release() */
	} while (!atomic_compare_exchange_weak_explicit(&q->inflight, &w, next, memory_order_acq_rel,
							memory_order_relaxed));
	atomic_store_explicit(&row->held, 0, memory_order_relaxed);
	/* release: pairs with the audit's acquire of the slot */
	atomic_store_explicit(&row->journal, 0, memory_order_release);
	if (held > 0) {
		counts->given += n;
		counts->anomalies += (uint32_t)held - n;
		atomic_fetch_add_explicit(&q->st_reclaimed, n, memory_order_relaxed);
		qc_inflight_wake(q);
	}
}


/*
 * THE REFUND AUDIT. A refund adds its amount to refund_begun[k] before its
 * TAT change and to refund_done[k] after, journalled in the slot's
 * refund_intent; begun - done is what refunds in progress may still move
 * (gcra.c). A refunder that died in between leaves that gap forever, and
 * every later ticket would count it as movement (waiters would requeue
 * needlessly). The audit closes it: with no LIVE client journalling a refund
 * on this limit and refund_begun unchanged across the scan, no refund is in
 * progress, so done may catch up with begun.
 */
static int refund_audit(const struct qs_geom *g, uint32_t id1, uint32_t k)
{
	struct qs_quota *q = qs_quota_at(g, id1 - 1);
	uint64_t key = ((uint64_t)(k + 1) << 32) | id1;
	for (int attempt = 0; attempt < AUDIT_ATTEMPTS; attempt++) {
		/* seq_cst: pairs with the refunder's seq_cst increment, which is
		 * also the release of its journal entry */
		uint64_t b1 = atomic_load(&q->refund_begun[k]);
		bool busy = false;
		for (uint32_t s = 0; s < g->client_capacity && !busy; s++) {
			const struct qs_client *cs = qs_client_at(g, s);
			busy = QS_CLIENT_STATUS(atomic_load_explicit(&cs->state, memory_order_acquire)) ==
				       QS_CLIENT_LIVE &&
			       atomic_load_explicit(&cs->refund_intent, memory_order_acquire) == key;
		}
		uint64_t b2 = atomic_load(&q->refund_begun[k]);
		if (busy || b1 != b2)
			continue;
		uint64_t d = atomic_load_explicit(&q->refund_done[k], memory_order_acquire);
		if ((int64_t)(b1 - d) > 0)
			atomic_fetch_add_explicit(&q->refund_done[k], b1 - d, memory_order_release);
		return 0;
	}
	return -EAGAIN;
}

/* Step 1: the group's doubts (intents, journals, refunds in progress) are
 * audited; true if one must wait. Zeroes the rows an audit settled. */
static bool resolve_doubts(const struct qs_geom *g, const uint32_t *slots, uint32_t n,
			   struct qc_reclaim_counts *counts, uint32_t *doubt, uint32_t maxdoubt,
			   uint32_t *ndoubt)
{
	bool pending = false;
	*ndoubt = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct qs_client *cs = qs_client_at(g, slots[i]);
		uint64_t ri = atomic_load_explicit(&cs->refund_intent, memory_order_acquire);
		if (ri) {
			uint32_t rid1 = (uint32_t)ri, rk = (uint32_t)(ri >> 32) - 1;
			if (id1_ok(g, rid1) && rk < QS_KINDS && refund_audit(g, rid1, rk) < 0)
				pending = true;
			else
				atomic_store_explicit(&cs->refund_intent, 0, memory_order_release);
		}
		for (uint32_t r = 0; r <= QS_CLIENT_ROWS; r++) {
			uint32_t id1 = r == QS_CLIENT_ROWS ?
				intent_quota1(atomic_load_explicit(&cs->intent, memory_order_acquire)) :
				(atomic_load_explicit(&cs->rows[r].journal, memory_order_relaxed) ?
				 atomic_load_explicit(&cs->rows[r].quota1, memory_order_relaxed) : 0);
			if (!id1_ok(g, id1))
				continue;
			bool seen = false;
			for (uint32_t d = 0; d < *ndoubt && !seen; d++)
				seen = doubt[d] == id1;
			if (!seen && *ndoubt < maxdoubt)
				doubt[(*ndoubt)++] = id1;
		}
	}
	for (uint32_t d = 0; d < *ndoubt; d++) {
		if (audit(g, doubt[d], counts) < 0) {
			pending = true;
			continue;
		}
		for (uint32_t i = 0; i < n; i++) {
			struct qs_client *cs = qs_client_at(g, slots[i]);
			for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++)
				if (atomic_load_explicit(&cs->rows[r].quota1, memory_order_relaxed) == doubt[d]) {
					atomic_store_explicit(&cs->rows[r].held, 0, memory_order_relaxed);
					atomic_store_explicit(&cs->rows[r].journal, 0, memory_order_relaxed);
				}
			if (intent_quota1(atomic_load_explicit(&cs->intent, memory_order_relaxed)) == doubt[d])
				/* release: the zeroed rows are visible before the intent goes */
				atomic_store_explicit(&cs->intent, 0, memory_order_release);
		}
	}
	return pending;
}

/* Step 2: give back every row not in doubt, negative ones first. */
static void give_back_rows(const struct qs_geom *g, const uint32_t *slots, uint32_t n,
			   const uint32_t *doubt, uint32_t ndoubt, bool fold,
			   struct qc_reclaim_counts *counts)
{
	for (int pass = 0; pass < 2; pass++)
		for (uint32_t i = 0; i < n; i++) {
			struct qs_client *cs = qs_client_at(g, slots[i]);
			for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++) {
				struct qs_row *row = &cs->rows[r];
				uint32_t id1 = atomic_load_explicit(&row->quota1, memory_order_relaxed);
				if (id1 == 0)
					continue;
				if (!id1_ok(g, id1)) { /* corrupt: nothing to give back to */
					atomic_store_explicit(&row->held, 0, memory_order_relaxed);
					atomic_store_explicit(&row->quota1, 0, memory_order_relaxed);
					continue;
				}
				bool in_doubt = false;
				for (uint32_t d = 0; d < ndoubt && !in_doubt; d++)
					in_doubt = doubt[d] == id1;
				if (in_doubt)
					continue;
				int32_t held = atomic_load_explicit(&row->held, memory_order_relaxed);
				if ((pass == 0) == (held < 0))
					give_back(g, row, id1, counts);
				if (pass == 1 && fold)
					qc_row_fold(qs_quota_at(g, id1 - 1), row);
			}
		}
}

int qc_reclaim_group(const struct qs_geom *g, const uint32_t *slots, uint32_t n,
		     struct qc_reclaim_counts *counts)
{
	/* 0. Every slot of the group out of LIVE first, so that no audit
	 * counts part of a dead process as alive. CLAIMING slots hold
	 * nothing: freed at once. */
	uint32_t live[QS_MAX_CLIENTS];
	uint32_t nlive = 0;
	for (uint32_t i = 0; i < n && i < QS_MAX_CLIENTS; i++) {
		struct qs_client *cs = qs_client_at(g, slots[i]);
		if (!cs)
			return -EINVAL;
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_acquire);
		uint32_t st = QS_CLIENT_STATUS(w);
		uint64_t to = st == QS_CLIENT_CLAIMING ? QS_CLIENT_WORD(QS_CLIENT_GEN(w), 0, QS_CLIENT_FREE) :
			      (w & ~0xffULL) | QS_CLIENT_RECLAIMING;
		if (st == QS_CLIENT_LIVE || st == QS_CLIENT_CLAIMING) {
			/* acquire: the dead owner's writes to its slot are visible */
			if (!atomic_compare_exchange_strong_explicit(&cs->state, &w, to, memory_order_acquire,
								     memory_order_relaxed))
				continue; /* closed meanwhile: not ours */
			/* a lower-lane wait it left: the waiter behind goes on */
			qc_wait_end(g, cs);
			if (st == QS_CLIENT_LIVE)
				live[nlive++] = slots[i];
		} else if (st == QS_CLIENT_RECLAIMING) {
			live[nlive++] = slots[i];
		}
	}
	/* At most one doubt per row and intent of each slot. */
	uint32_t maxdoubt = nlive * (QS_CLIENT_ROWS + 1), ndoubt;
	uint32_t *doubt = malloc((maxdoubt ? maxdoubt : 1) * sizeof(*doubt));
	if (!doubt)
		return -EAGAIN; /* leaves every slot RECLAIMING: retried */
	bool pending = resolve_doubts(g, live, nlive, counts, doubt, maxdoubt, &ndoubt);
	give_back_rows(g, live, nlive, doubt, ndoubt, !pending, counts);
	free(doubt);
	if (pending)
		return -EAGAIN;
	for (uint32_t i = 0; i < nlive; i++) {
		struct qs_client *cs = qs_client_at(g, live[i]);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_relaxed);
		/* release: everything above happens before the slot can be
		 * claimed (pairs with the claimer's acquire CAS) */
		atomic_store_explicit(&cs->state, QS_CLIENT_WORD(QS_CLIENT_GEN(w), 0, QS_CLIENT_FREE),
				      memory_order_release);
	}
	return 0;
}

uint32_t qc_inflight_hold_set(struct qs_quota *q, uint64_t hold)
{
	uint64_t was = atomic_load_explicit(&q->inflight_hold, memory_order_relaxed);
	if (hold > UINT32_MAX / 2)
		hold = UINT32_MAX / 2;
	/* The field is the smaller of the old and new hold while the count
	 * moves, so count - field never understates what the workers hold. */
	if (hold < was)
		atomic_store_explicit(&q->inflight_hold, hold, memory_order_relaxed);
	uint64_t w = atomic_load_explicit(&q->inflight, memory_order_relaxed), next;
	uint32_t workers;
	do {
		uint32_t cnt = QS_INFLIGHT_COUNT(w);
		workers = cnt > was ? cnt - (uint32_t)was : 0;
		next = (w & ~0xffffffffULL) + QS_INFLIGHT_SEQ1 + workers + hold;
		/* acq_rel: like qc_inflight_release() (a lowering releases slots) */
	} while (!atomic_compare_exchange_weak_explicit(&q->inflight, &w, next, memory_order_acq_rel,
							memory_order_relaxed));
	if (hold > was)
		atomic_store_explicit(&q->inflight_hold, hold, memory_order_relaxed);
	else if (hold < was)
		qc_inflight_wake(q);
	return workers;
}

int qc_audit_some(const struct qs_geom *g, uint32_t *cursor, uint32_t max,
		  struct qc_reclaim_counts *counts)
{
	/* Reclamation first: a group in progress is its own audit's business. */
	for (uint32_t s = 0; s < g->client_capacity; s++)
		if (QS_CLIENT_STATUS(atomic_load_explicit(&qs_client_at(g, s)->state,
							  memory_order_relaxed)) == QS_CLIENT_RECLAIMING)
			return -EAGAIN;
	int busy = 0;
	uint32_t count = qs_quota_count(g);
	for (uint32_t i = 0; i < max && i < count; i++) {
		uint32_t id = (*cursor)++ % count;
		if (audit(g, id + 1, counts) < 0)
			busy = -EAGAIN;
	}
	return busy;
}
