/* SPDX-License-Identifier: MIT */
/*
 * held.c - tickets still open: quotad's alarm phase flips and what it
 * counts at each (ARCHITECTURE, Alarms, gives the proof).
 *
 * A quota with an alarm time held_s has a phase word (qs_quota.held_phase,
 * written by quotad only) whose bit 0 is the phase p. A reservation on such
 * a quota, once admitted, reads p and adds 1 to open[p] of its thread's row,
 * and the ticket remembers p (reserve.c); settling it (any thread of the
 * handle) subtracts 1 from open[p] of the settling thread's row (settle.c).
 * Rows are signed like held: only a process's sum is exact.
 *
 * Every held_s (at least), quotad flips p -> p' for the quota. Right before,
 * it sums open[p'] per live process: those tickets read p' before the
 * previous flip, so they were admitted before it, at least held_s ago
 * (exact count C of that parity). The tickets of parity p that are old
 * (read p before the flip before) share open[p] with the young ones of the
 * current phase; they are bounded by the count C' of parity p made at the
 * previous flip and by open[p] now, so each process shows
 *     C + min(C', open[p])
 * which counts every ticket open since before the previous flip, and more
 * only when old tickets of parity p were settled while young ones are open.
 * qc_held_flip() does this for one quota: per process, then the total.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

uint32_t qc_held_sums(const struct qs_geom *g, uint32_t id, struct qc_held_group *out)
{
	uint32_t n = 0;
	for (uint32_t s = 0; s < g->client_capacity; s++) {
		const struct qs_client *cs = qs_client_at(g, s);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_acquire);
		if (QS_CLIENT_STATUS(w) != QS_CLIENT_LIVE)
			continue;
		int64_t open[2] = { 0, 0 };
		bool any = false;
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++)
			if (atomic_load_explicit(&cs->rows[r].quota1, memory_order_acquire) == id + 1) {
				open[0] += atomic_load_explicit(&cs->rows[r].open[0], memory_order_relaxed);
				open[1] += atomic_load_explicit(&cs->rows[r].open[1], memory_order_relaxed);
				any = true;
			}
		if (!any)
			continue;
		int32_t pid = QS_CLIENT_PID(w);
		uint64_t start = atomic_load_explicit(&cs->starttime, memory_order_relaxed);
		uint32_t k = 0;
		while (k < n && (out[k].pid != pid || out[k].start != start))
			k++;
		if (k == n)
			out[n++] = (struct qc_held_group){ .pid = pid, .start = start };
		out[k].open[0] += open[0];
		out[k].open[1] += open[1];
	}
	return n;
}

struct qc_held_entry *qc_held_find(const struct qc_held_state *st, uint32_t id, int32_t pid, uint64_t start)
{
	for (uint32_t i = 0; i < st->n; i++)
		if (st->e[i].quota == id && st->e[i].pid == pid && st->e[i].start == start)
			return &st->e[i];
	return NULL;
}

/* Replace quota @id's entries in @st by the @n in @fresh. */
static void entries_replace(struct qc_held_state *st, uint32_t id, const struct qc_held_entry *fresh,
			    uint32_t n)
{
	uint32_t kept = 0;
	for (uint32_t i = 0; i < st->n; i++)
		if (st->e[i].quota != id)
			st->e[kept++] = st->e[i];
	st->n = kept;
	if (st->n + n > st->cap) {
		uint32_t cap = st->n + n + 16;
		struct qc_held_entry *e = cap <= QC_HELD_MAX_ENTRIES ? realloc(st->e, cap * sizeof(*e)) : NULL;
		if (e) {
			st->e = e;
			st->cap = cap;
		}
	}
	for (uint32_t i = 0; i < n && st->n < st->cap; i++)
		st->e[st->n++] = fresh[i];
}

static uint64_t pos(int64_t v)
{
	return v > 0 ? (uint64_t)v : 0;
}

uint64_t qc_held_flip(const struct qs_geom *g, uint32_t id, struct qc_held_state *st,
		      struct qc_held_group *scratch)
{
	struct qs_quota *q = qs_quota_at(g, id);
	if (!q)
		return 0;
	uint64_t w = atomic_load_explicit(&q->held_phase, memory_order_relaxed);
	uint32_t p = (uint32_t)(w & 1), p2 = p ^ 1;
	uint32_t n = qc_held_sums(g, id, scratch);
	struct qc_held_entry *fresh = malloc((n ? n : 1) * sizeof(*fresh));
	uint32_t nf = 0;
	uint64_t total = 0;
	for (uint32_t k = 0; k < n; k++) {
		const struct qc_held_group *gr = &scratch[k];
		const struct qc_held_entry *prev = qc_held_find(st, id, gr->pid, gr->start);
		uint64_t old = pos(gr->open[p2]), cur = pos(gr->open[p]);
		uint64_t before = prev ? prev->old : 0;
		uint64_t shown = old + (before < cur ? before : cur);
		total += shown;
		if (fresh && (old || shown))
			fresh[nf++] = (struct qc_held_entry){ .quota = id, .pid = gr->pid, .start = gr->start,
							      .old = old, .open = shown };
	}
	entries_replace(st, id, fresh, nf);
	free(fresh);
	atomic_store_explicit(&q->held_open, total, memory_order_relaxed);
	/* seq_cst (a release, and in one order with the clock): the row loads
	 * above happen before a reservation that reads the new phase adds to
	 * its row; see reserve.c, HELD OPEN */
	atomic_store_explicit(&q->held_phase, w + 1, memory_order_seq_cst);
	return total;
}

void qc_held_forget(struct qc_held_state *st, uint32_t id)
{
	entries_replace(st, id, NULL, 0);
}
