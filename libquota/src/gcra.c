/* SPDX-License-Identifier: MIT */
/*
 * gcra.c - the limit arithmetic: GCRA (generic cell rate algorithm) on a
 * nanosecond time line per limit, with refunds that provably never let the
 * admitted rate exceed the limit.
 *
 * THE ALGORITHM. A limit of L units per period P (ns) with capacity
 * b = ceil(L * burst) units charges each unit T' ns, where T' = P/L, or
 * ceil(P/L) when P/L >= 2^16 ns (see CAPACITY). Its tolerance is
 * tau = inc(b). Its state is one word, TAT, the theoretical arrival time. A
 * cost of c units takes the slot [s, e) with s = max(TAT, t),
 * e = s + inc(c), inc(c) = ceil(c*T'), and is admitted at a = max(t, e - tau):
 * at once if e - tau <= t, else after a wait. Reserving moves TAT to e with
 * one compare-and-swap; a refusal writes nothing. Several limits of one quota
 * share the admission time a = max(t, max_k(TAT_k + inc_k - tau_k)) and take
 * slots s_k = max(TAT_k, a), so e_k - tau_k <= a <= s_k on every limit
 * (reserve.c).
 *
 * INVARIANT. The slots of the admitted reservations of a limit are disjoint,
 * each as long as its cost (inc(c) >= c*T' >= c*P/L), and each lies in
 * [a, a + tau] of its own admission time a.
 *
 * BOUND. Time is integer nanoseconds; a window of length W is the W
 * instants [t1, t1 + W). The reservations admitted in it have admission
 * times a <= t1 + W - 1, so their slots lie inside [t1, t1 + W - 1 + tau],
 * disjoint: sum(c) * T' <= sum(inc) <= W - 1 + tau. With tau = inc(b) =
 * ceil(b*T') < b*T' + 1: sum(c) * T' < W + b*T', so sum(c) < W/T' + b, and
 * as T' >= P/L, sum(c) < r*W + b with r = L/P: the admitted cost never
 * exceeds r*W + b, exactly, in integers.
 *
 * CAPACITY. Every limit admits exactly b = ceil(L * burst) units at one
 * instant from a full bucket, in one reservation or in unit steps: a cost c
 * fits iff inc(c) <= inc(b), i.e. c <= b. For unit steps, n steps take
 * n * inc(1) = n * ceil(T'), which is <= inc(b) for every n <= b only if T'
 * is a whole number of ns; so T' is rounded up to a whole number when
 * P/L >= 2^16 ns (limits up to ~915k per minute or ~1.3G per day: every
 * request limit and most token limits), which lowers the rate by less than
 * 2^-16 (1.5e-5). Higher-rate limits keep the exact fractional T', and a
 * burst of unit steps on them may stop up to b * (1 - T/ceil(T)) units
 * short (never above b).
 *
 * REFUNDS (commit with usage below the estimate, cancel, rollback of a
 * partial reservation). Giving back d ns lowers TAT by d, which moves every
 * slot taken after ours d earlier. That keeps the invariant if (1) every such
 * slot still starts at or after its admission time and (2) our own slot keeps
 * at least its new length. For a slot admitted by now, (1) holds if the later
 * slots start at or after now: d <= e_ours - now, with e_ours our slot's end
 * as it stands today. Earlier refunds may have moved our slot; a refund
 * counts what it gives in refund_begun before and in refund_done after its
 * CAS, so refund_begun(now) - refund_done(read before our reserve CAS) bounds
 * how far our slot can have moved, and e_ours is estimated low by that much.
 * A reservation that waits (a in the future) places each of its slots at
 * s = max(TAT, a + min(tau - inc, tau/8)), still inside [a, a + tau], so it
 * has slack s - a of up to tau/8; the waiter checks on waking that the
 * refunds begun meanwhile cannot have moved it by more, and otherwise gives
 * its slot back and queues again (reserve.c) - in practice only if an eighth
 * of a period's worth of refunds happened during its wait. So the bound
 * above holds with refunds, and a refund is lost only when the budget it
 * would return has already flowed away (our slot is in the past: the
 * provider has also counted that time).
 *
 * THE LAST SLOT (the refund's fast path, no clock, no counter). If no refund
 * has begun since our reserve read refund_done (refund_begun == done0, so
 * every refund ever begun had finished before that read and is already in
 * the TAT our reserve CAS replaced: our slot has not moved), and the TAT
 * still equals our slot's end, then no non-empty slot lies after ours:
 * every slot taken later ends after ours, so it would hold the TAT above
 * our end, unless it was given back whole. Lowering the TAT from our end by
 * d <= inc then only shortens our own slot to its new length (invariant
 * (2)) and moves no other slot (invariant (1) untouched), whatever the time;
 * one CAS does it, and since it moves nobody it is not counted in
 * refund_begun. The CAS compares the whole word, so a TAT that left our end
 * and came back (an earlier refund moved our slot, then a later slot
 * appended exactly to our old end) is excluded by the first condition: that
 * earlier refund is in refund_begun.
 *
 * LANES (reserve.c) decide with a stricter tolerance tau_l = tau -
 * charge(ceil(b * kept)) <= tau for a lane below which `kept` of the
 * capacity stays free: a slot with e - tau_l <= a <= s lies in
 * [a, a + tau_l], inside [a, a + tau], so the invariant and the bound hold
 * unchanged, over all lanes together. EXTENSIONS are reservations of their
 * own (same invariant); a ticket then refunds only from its last slot,
 * at most that slot's length: the refund argument above, for that slot.
 * docs/ARCHITECTURE.md has both proofs in full.
 *
 * DEBT (usage above the estimate) appends inc(extra) at max(TAT, now): it may
 * push TAT beyond now + tau; later reservations then wait until it is paid.
 *
 * EXACT CHARGE WITHOUT DIVISION. T' = t_int + m/L with m = P mod L (m = 0
 * when T' is rounded to whole ns). With t_frac = ceil(m * 2^64 / L) and
 * p = c * t_frac = hi*2^64 + lo: ceil(c*m/L) = hi + (lo >= c), provided
 * c*L <= 2^64 (fast_cmax). If c*m/L is an integer k, p/2^64 lies in
 * [k, k + c/2^64): hi = k and lo < c. If not, its fractional part is at
 * least 1/L, so lo >= 2^64/L >= c and the error c/2^64 <= 1/L cannot carry
 * into hi. Larger costs use a 128-bit division (rare: only costs above
 * 2^64 / L).
 *
 * GARBAGE. Every shared word read here may have been scribbled over: TATs
 * are clamped (qg_tat_clamp) before arithmetic, counters are used through
 * saturating differences, and nothing divides by a value read from shared
 * memory.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>

#include "gcra.h"
#include "internal.h"

#define QG_SATURATE (INT64_MAX / 4)
/* The largest TAT debt can push a limit to. */
#define QG_TAT_MAX (INT64_MAX / 2)
/* T at or above this many ns is rounded up to whole ns (see CAPACITY). */
#define QG_WHOLE_T_MIN 65536u

