/* SPDX-License-Identifier: MIT */
/*
 * reclaim.c - give back what a dead client held (contract 5): quotad calls
 * this for a client slot whose process is gone. It lives in libquota, beside
 * the hot path whose protocol it mirrors, so that the layout is read in one
 * place; no worker ever calls it.
 *
 * WHAT A SLOT HOLDS. A client's in-flight slots are counted twice: in the
 * quota's shared in-flight word and in the client's own row (held). The hot
 * path moves the shared word first and the row second, and brackets the pair
 * with the slot's intent word (quota id + 1, amount). So for a dead client:
 *   - intent == 0: every row's held is exact; give each back.
 *   - intent != 0: the process died between the two; for that one quota its
 *     row cannot be trusted. The quota's count is then repaired by an AUDIT.
 *
 * THE AUDIT of quota Q sets Q's count to what the processes that can still
 * release it hold: the held of every LIVE slot's rows for Q, plus the held not
 * yet given back by RECLAIMING slots (except rows that are themselves in
 * doubt: those of a slot whose intent names Q, and journaled ones - they are
 * what is being repaired). It reads the in-flight word (w1),
 * requires that no LIVE client has an intent on Q pending, sums, reads the
 * word again (w2) and, if w1 == w2 (the 32-bit sequence in the high half
 * changes on every move, so an unchanged word means no take or release ran
 * during the scan), installs the sum with CAS(w1 -> sum, seq + 1). Why this
 * is exact: a client's change is intent store -> counter RMW (acq_rel) -> row
 * store -> intent clear (release). If its RMW is at or before w1, our acquire
 * of w1 makes its intent visible, so we see either the intent (busy: retry
 * later) or, through the release of the clear, its final row. If its RMW is
 * after w1, either w2 or our CAS sees it and we retry. A process that dies
 * with its intent set stays LIVE until quotad notices (pidfd), which makes
 * the audit wait; once it is RECLAIMING its held is excluded.
 *
 * RESTARTABLE. quotad may itself be killed mid-reclaim. Every give-back is
 * journaled in the dead client's row (the process can no longer write it):
 * held is marked with HELD_JOURNAL, the counter moved, held zeroed. A later
 * quotad that finds a marked row treats it like a client's ambiguous death:
 * audit that quota, then zero the row. So no slot is given back twice and
 * none is lost. Only the quota an ambiguity names waits for its audit; the
 * dead client's other rows are given back at once.
 *
 * NEVER NEGATIVE. A give-back larger than the count (which only a corrupt
 * segment can cause) is clamped at zero and counted as an anomaly.
 *
 * Tokens already charged stay charged: only in-flight is given back. The
 * row statistics are folded into the quota's st_* totals.
 */
#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define AUDIT_ATTEMPTS 64
#define HELD_JOURNAL (1u << 31) /* in a dead client's row: being given back */

static bool quota_id_ok(const struct qs_header *h, uint32_t id1)
{
	return id1 != 0 && id1 <= h->quota_capacity &&
	       id1 <= atomic_load_explicit(&h->quota_count, memory_order_acquire);
}

static void wake_waiters(struct qs_quota *q)
{
	/* seq_cst: either a waiter (inflight_wait()) sees our release, or we
	 * see its count here and wake it */
	if (atomic_load_explicit(&q->inflight_waiters, memory_order_seq_cst)) {
		atomic_fetch_add_explicit(&q->inflight_futex, 1, memory_order_release);
		syscall(SYS_futex, &q->inflight_futex, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
	}
}

/* Held of quota @id1 in slot @cs's rows, journaled ones excluded (whether
 * the counter still counts them is what an audit settles). */
static uint64_t slot_held(const struct qs_client *cs, uint32_t id1)
{
	uint64_t sum = 0;
	/* Rows are not cleared in order (quota_close), so scan them all. */
	for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++)
		if (atomic_load_explicit(&cs->rows[r].quota1, memory_order_relaxed) == id1) {
			uint32_t held = atomic_load_explicit(&cs->rows[r].held, memory_order_relaxed);
			if (!(held & HELD_JOURNAL))
				sum += held;
		}
	return sum;
}

