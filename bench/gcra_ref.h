/* SPDX-License-Identifier: MIT */
/*
 * gcra_ref.h - the baselines' GCRA, written once so that the mutex table,
 * the lock-free reference and the Redis script charge exactly the same.
 *
 * Per limit of rate L units per period P (ns) and capacity C = L (burst 1.0):
 * T = P / L ns per unit; a cost of n units advances the limit's theoretical
 * arrival time (tat) by inc = ceil(n * T); it is admitted at time now iff
 * max(tat, now) + inc - now <= tau = C * T = P, i.e. a full bucket admits
 * exactly C units at once and then one unit every T. A reservation is
 * admitted only if every limit admits it, and then charges every limit
 * (all or nothing). Commit adds delta = floor(actual * T) - inc (a refund,
 * negative, rounded so that less is refunded, never more); a tat below now
 * means a full bucket because the next reservation takes max(tat, now).
 * Since the cost of a scenario is constant, inc, tau and delta are computed
 * once per scenario here, as libquota computes its per-limit constants once.
 */
#ifndef QBENCH_GCRA_REF_H
#define QBENCH_GCRA_REF_H

#include <stdint.h>

#include "bench.h"

#define QB_GCRA_MAX 6

struct qb_gcra_limit {
	int64_t inc;   /* ns charged per reservation */
	int64_t tau;   /* ns of burst tolerance */
	int64_t delta; /* ns added by commit (<= 0: a refund) */
};

struct qb_gcra {
	int n;
	struct qb_gcra_limit l[QB_GCRA_MAX];
};

/* Fill @g for quotas of @spec and the bench's reservation and commit costs.
 * Returns 0, or -EINVAL if a value overflows. */
int qb_gcra_build(const struct qb_quota_spec *spec, struct qb_gcra *g);

/* The decision for one limit: the new tat, or -1 if not admitted. */
static inline int64_t qb_gcra_next(const struct qb_gcra_limit *l, int64_t tat, int64_t now)
{
	int64_t base = tat > now ? tat : now;
	int64_t next = base + l->inc;
	return next - now <= l->tau ? next : -1;
}

#endif /* QBENCH_GCRA_REF_H */