int qg_limit_init(struct qs_limit_cfg *l, uint32_t kind, uint64_t limit, int64_t period_ns,
		  uint32_t burst_ppm)
{
	if (limit == 0 || period_ns <= 0 || burst_ppm == 0 || burst_ppm > 1000000 || kind >= QS_KINDS)
		return -EINVAL;
	/* Keep every product within the fast path's and the TAT's range. */
	if (limit > (1ULL << 40) || (uint64_t)period_ns > (1ULL << 50))
		return -ERANGE;
	uint64_t P = (uint64_t)period_ns;
	*l = (struct qs_limit_cfg){ .limit = limit, .period_ns = period_ns, .kind = kind,
				    .burst_ppm = burst_ppm };
	l->t_int = P / limit;
	uint64_t m = P % limit;
	if (m && l->t_int >= QG_WHOLE_T_MIN) {
		l->t_int++; /* T' = ceil(P/L): unit bursts exact (see CAPACITY) */
		m = 0;
	}
	l->t_frac = m ? (uint64_t)((((unsigned __int128)m << 64) + limit - 1) / limit) : 0;
	l->fast_cmax = UINT64_MAX / limit;

	/* capacity = ceil(limit * burst), in integers, at least 1. */
	unsigned __int128 cap = ((unsigned __int128)limit * burst_ppm + 999999) / 1000000;
	if (cap == 0)
		cap = 1;
	l->capacity = (uint64_t)cap;
	uint64_t tau = qg_charge(l, l->capacity);
	if (tau == 0 || tau > (uint64_t)INT64_MAX / 8)
		return -ERANGE;
	l->tau_ns = (int64_t)tau;
	return 0;
}

uint64_t qg_charge_slow(const struct qs_limit_cfg *l, uint64_t units)
{
	unsigned __int128 q;
	if (l->t_frac == 0) /* T' is whole: units * T' */
		q = (unsigned __int128)units * l->t_int;
	else if (l->limit == 0) /* never divide by a value that was not checked */
		return (uint64_t)QG_SATURATE;
	else
		q = ((unsigned __int128)units * (uint64_t)l->period_ns + l->limit - 1) / l->limit;
	return q > QG_SATURATE ? (uint64_t)QG_SATURATE : (uint64_t)q;
}

uint64_t qg_available(const struct qs_limit_cfg *l, int64_t tat, int64_t now)
{
	int64_t backlog = tat > now ? tat - now : 0;
	if (backlog >= l->tau_ns)
		return 0;
	uint64_t room = (uint64_t)(l->tau_ns - backlog);
	if (l->period_ns <= 0)
		return 0;
	/* Largest c with charge(c) <= room: start from floor(room / T). */
	uint64_t c = (uint64_t)(((unsigned __int128)room * l->limit) / (uint64_t)l->period_ns);
	if (c > l->capacity)
		c = l->capacity;
	while (c > 0 && qg_charge(l, c) > room)
		c--;
	return c;
}