/* The audit (see the top of the file): 0 done, -EAGAIN not quiet now. */
static int audit(void *base, uint32_t id1, uint32_t counts[3])
{
	struct qs_header *h = base;
	struct qs_quota *q = qs_quota_at(base, id1 - 1);
	for (int attempt = 0; attempt < AUDIT_ATTEMPTS; attempt++) {
		/* acquire: pairs with the clients' acq_rel counter RMWs */
		uint64_t w1 = atomic_load_explicit(&q->inflight, memory_order_acquire);
		uint64_t sum = 0;
		bool busy = false;
		for (uint32_t s = 0; s < h->client_capacity && !busy; s++) {
			struct qs_client *cs = qs_client_at(base, s);
			uint64_t st = QS_CLIENT_STATUS(atomic_load_explicit(&cs->state, memory_order_acquire));
			/* acquire: pairs with the release that clears an intent, so
			 * that the row it guarded is final when we read it */
			uint64_t it = atomic_load_explicit(&cs->intent, memory_order_acquire);
			if (st == QS_CLIENT_LIVE) {
				if (it && (uint32_t)it == id1)
					busy = true;
				else
					sum += slot_held(cs, id1);
			} else if (st == QS_CLIENT_RECLAIMING) {
				if (!it || (uint32_t)it != id1)
					sum += slot_held(cs, id1);
			}
		}
		if (busy)
			continue;
		/* acquire fence: the row loads above complete before w2 is read */
		atomic_thread_fence(memory_order_acquire);
		uint64_t w2 = atomic_load_explicit(&q->inflight, memory_order_relaxed);
		if (w1 != w2)
			continue;
		if (sum > UINT32_MAX)
			sum = UINT32_MAX;
		uint64_t next = (w1 & ~0xffffffffULL) + QS_INFLIGHT_SEQ1 + sum;
		/* acq_rel: ordered with the clients' RMWs like theirs are */
		if (atomic_compare_exchange_strong_explicit(&q->inflight, &w1, next, memory_order_acq_rel,
							    memory_order_relaxed)) {
			counts[1]++;
			if (QS_INFLIGHT_COUNT(w1) > sum) {
				counts[0] += QS_INFLIGHT_COUNT(w1) - (uint32_t)sum;
				atomic_fetch_add_explicit(&q->st_reclaimed, QS_INFLIGHT_COUNT(w1) - sum,
							  memory_order_relaxed);
				wake_waiters(q);
			}
			return 0;
		}
	}
	return -EAGAIN;
}

/* Give back one row's held, journaled in the row itself. */
static void give_back(void *base, struct qs_row *row, uint32_t id1, uint32_t counts[3])
{
	uint32_t held = atomic_load_explicit(&row->held, memory_order_relaxed);
	if (held == 0)
		return;
	struct qs_quota *q = qs_quota_at(base, id1 - 1);
	/* release: the journal mark is visible before the counter moves */
	atomic_store_explicit(&row->held, held | HELD_JOURNAL, memory_order_release);
	uint64_t w = atomic_load_explicit(&q->inflight, memory_order_relaxed), next;
	uint32_t n;
	do {
		n = QS_INFLIGHT_COUNT(w) < held ? QS_INFLIGHT_COUNT(w) : held;
		next = w - n + QS_INFLIGHT_SEQ1;
		/* acq_rel: like qc_inflight_release() */
	} while (!atomic_compare_exchange_weak_explicit(&q->inflight, &w, next, memory_order_acq_rel,
							memory_order_relaxed));
	/* release: pairs with the audit's acquire of the row's slot */
	atomic_store_explicit(&row->held, 0, memory_order_release);
	counts[0] += n;
	counts[2] += held - n;
	atomic_fetch_add_explicit(&q->st_reclaimed, n, memory_order_relaxed);
	wake_waiters(q);
}

static uint64_t take(_Atomic uint64_t *f)
{
	uint64_t v = atomic_load_explicit(f, memory_order_relaxed);
	atomic_store_explicit(f, 0, memory_order_relaxed);
	return v;
}

/* Fold a row's statistics into its quota's totals and free the row. A
 * quotad killed in between loses these counts rather than doubling them. */
static void fold_row(void *base, struct qs_row *row, uint32_t id1)
{
	struct qs_quota *q = qs_quota_at(base, id1 - 1);
	uint64_t adm = take(&row->admitted), in = take(&row->in_tokens), out = take(&row->out_tokens);
	uint64_t rej[QUOTA_REJECT_REASONS];
	for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
		rej[k] = take(&row->rejected[k]);
	atomic_store_explicit(&row->quota1, 0, memory_order_relaxed);
	atomic_fetch_add_explicit(&q->st_admitted, adm, memory_order_relaxed);
	atomic_fetch_add_explicit(&q->st_in_tokens, in, memory_order_relaxed);
	atomic_fetch_add_explicit(&q->st_out_tokens, out, memory_order_relaxed);
	for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
		atomic_fetch_add_explicit(&q->st_rejected[k], rej[k], memory_order_relaxed);
}

/*
 * Reclaim client slot @slot, whose process is dead, as quotad last saw it:
 * @word is its LIVE state word (moved to RECLAIMING here) or a RECLAIMING
 * word (resume). counts[0] += in-flight slots given back, counts[1] += audits
 * done, counts[2] += anomalies (give-backs clamped at zero). Returns 0 when
 * the slot is FREE again, -EAGAIN while an audit cannot run yet (the slot
 * stays RECLAIMING; call again with the RECLAIMING word), -ESTALE if the
 * slot is no longer in state @word (its owner closed it, or another quotad
 * reclaimed it), -EINVAL for a slot out of range.
 */
