/* SPDX-License-Identifier: MIT */
/*
 * gcra.h - the limit arithmetic (see gcra.c for the algorithm and its proof):
 * exact charges in nanoseconds, refunds, debt and provider tightening. The
 * charge is inline because reserve calls it once per limit.
 */
#ifndef QUOTA_GCRA_H
#define QUOTA_GCRA_H

#include <stdbool.h>
#include <stdint.h>

#include "layout.h"

struct quota_client;
struct qt_priv;
struct qc_thread;
struct qt_limit;

/* One rate limit's constants, derived from its source values (kind, limit,
 * burst) by qg_limit_init(): private memory only, never shared. */
struct qs_limit_cfg {
	uint64_t limit;     /* units per period */
	int64_t period_ns;  /* 60e9 or 86400e9 */
	uint64_t capacity;  /* ceil(limit * burst): largest cost admissible at once */
	int64_t tau_ns;     /* burst tolerance: charge(capacity) */
	uint64_t t_int;     /* ns per unit T', integer part (see gcra.c) */
	uint64_t t_frac;    /* ceil(frac(T') * 2^64); 0 when T' is whole */
	uint64_t fast_cmax; /* costs below this use the multiply-only path */
	uint32_t kind;      /* enum quota_limit_kind */
	uint32_t burst_ppm;
};

/* A kind's period: per day for the odd kinds, per minute for the even. */
static inline int64_t qg_period_of(uint32_t kind)
{
	return (kind & 1) ? 86400LL * 1000000000LL : 60LL * 1000000000LL;
}

/* Derive a limit's constants. @burst_ppm in (0, 1e6]. Returns 0, -EINVAL
 * for a zero or out-of-range value, -ERANGE if the numbers would overflow
 * the arithmetic. */
int qg_limit_init(struct qs_limit_cfg *l, uint32_t kind, uint64_t limit, int64_t period_ns,
		  uint32_t burst_ppm);

/* Exact ceil(units * period / limit) without a division for the costs the
 * fast path covers (units < fast_cmax), with a 128-bit division otherwise.
 * Saturates at INT64_MAX / 4 for absurd units (debt). */
uint64_t qg_charge_slow(const struct qs_limit_cfg *l, uint64_t units);

static inline uint64_t qg_charge(const struct qs_limit_cfg *l, uint64_t units)
{
	if (units == 0)
		return 0;
	if (units >= l->fast_cmax)
		return qg_charge_slow(l, units);
	/* units * t_int fits: units < 2^64 / limit and t_int <= period. Then
	 * units * t_frac / 2^64 = h + l/2^64; the fractional part is exactly
	 * zero iff lo < units (proof in gcra.c). */
	unsigned __int128 p = (unsigned __int128)units * l->t_frac;
	uint64_t hi = (uint64_t)(p >> 64), lo = (uint64_t)p;
	return units * l->t_int + hi + (lo >= units && l->t_frac != 0);
}

/* The tolerance of a priority lane below which @kept_ppm of the capacity is
 * kept for the lanes above it (reserve.c, LANES): tau - charge(ceil(b *
 * kept)), at most tau; 0 or less admits nothing. */
static inline int64_t qg_lane_tau(const struct qs_limit_cfg *l, uint32_t kept_ppm)
{
	uint64_t h = (uint64_t)(((unsigned __int128)l->capacity * kept_ppm + 999999) / 1000000);
	return l->tau_ns - (int64_t)qg_charge(l, h);
}

/* Units admissible now on a limit whose TAT is @tat. */
uint64_t qg_available(const struct qs_limit_cfg *l, int64_t tat, int64_t now);

/* Give back up to @delta ns of the slot @tl (on kind tl->kind) of quota @q
 * (id @id), journalled in thread @t's client slot: commit refund, cancel,
 * rollback. Returns the ns actually given back. */
uint64_t qg_refund(const struct qc_thread *t, struct qs_quota *q, uint32_t id,
		   const struct qt_limit *tl, uint64_t delta);

/* The refund's fast path (gcra.c, THE LAST SLOT): shorten our slot by
 * @delta if it is still the last one and nothing moved it. True if done. */
static inline bool qg_refund_last(struct qs_quota *q, uint32_t kind, int64_t end, uint64_t done0,
				  uint64_t delta)
{
	/* seq_cst load, like the waiters' check, of the counter every moving
	 * refund raises first */
	_Atomic int64_t *tat = qs_tat(q, kind);
	/* A plain read first: when another process has taken a slot since
	 * (a contended quota), the CAS would fail anyway, and a failing CAS
	 * still takes the line away from everyone. */
	return atomic_load_explicit(tat, memory_order_relaxed) == end &&
	       atomic_load(&q->refund_begun[kind & (QS_KINDS - 1)]) == done0 &&
	       end > INT64_MIN / 4 + (int64_t)delta &&
	       atomic_compare_exchange_strong_explicit(tat, &end, end - (int64_t)delta,
						       memory_order_relaxed, memory_order_relaxed);
}

/* Charge @ns more on kind @kind as of @now (usage above the estimate). */
void qg_debt(struct qs_quota *q, uint32_t kind, uint64_t ns, int64_t now);

/* Provider feedback: make at most @remaining units available now on the
 * limit @l (only ever raises the TAT). */
void qg_tighten(struct qs_quota *q, int64_t now, const struct qs_limit_cfg *l, uint64_t remaining);

/* A TAT read from shared memory, bounded so that TAT + charge - tau never
 * overflows whatever a scribbler wrote there. */
static inline int64_t qg_tat_clamp(int64_t tat)
{
	const int64_t lo = -(INT64_MAX / 4), hi = INT64_MAX / 2;
	return tat < lo ? lo : tat > hi ? hi : tat;
}

/* Raise *@w to at least @v. */
void qg_atomic_max(_Atomic int64_t *w, int64_t v);

#endif /* QUOTA_GCRA_H */
