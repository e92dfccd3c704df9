/* SPDX-License-Identifier: MIT */
/*
 * waitline.c - the order of lower-lane waiters. A reservation in a lane
 * below the top holds no place in line while it waits (reserve.c, LANES):
 * it sleeps until the instant its lane would admit it and decides again.
 * So that the first to wait is the first to decide, a waiter publishes
 * itself in its own client slot - its line (quota and lane), when its
 * reservation began and its deadline - and decides only when no older
 * waiter of its line is published: otherwise it sleeps on the futex word
 * of the youngest older one (the one just ahead), which that waiter's end
 * wakes. Waiters therefore decide in the order of their wait_since (ties by
 * slot), which is the order they are admitted in. The admission decision
 * itself is unchanged: this only says who may take it (ARCHITECTURE.md).
 *
 * HARM IS BOUNDED. Only LIVE slots count, and a waiter is ignored once the
 * clock is past its deadline (it can no longer be admitted then anyway): a
 * stopped or dead waiter holds its line at most until its deadline, a dead
 * one only until quotad reclaims its slot, which clears the words and wakes
 * the waiter behind.
 *
 * THE WORDS are a seqlock whose sequence is the key: the owner stores key 0
 * when a wait ends, and for the next wait, after a release fence, the
 * deadline and the start, then the new key (a number of its own in the low
 * half, never reused by the next wait) with release. A reader loads the key
 * and the two words (acquire), then the key and the slot's state word
 * again: equal keys mean the two words belong to that wait.
 *
 * COST. A scan reads line 0 of every client slot: client_capacity cache
 * lines, only on the waiting path of lower lanes, never when a reservation
 * is admitted at once.
 */
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* A slot whose words keep changing under the reader is skipped: its owner
 * is starting or ending waits, not waiting. */
#define READ_ATTEMPTS 4

/* The futex word of a wait: the key's low half (its number). */
static uint32_t *futex_word(struct qs_client *cs)
{
	/* only the kernel reads it, through the syscall */
	return (uint32_t *)((uintptr_t)&cs->wait_key + 4 * (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__));
}

/* The count of waiters published in @line's quota and lane, or NULL. */
static _Atomic uint32_t *line_count(const struct qs_geom *g, uint64_t line)
{
	uint32_t id1 = (uint32_t)(line >> 32) & 0xffffff, lane = (uint32_t)(line >> 56);
	struct qs_quota *q = id1 ? qs_quota_at(g, id1 - 1) : NULL;
	return q && lane < QS_LANES ? &q->lane_waiters[lane] : NULL;
}

/* One waiter fewer in @line's count, never below zero (a count that quotad's
 * audit lowered may meet a late decrement). */
static void line_count_down(const struct qs_geom *g, uint64_t line)
{
	_Atomic uint32_t *n = line_count(g, line);
	if (!n)
		return;
	uint32_t v = atomic_load_explicit(n, memory_order_relaxed);
	while (v && !atomic_compare_exchange_weak_explicit(n, &v, v - 1, memory_order_release,
							   memory_order_relaxed))
		;
}

bool qc_wait_any(const struct qs_quota *q, uint32_t lane)
{
	/* acquire: pairs with the increment before a wait is published, so a
	 * scan after a nonzero count sees the wait (or its end) */
	return lane < QS_LANES && atomic_load_explicit(&q->lane_waiters[lane], memory_order_acquire);
}

uint64_t qc_wait_begin(struct qc_thread *t, uint64_t line, int64_t since, int64_t until)
{
	struct qs_client *cs = t->cs;
	_Atomic uint32_t *n = line_count(&t->c->g, line);
	/* counted before published: the count is never below the waiters a
	 * scan can find (seq_cst: ordered before the key's store below) */
	if (n)
		atomic_fetch_add(n, 1);
	if (++t->wait_no == 0)
		t->wait_no = 1;
	uint64_t key = line | t->wait_no;
	/* release: the key's 0 (stored when the last wait ended) is ordered
	 * before the words below, for readers (pairs with their acquire loads
	 * of the words) */
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&cs->wait_since, since, memory_order_relaxed);
	atomic_store_explicit(&cs->wait_until, until, memory_order_relaxed);
	/* release: the words are visible before the key that names them */
	atomic_store_explicit(&cs->wait_key, key, memory_order_release);
	return key;
}