/*
 * THE REFUND AUDIT. A refund adds its amount to refund_begun[k] before its
 * TAT change and to refund_done[k] after, journalled in the slot's
 * refund_intent; begun - done is what refunds in progress may still move
 * (gcra.c). A refunder that died in between leaves that gap forever, and
 * every later ticket would count it as movement (waiters would requeue
 * needlessly). The audit closes it: with no LIVE client journalling a refund
 * on this limit and refund_begun unchanged across the scan, no refund is in
 * progress, so done may catch up with begun. A refund that starts after the
 * scan adds to both counters; one that also finished before we read done can
 * only make the catch-up smaller (a gap left: conservative, never too
 * small a count of movement).
 */
static int refund_audit(void *base, uint32_t id1, uint32_t k)
{
	struct qs_header *h = base;
	struct qs_quota *q = qs_quota_at(base, id1 - 1);
	uint64_t key = ((uint64_t)(k + 1) << 32) | id1;
	for (int attempt = 0; attempt < AUDIT_ATTEMPTS; attempt++) {
		/* seq_cst: pairs with the refunder's seq_cst increment, which is
		 * also the release of its journal entry */
		uint64_t b1 = atomic_load(&q->refund_begun[k]);
		bool busy = false;
		for (uint32_t s = 0; s < h->client_capacity && !busy; s++) {
			const struct qs_client *cs = qs_client_at(base, s);
			if (QS_CLIENT_STATUS(atomic_load_explicit(&cs->state, memory_order_acquire)) ==
				    QS_CLIENT_LIVE &&
			    atomic_load_explicit(&cs->refund_intent, memory_order_acquire) == key)
				busy = true;
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

int qc_reclaim_slot(void *base, uint32_t slot, uint64_t word, uint32_t counts[3])
{
	struct qs_header *h = base;
	if (slot >= h->client_capacity)
		return -EINVAL;
	struct qs_client *cs = qs_client_at(base, slot);
	uint64_t reclaiming = (word & ~0xffULL) | QS_CLIENT_RECLAIMING;
	if (QS_CLIENT_STATUS(word) == QS_CLIENT_LIVE) {
		/* acquire: the dead owner's writes to its slot are visible */
		if (!atomic_compare_exchange_strong_explicit(&cs->state, &word, reclaiming,
							     memory_order_acquire, memory_order_relaxed))
			return -ESTALE;
	} else if (QS_CLIENT_STATUS(word) != QS_CLIENT_RECLAIMING ||
		   atomic_load_explicit(&cs->state, memory_order_acquire) != word) {
		return -ESTALE;
	}

	/* 1. An intent left by the client: repair that quota's count. Until
	 * that is possible its rows stay as they are (excluded by audits). */
	bool pending = false;
	uint64_t it = atomic_load_explicit(&cs->intent, memory_order_acquire);
	uint32_t amb = (uint32_t)it;
	if (it && quota_id_ok(h, amb) && audit(base, amb, counts) < 0) {
		pending = true;
	} else if (it) {
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++)
			if (atomic_load_explicit(&cs->rows[r].quota1, memory_order_relaxed) == amb)
				atomic_store_explicit(&cs->rows[r].held, 0, memory_order_relaxed);
		/* release: the zeroed rows are visible before the intent goes */
		atomic_store_explicit(&cs->intent, 0, memory_order_release);
	}

	/* 1b. A refund it was in the middle of: close the gap it left. */
	uint64_t ri = atomic_load_explicit(&cs->refund_intent, memory_order_acquire);
	if (ri) {
		uint32_t rid1 = (uint32_t)ri, rk = (uint32_t)(ri >> 32) - 1;
		if (quota_id_ok(h, rid1) && rk < QS_RATE_KINDS && refund_audit(base, rid1, rk) < 0)
			pending = true;
		else
			atomic_store_explicit(&cs->refund_intent, 0, memory_order_release);
	}

	/* 2. Every other row: exact, or journaled by a quotad that died while
	 * giving it back (then audited). */
	for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++) {
		struct qs_row *row = &cs->rows[r];
		uint32_t id1 = atomic_load_explicit(&row->quota1, memory_order_relaxed);
		if (id1 == 0 || (pending && id1 == amb))
			continue;
		if (!quota_id_ok(h, id1)) {
			/* Corrupt: nothing to give back to. */
			atomic_store_explicit(&row->held, 0, memory_order_relaxed);
			atomic_store_explicit(&row->quota1, 0, memory_order_relaxed);
			continue;
		}
		if (atomic_load_explicit(&row->held, memory_order_relaxed) & HELD_JOURNAL) {
			if (audit(base, id1, counts) < 0) {
				pending = true;
				continue;
			}
			atomic_store_explicit(&row->held, 0, memory_order_relaxed);
		}
		give_back(base, row, id1, counts);
		fold_row(base, row, id1);
	}
	if (pending)
		return -EAGAIN;

	/* 3. Free the slot, generation kept (the next claim bumps it). */
	uint64_t free_word = (reclaiming & ~0xffULL) | QS_CLIENT_FREE;
	/* release: everything above happens before the slot can be claimed
	 * (pairs with the claimer's acquire CAS) */
	atomic_store_explicit(&cs->state, free_word, memory_order_release);
	return 0;
}
