/* SPDX-License-Identifier: MIT */
/*
 * impl_floor.c - the physical floor: what any reservation must at least do,
 * one CLOCK_MONOTONIC read and one compare-and-swap, here on a cache line
 * private to the process so that nothing else costs anything. libquota's
 * single-process figure is reported as a fraction of this.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "bench.h"

struct floor_state {
	_Alignas(64) _Atomic int64_t word;
	char pad[64 - sizeof(int64_t)];
};

static int floor_setup(void)
{
	return 0;
}

static int floor_prepare(const struct qb_quota_spec *spec, int nquotas)
{
	(void)spec;
	(void)nquotas;
	return 0;
}

static int floor_attach(int quota_index, void **state)
{
	(void)quota_index;
	struct floor_state *s = aligned_alloc(64, sizeof(*s));
	if (!s)
		return -1;
	atomic_init(&s->word, 0);
	*state = s;
	return 0;
}

static int floor_op(void *state, enum qb_op op, struct qb_counts *c)
{
	(void)op;
	struct floor_state *s = state;
	int64_t now = qb_now_ns();
	int64_t old = atomic_load_explicit(&s->word, memory_order_relaxed);
	/* The CAS a GCRA reservation makes: new tat from old tat and now. */
	int64_t next = (old > now ? old : now) + 1;
	/* acq_rel as a GCRA reservation needs it (it publishes its charge and
	 * reads the others'); on x86-64 any CAS is the same lock cmpxchg. */
	while (!atomic_compare_exchange_weak_explicit(&s->word, &old, next, memory_order_acq_rel,
						      memory_order_relaxed)) {
		c->retries++;
		next = (old > now ? old : now) + 1;
	}
	return 1;
}

static void floor_detach(void *state)
{
	free(state);
}

static void floor_finish(void)
{
}

static void floor_teardown(void)
{
}

const struct qb_impl qb_impl_floor = {
	.name = "floor",
	.what = "one clock_gettime(CLOCK_MONOTONIC) + one CAS on a private cache line",
	.has_retries = 1,
	.setup = floor_setup,
	.prepare = floor_prepare,
	.attach = floor_attach,
	.op = floor_op,
	.detach = floor_detach,
	.finish = floor_finish,
	.teardown = floor_teardown,
};