void qc_wait_end(const struct qs_geom *g, struct qs_client *cs)
{
	/* release: pairs with the acquire of a reader that sees the wait over */
	uint64_t key = atomic_exchange_explicit(&cs->wait_key, 0, memory_order_release);
	if (!key)
		return;
	syscall(SYS_futex, futex_word(cs), FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
	line_count_down(g, QS_WAIT_LINE(key)); /* uncounted after it is cleared */
}

/* The wait published in slot @cs if it is LIVE and waits in line
 * QS_WAIT_LINE(@key); false if it does not or kept changing. */
static bool read_waiter(const struct qs_client *cs, uint64_t key, struct qc_waiter *w)
{
	for (int i = 0; i < READ_ATTEMPTS; i++) {
		/* acquire: pairs with the release of LIVE at claim (client.c) */
		uint64_t st = atomic_load_explicit(&cs->state, memory_order_acquire);
		/* acquire: pairs with the release store of the key */
		uint64_t k = atomic_load_explicit(&cs->wait_key, memory_order_acquire);
		if (QS_CLIENT_STATUS(st) != QS_CLIENT_LIVE || !k || QS_WAIT_LINE(k) != QS_WAIT_LINE(key))
			return false;
		/* acquire: a word stored by a later wait makes its key's 0 (or the
		 * later key) visible below (pairs with qc_wait_begin's fence) */
		w->since = atomic_load_explicit(&cs->wait_since, memory_order_acquire);
		w->until = atomic_load_explicit(&cs->wait_until, memory_order_acquire);
		if (atomic_load_explicit(&cs->wait_key, memory_order_relaxed) == k &&
		    atomic_load_explicit(&cs->state, memory_order_relaxed) == st) {
			w->key = k;
			return true;
		}
	}
	return false;
}

/* Is (@s1, @since1) ahead of (@s2, @since2) in a line? */
static bool ahead(int64_t since1, uint32_t s1, int64_t since2, uint32_t s2)
{
	return since1 < since2 || (since1 == since2 && s1 < s2);
}

bool qc_wait_ahead(const struct qs_geom *g, uint32_t self, uint64_t key, int64_t since, int64_t now,
		   struct qc_waiter *ret)
{
	bool any = false;
	for (uint32_t s = 0; s < g->client_capacity; s++) {
		struct qc_waiter w;
		if (s == self || !read_waiter(qs_client_at(g, s), key, &w))
			continue;
		if (now > w.until || !ahead(w.since, s, since, self))
			continue; /* past its deadline, or behind us */
		if (!any || ahead(ret->since, ret->slot, w.since, s)) {
			w.slot = s;
			*ret = w;
			any = true;
		}
	}
	return any;
}

void qc_wait_behind(const struct quota_client *c, const struct qc_waiter *w, int64_t deadline)
{
	struct qs_client *cs = qs_client_at(&c->g, w->slot);
	if (!cs)
		return;
	if (c->manual) {
		/* The manual clock moves by quota_clock_set(), which wakes the
		 * clock's futex, not this one: look again after a while. */
		struct timespec ts = { 0, QC_WAIT_POLL_NS };
		syscall(SYS_futex, futex_word(cs), FUTEX_WAIT, (uint32_t)w->key, &ts, NULL, 0);
		return;
	}
	/* Until the first instant past either deadline, absolute on
	 * CLOCK_MONOTONIC (the segment clock). */
	int64_t until = w->until < deadline ? w->until : deadline;
	until = until < INT64_MAX ? until + 1 : until;
	struct timespec ts = { until / QC_NS_PER_S, until % QC_NS_PER_S };
	syscall(SYS_futex, futex_word(cs), FUTEX_WAIT_BITSET, (uint32_t)w->key, &ts, NULL,
		FUTEX_BITSET_MATCH_ANY);
}

/*
 * THE COUNTS' AUDIT (quotad, every check). A count is at least the waits
 * published in its line, except in two windows of a process that dies: after
 * counting, before publishing, and after clearing, before uncounting; both
 * leave one too many, so that reservations of that lane that fit at once keep
 * looking for waiters (a scan) where there are none. What a scan finds
 * compared at two checks in a row, with both values unchanged, is a count
 * that is wrong for good, not a wait starting or ending: it is set to what
 * was found. A repair that meets a wait in a window after all (a thread
 * stopped there for a whole check period) leaves the count one too low for
 * that wait's life: the order of that lane is then as without counts, never
 * the bound (the admission decision does not read them).
 */
static void audit_scan(const struct qs_geom *g, uint32_t n, uint32_t *seen)
{
	memset(seen, 0, sizeof(*seen) * QS_LANES * n);
	for (uint32_t s = 0; s < g->client_capacity; s++) {
		const struct qs_client *cs = qs_client_at(g, s);
		uint64_t st = atomic_load_explicit(&cs->state, memory_order_acquire);
		uint64_t k = atomic_load_explicit(&cs->wait_key, memory_order_acquire);
		uint32_t id1 = (uint32_t)(k >> 32) & 0xffffff, lane = (uint32_t)(k >> 56);
		if (QS_CLIENT_STATUS(st) == QS_CLIENT_LIVE && k && id1 && id1 <= n && lane < QS_LANES)
			seen[(id1 - 1) * QS_LANES + lane]++;
	}
}

uint32_t qc_wait_audit(const struct qs_geom *g, uint32_t *prev, uint32_t *seen)
{
	uint32_t n = qs_quota_count(g), repaired = 0;
	if (n > g->quota_capacity)
		n = g->quota_capacity;
	audit_scan(g, n, seen);
	for (uint32_t i = 0; i < n * QS_LANES; i++) {
		struct qs_quota *q = qs_quota_at(g, i / QS_LANES);
		_Atomic uint32_t *w = &q->lane_waiters[i % QS_LANES];
		uint32_t v = atomic_load_explicit(w, memory_order_relaxed);
		uint32_t *was = &prev[2 * i]; /* [0]: the count, [1]: what the scan found */
		if (v != seen[i] && was[0] == v && was[1] == seen[i] &&
		    atomic_compare_exchange_strong_explicit(w, &v, seen[i], memory_order_relaxed,
							    memory_order_relaxed)) {
			repaired++;
			v = seen[i];
		}
		was[0] = v;
		was[1] = seen[i];
	}
	return repaired;
}
