/* SPDX-License-Identifier: MIT */
/*
 * impl_refcas.c - a reference, not a baseline: the smallest lock-free GCRA
 * with the same semantics (gcra_ref.h), so that libquota's cost beyond the
 * algorithm itself shows, and so that CAS retries per operation under
 * contention are measured somewhere (libquota's public API does not report
 * them). All tat words of a quota share one cache line.
 *
 * Reserve: read every tat; if any limit refuses, return without writing
 * (rejection writes nothing shared). Otherwise CAS each tat in turn; when a
 * CAS loses, that limit is recomputed from the value seen; if it now
 * refuses, the limits already charged are given back (fetch_add of -inc,
 * exact: a tat below now reads as a full bucket anyway). Never admits more
 * than a serial execution would: each charge is a CAS from the value the
 * decision was made on.
 */
#include <errno.h>
#include <stdlib.h>

#include "shmtab.h"

static struct qb_table tab;

static int refcas_setup(void)
{
	return 0;
}

static int refcas_prepare(const struct qb_quota_spec *spec, int nquotas)
{
	int r = qb_gcra_build(spec, &tab.g);
	return r < 0 ? r : qb_table_create(&tab, "refcas", nquotas, 0);
}

static int refcas_attach(int quota_index, void **state)
{
	return qb_table_state_attach(&tab, quota_index, state);
}

static int refcas_op(void *state, enum qb_op op, struct qb_counts *c)
{
	struct qb_table_state *s = state;
	const struct qb_gcra *g = &tab.g;
	struct qb_entry *e = s->e;
	int64_t seen[QB_GCRA_MAX], next[QB_GCRA_MAX];
	int64_t now = qb_now_ns();

	/* acquire pairs with the release of the CAS that wrote the value. */
	for (int i = 0; i < g->n; i++) {
		seen[i] = atomic_load_explicit(&e->tat[i], memory_order_acquire);
		next[i] = qb_gcra_next(&g->l[i], seen[i], now);
		if (next[i] < 0)
			return 0; /* refused, nothing written */
	}
	for (int i = 0; i < g->n; i++) {
		/* acq_rel: publishes this charge, and a failed CAS reads the
		 * winner's (pairs with the acquire loads above). */
		while (!atomic_compare_exchange_weak_explicit(&e->tat[i], &seen[i], next[i],
							      memory_order_acq_rel,
							      memory_order_acquire)) {
			c->retries++;
			next[i] = qb_gcra_next(&g->l[i], seen[i], now);
			if (next[i] < 0) {
				for (int j = 0; j < i; j++)
					atomic_fetch_add_explicit(&e->tat[j], -g->l[j].inc,
								  memory_order_release);
				return 0;
			}
		}
	}
	if (op == QB_OP_RESERVE_COMMIT)
		for (int i = 0; i < g->n; i++)
			if (g->l[i].delta)
				atomic_fetch_add_explicit(&e->tat[i], g->l[i].delta,
							  memory_order_release);
	return 1;
}

static void refcas_finish(void)
{
	qb_table_remove(&tab);
}

const struct qb_impl qb_impl_refcas = {
	.name = "refcas",
	.what = "reference: minimal lock-free GCRA (CAS per limit) on the same shm table",
	.has_retries = 1,
	.setup = refcas_setup,
	.prepare = refcas_prepare,
	.attach = refcas_attach,
	.op = refcas_op,
	.detach = qb_table_state_detach,
	.finish = refcas_finish,
	.teardown = refcas_finish,
};
