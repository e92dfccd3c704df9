/* SPDX-License-Identifier: MIT */
/*
 * impl_mutex.c - baseline 1: the table in POSIX shared memory that a
 * lock-based design keeps (nginx's limit_req works this way): one robust,
 * process-shared pthread mutex per quota guarding its tat words, GCRA of
 * gcra_ref.h inside the critical section. EOWNERDEAD (a holder died) is
 * handled by marking the mutex consistent: the tat words are only ever
 * stored whole, so the state is valid whatever point the holder died at.
 * "retries" counts contended acquisitions (trylock found it held).
 */
#include <errno.h>
#include <stdlib.h>

#include "shmtab.h"

static struct qb_table tab;

static int mutex_setup(void)
{
	return 0;
}

static int mutex_prepare(const struct qb_quota_spec *spec, int nquotas)
{
	int r = qb_gcra_build(spec, &tab.g);
	return r < 0 ? r : qb_table_create(&tab, "mutex", nquotas, 1);
}

static int mutex_attach(int quota_index, void **state)
{
	return qb_table_state_attach(&tab, quota_index, state);
}

static int lock(struct qb_entry *e, struct qb_counts *c)
{
	int r = pthread_mutex_trylock(&e->mu);
	if (r == EBUSY) {
		c->retries++;
		r = pthread_mutex_lock(&e->mu);
	}
	if (r == EOWNERDEAD)
		r = pthread_mutex_consistent(&e->mu);
	return -r;
}

static int mutex_op(void *state, enum qb_op op, struct qb_counts *c)
{
	struct qb_table_state *s = state;
	const struct qb_gcra *g = &tab.g;
	struct qb_entry *e = s->e;
	int64_t next[QB_GCRA_MAX];
	int64_t now = qb_now_ns();
	int r = lock(e, c);
	if (r < 0)
		return r;
	int ok = 1;
	for (int i = 0; i < g->n && ok; i++) {
		next[i] = qb_gcra_next(&g->l[i], atomic_load_explicit(&e->tat[i], memory_order_relaxed),
				       now);
		ok = next[i] >= 0;
	}
	if (ok) /* all or nothing */
		for (int i = 0; i < g->n; i++)
			atomic_store_explicit(&e->tat[i], next[i], memory_order_relaxed);
	pthread_mutex_unlock(&e->mu);
	if (!ok || op != QB_OP_RESERVE_COMMIT)
		return ok;

	/* Commit: the response's usage refunds what was not used. */
	r = lock(e, c);
	if (r < 0)
		return r;
	for (int i = 0; i < g->n; i++)
		if (g->l[i].delta)
			atomic_store_explicit(&e->tat[i],
					      atomic_load_explicit(&e->tat[i], memory_order_relaxed) +
						      g->l[i].delta,
					      memory_order_relaxed);
	pthread_mutex_unlock(&e->mu);
	return 1;
}

static void mutex_finish(void)
{
	qb_table_remove(&tab);
}

const struct qb_impl qb_impl_mutex = {
	.name = "mutex",
	.what = "robust process-shared pthread mutex per quota, table in POSIX shm",
	.has_retries = 1,
	.setup = mutex_setup,
	.prepare = mutex_prepare,
	.attach = mutex_attach,
	.op = mutex_op,
	.detach = qb_table_state_detach,
	.finish = mutex_finish,
	.teardown = mutex_finish,
};
