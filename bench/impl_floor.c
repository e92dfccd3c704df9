/* SPDX-License-Identifier: MIT */
/*
 * impl_floor.c - the physical floor: what any reservation must at least do,
 * one CLOCK_MONOTONIC read and one compare-and-swap. Each quota index is one
 * cache line in shared memory: with one process per line ("floor",
 * "floor-2p") the line stays private to its process, so nothing else costs
 * anything and libquota's single-process figure is reported as a fraction
 * of it; with every process on line 0 ("floor-hot-N") it is the floor of a
 * hot quota, the price of moving one cache line between cores per operation,
 * which no design that shares one word per quota can beat.
 */
#include <errno.h>
#include <stdlib.h>

#include "shmtab.h"

static struct qb_table tab;

static int floor_setup(void)
{
	return 0;
}

static int floor_prepare(const struct qb_quota_spec *spec, int nquotas)
{
	(void)spec;
	return qb_table_create(&tab, "floor", nquotas, 0);
}

static int floor_attach(int quota_index, void **state)
{
	return qb_table_state_attach(&tab, quota_index, state);
}

static int floor_op(void *state, enum qb_op op, struct qb_counts *c)
{
	(void)op;
	struct qb_table_state *s = state;
	_Atomic int64_t *w = &s->e->tat[0];
	int64_t now = qb_now_ns();
	int64_t old = atomic_load_explicit(w, memory_order_relaxed);
	/* The CAS a GCRA reservation makes: new tat from old tat and now.
	 * acq_rel as a reservation needs it (it publishes its charge and reads
	 * the others'); on x86-64 any CAS is the same lock cmpxchg. */
	while (!atomic_compare_exchange_weak_explicit(w, &old, (old > now ? old : now) + 1,
						      memory_order_acq_rel, memory_order_relaxed))
		c->retries++;
	return 1;
}

static void floor_finish(void)
{
	qb_table_remove(&tab);
}

const struct qb_impl qb_impl_floor = {
	.name = "floor",
	.what = "one clock_gettime(CLOCK_MONOTONIC) + one CAS (private line; floor-hot: one shared line)",
	.has_retries = 1,
	.setup = floor_setup,
	.prepare = floor_prepare,
	.attach = floor_attach,
	.op = floor_op,
	.detach = qb_table_state_detach,
	.finish = floor_finish,
	.teardown = floor_finish,
};