void qg_atomic_max(_Atomic int64_t *w, int64_t v)
{
	int64_t cur = atomic_load_explicit(w, memory_order_relaxed);
	while (cur < v &&
	       !atomic_compare_exchange_weak_explicit(w, &cur, v, memory_order_relaxed,
						      memory_order_relaxed))
		;
}

uint64_t qg_refund(const struct qc_thread *t, struct qs_quota *q, uint32_t id,
		   const struct qt_limit *tl, uint64_t delta)
{
	if (delta == 0)
		return 0;
	uint32_t k = tl->kind & (QS_KINDS - 1);
	_Atomic int64_t *tat = qs_tat(q, k);
	/* The last slot (see the top): shortened in place. */
	if (qg_refund_last(q, k, tl->end, tl->done0, delta))
		return delta;
	int64_t end;
	/* A slot that has ended cannot move anything (slots only ever move
	 * earlier): nothing to give back, nothing for others to account for.
	 * This is most commits - a call outlasts its slot - and it spares them
	 * two contended read-modify-writes. */
	if (tl->end <= qc_clock(t->c))
		return 0;
	/* Journal the refund in our slot first: if we die before refund_done,
	 * quotad audits this limit (reclaim.c). The seq_cst RMW below is a
	 * release: the journal is visible before the counter moves. */
	atomic_store_explicit(&t->cs->refund_intent, ((uint64_t)(k + 1) << 32) | (id + 1),
			      memory_order_relaxed);
	/* seq_cst: a waiter's check (reserve.c) that reads refund_begun without
	 * this increment is ordered before our clock read below. */
	atomic_fetch_add(&q->refund_begun[k], delta);
	/* acquire: a refund whose TAT change we see has its refund_begun
	 * increment (made before its release CAS) visible to our load below. */
	int64_t cur = atomic_load_explicit(tat, memory_order_acquire);
	/* The clock after the TAT: a reservation that moved the TAT meanwhile
	 * is judged as of a time no earlier than its own (see gcra.c). */
	int64_t now = qc_clock(t->c);
	uint64_t given = 0;
	for (;;) {
		/* Refunds begun since our reserve, ours excluded: the most that
		 * slots before ours can have moved it. Read after the TAT we will
		 * CAS on, so that a refund applied before that value is counted. */
		uint64_t moved = atomic_load(&q->refund_begun[k]) - tl->done0 - delta;
		end = tl->end - (moved > (uint64_t)QG_SATURATE ? QG_SATURATE : (int64_t)moved);
		if (end <= now) {
			given = 0;
			break;
		}
		given = (uint64_t)(end - now) < delta ? (uint64_t)(end - now) : delta;
		/* A TAT below the part we give back is garbage (our slot is in
		 * it): give nothing rather than wrap. */
		if (cur < INT64_MIN / 4 + (int64_t)given) {
			given = 0;
			break;
		}
		/* release on success: our refund_begun increment is visible to
		 * whoever sees this TAT; acquire on failure, as for the load. */
		if (atomic_compare_exchange_weak_explicit(tat, &cur, cur - (int64_t)given,
							  memory_order_release,
							  memory_order_acquire))
			break;
		now = qc_clock(t->c); /* the TAT moved: decide again, as of now */
	}
	/* release: pairs with the acquire load in reserve; a reserve that sees
	 * this sees our TAT change. */
	atomic_fetch_add_explicit(&q->refund_done[k], delta, memory_order_release);
	/* release: refund_done is final before the journal entry goes */
	atomic_store_explicit(&t->cs->refund_intent, 0, memory_order_release);
	return given;
}

void qg_debt(struct qs_quota *q, uint32_t kind, uint64_t ns, int64_t now)
{
	if (ns == 0)
		return;
	_Atomic int64_t *tat = qs_tat(q, kind);
	int64_t cur = atomic_load_explicit(tat, memory_order_relaxed);
	int64_t next;
	do {
		/* Debt accumulates, but the TAT stays <= QG_TAT_MAX, so that every
		 * later TAT + charge (<= INT64_MAX / 4) fits an int64. */
		int64_t c = qg_tat_clamp(cur);
		int64_t base = c > now ? c : now;
		next = base >= QG_TAT_MAX ? base :
		       base + (int64_t)(ns < (uint64_t)(QG_TAT_MAX - base) ? ns : (uint64_t)(QG_TAT_MAX - base));
	} while (!atomic_compare_exchange_weak_explicit(tat, &cur, next, memory_order_relaxed,
							memory_order_relaxed));
}

void qg_tighten(struct qs_quota *q, int64_t now, const struct qs_limit_cfg *l, uint64_t remaining)
{
	if (remaining >= l->capacity)
		return;
	/* Available c is the largest with max(TAT, now) + charge(c) - tau <= now;
	 * TAT = now + tau - charge(remaining) leaves exactly `remaining`. */
	int64_t target = now + l->tau_ns - (int64_t)qg_charge(l, remaining);
	qg_atomic_max(qs_tat(q, l->kind), target);
}
