/* SPDX-License-Identifier: MIT */
/*
 * test_ticket.c - a ticket is bound to the quota_open() that took it. A
 * handle closed and reopened at the same address (the handle is calloc'ed:
 * the allocator gives the chunk back) must refuse an old ticket with
 * -EINVAL and touch nothing: in flight, admissions, the limits' state and the
 * spend stay as they were. Under core v1 the ticket matched (handle address
 * XOR a serial restarting at 0) and its in-flight release wrapped the count.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "internal.h"
#include "testlib.h"

#define QUOTA "\"rpm\": 60, \"tpm\": 6000, \"max_inflight\": 4, " \
	"\"price_per_mtok\": {\"input\": 1, \"output\": 2}, \"budget_usd\": {\"day\": 10}"

struct snap {
	struct quota_info in;
	int64_t tat[QS_KINDS];
	uint64_t inflight_word;
};

static void snap(quota_client *c, struct snap *s)
{
	memset(s, 0, sizeof(*s));
	cr_assert_eq(quota_info(c, 0, &s->in, sizeof(s->in)), 0);
	struct qs_quota *q = tl_quota(c, 0);
	for (uint32_t k = 0; k < QS_KINDS; k++)
		s->tat[k] = atomic_load(qs_tat(q, k));
	s->inflight_word = atomic_load(&q->inflight);
}

static void same(const struct snap *a, const struct snap *b, const char *after)
{
	cr_assert_eq(a->in.inflight, b->in.inflight, "%s: in flight %llu -> %llu", after,
		     (unsigned long long)a->in.inflight, (unsigned long long)b->in.inflight);
	cr_assert_eq(a->in.admitted, b->in.admitted, "%s: admitted changed", after);
	cr_assert_eq(a->in.admitted_input_tokens, b->in.admitted_input_tokens, "%s: tokens changed", after);
	cr_assert_eq(a->in.admitted_output_tokens, b->in.admitted_output_tokens, "%s: tokens changed", after);
	cr_assert_eq(a->in.spent_day_nusd, b->in.spent_day_nusd, "%s: spend changed", after);
	for (int k = 0; k < QUOTA_RATE_KINDS; k++)
		cr_assert_eq(a->in.rate[k].available, b->in.rate[k].available, "%s: kind %d available %llu -> %llu",
			     after, k, (unsigned long long)a->in.rate[k].available,
			     (unsigned long long)b->in.rate[k].available);
	for (uint32_t k = 0; k < QS_KINDS; k++)
		cr_assert_eq(a->tat[k], b->tat[k], "%s: TAT of kind %u moved", after, k);
	cr_assert_eq(a->inflight_word, b->inflight_word, "%s: in-flight word changed", after);
}

/* Under ASan, freed memory sits in a quarantine: without one, the allocator
 * hands a freed chunk back as glibc's does. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "quarantine_size_mb=0:thread_local_quarantine_size_kb=0";
}

/* Close @c so that its chunk can come back: glibc's calloc() does not take
 * chunks from the thread cache, so fill the cache's bin for that size first
 * and the handle's chunk goes where calloc() looks. */
static void close_for_reuse(quota_client *c)
{
	void *fill[7];
	for (int i = 0; i < 7; i++)
		fill[i] = malloc(sizeof(struct quota_client));
	for (int i = 0; i < 7; i++)
		free(fill[i]);
	quota_close(c);
}

/* Reopen until the new handle has address @want (a few attempts). */
static quota_client *reopen_at(const char *name, void *want)
{
	quota_client *keep[8] = { 0 }, *c = NULL;
	int n = 0;
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(quota_open(name, &c), 0);
		if ((void *)c == want)
			break;
		keep[n++] = c; /* held: the next calloc() may return the chunk we want */
		c = NULL;
	}
	for (int i = 0; i < n; i++)
		quota_close(keep[i]);
	return c;
}

Test(v2_ticket, stale_ticket_of_a_reopened_handle_is_refused)
{
	char name[128];
	quota_client *c = tl_manual("tk", QUOTA, name, sizeof(name));
	void *addr = c;
	struct quota_cost cost = { 1, 100, 50 };
	/* Tickets of the first open: one kept open across the close, one
	 * settled before it. */
	struct quota_ticket stale, settled;
	cr_assert_eq(quota_reserve(c, 0, &cost, 0, &stale), 0);
	cr_assert_eq(quota_reserve(c, 0, &cost, 0, &settled), 0);
	cr_assert_eq(quota_commit(c, &settled, &cost), 0);
	close_for_reuse(c);

	c = reopen_at(name, addr);
	cr_assert(c, "could not get a handle at the same address %p in 8 attempts", addr);
	/* The new handle's own tickets, so that serials and in-flight counts
	 * that the stale ticket could be confused with exist. */
	struct quota_ticket mine[2];
	cr_assert_eq(quota_reserve(c, 0, &cost, 0, &mine[0]), 0);
	cr_assert_eq(quota_reserve(c, 0, &cost, 0, &mine[1]), 0);

	struct snap before, after;
	snap(c, &before);
	cr_assert_eq(before.in.inflight, 2);
	struct quota_ticket copy = stale;
	cr_assert_eq(quota_commit(c, &stale, &(struct quota_cost){ 1, 10, 0 }), -EINVAL,
		     "a ticket of an earlier open is refused");
	snap(c, &after);
	same(&before, &after, "commit of a stale ticket");
	cr_assert_eq(quota_cancel(c, &copy), -EINVAL);
	snap(c, &after);
	same(&before, &after, "cancel of a stale ticket");
	struct quota_ticket s2 = settled;
	cr_assert_eq(quota_cancel(c, &s2), -EINVAL, "a settled ticket of an earlier open");
	snap(c, &after);
	same(&before, &after, "cancel of a settled stale ticket");

	/* A ticket of another live handle is refused just the same. */
	quota_client *other;
	cr_assert_eq(quota_open(name, &other), 0);
	struct quota_ticket theirs;
	cr_assert_eq(quota_reserve(other, 0, &cost, 0, &theirs), 0);
	snap(c, &before);
	struct quota_ticket t2 = theirs;
	cr_assert_eq(quota_commit(c, &t2, &cost), -EINVAL);
	cr_assert_eq(quota_cancel(c, &theirs), -EINVAL);
	snap(c, &after);
	same(&before, &after, "settling another handle's ticket");
	cr_assert_eq(quota_cancel(other, &theirs), 0, "its own handle still may");
	quota_close(other);

	/* The handle's own tickets still settle, and in flight goes back to 0. */
	cr_assert_eq(quota_commit(c, &mine[0], &cost), 0);
	cr_assert_eq(quota_cancel(c, &mine[1]), 0);
	cr_assert_eq(quota_commit(c, &mine[0], &cost), -EINVAL, "settled twice");
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.inflight, 0, "in flight %llu", (unsigned long long)in.inflight);
	quota_close(c);
	printf("stale ticket: handle reopened at %p, old ticket refused, counters unchanged\n", addr);
}
