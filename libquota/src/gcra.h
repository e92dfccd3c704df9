/* SPDX-License-Identifier: MIT */
/*
 * gcra.h - the limit arithmetic (see gcra.c for the algorithm and its proof):
 * exact charges in nanoseconds, refunds, debt and provider tightening. The
 * charge is inline because reserve calls it once per limit.
 */
#ifndef QUOTA_GCRA_H
#define QUOTA_GCRA_H

#include <stdint.h>

#include "internal.h"
#include "layout.h"

/* Derive a limit's constants. @burst_ppm in (0, 1e6]. Returns 0 or -ERANGE
 * if the numbers would overflow the arithmetic. */
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

/* Units admissible now on a limit whose TAT is @tat. */
uint64_t qg_available(const struct qs_limit_cfg *l, int64_t tat, int64_t now);

/* Give back up to @delta ns of the slot @tl on limit @k of quota @q (id @id):
 * commit refund, cancel, rollback. Returns the ns actually given back. */
uint64_t qg_refund(const struct quota_client *c, struct qs_quota *q, uint32_t id, uint32_t k,
		   const struct qt_limit *tl, uint64_t delta);

/* Charge @ns more on limit @k as of @now (usage above the estimate). */
void qg_debt(struct qs_quota *q, uint32_t k, uint64_t ns, int64_t now);

/* Provider feedback: make at most @remaining units available now on limit
 * @k, whose config is @l (only ever raises the TAT). */
void qg_tighten(struct qs_quota *q, uint32_t k, int64_t now, const struct qs_limit_cfg *l,
		uint64_t remaining);

/* Raise *@w to at least @v. */
void qg_atomic_max(_Atomic int64_t *w, int64_t v);

#endif /* QUOTA_GCRA_H */
