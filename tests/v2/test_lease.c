/* SPDX-License-Identifier: MIT */
/*
 * test_lease.c - the workers' side of a global max_inflight's lease
 * (reserve.c, GLOBAL IN FLIGHT): on a quota whose record says its
 * max_inflight is global, a reservation takes an in-flight slot only
 * before the quota entry's inflight_until (quotad's last answered call +
 * half the lease), else it is refused at once, whatever its timeout, with
 * the in-flight reason and a retry after 1 s. A host quota's reservations
 * never read the word. quotad's part is played here by hand: the hold is
 * lowered to 0 (all slots granted) and the word set.
 */
#include <errno.h>

#include <criterion/criterion.h>

#include "internal.h"
#include "testlib.h"

#define CONFIG "{\"redis\": {\"url\": \"redis://127.0.0.1:1\"}, \"quotas\": {" \
	"\"g\": {\"max_inflight\": 2, \"scope\": \"global\", \"expected_hosts\": 2}, " \
	"\"h\": {\"max_inflight\": 2}}}"

static int64_t mono(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * TL_S + t.tv_nsec;
}

Test(lease, global_inflight_only_before_until)
{
	char name[64];
	tl_name(name, sizeof(name), "lease");
	tl_create(name, CONFIG);
	quota_client *c = NULL;
	cr_assert_eq(quota_open(name, &c), 0);
	int g = quota_find(c, "g"), h = quota_find(c, "h");
	cr_assert(g >= 0 && h >= 0);
	struct qs_quota *qg = tl_quota(c, g), *qh = tl_quota(c, h);
	struct quota_cost one = { .requests = 1 };
	struct quota_ticket t;
	/* A new segment: the whole of M held, no lease yet. */
	cr_assert_eq(atomic_load(&qg->inflight_hold), 2);
	cr_assert_eq(atomic_load(&qg->inflight_until), 0);
	(void)qc_inflight_hold_set(qg, 0);
	/* No lease: refused at once though the call could wait 10 s. */
	int64_t t0 = mono();
	cr_assert_eq(quota_reserve(c, g, &one, 10 * TL_S, &t), -EAGAIN);
	cr_assert_lt(mono() - t0, 5 * TL_S, "it waited");
	cr_assert_eq(t.retry_after_ns, TL_S);
	struct quota_info in;
	cr_assert_eq(quota_info(c, g, &in, sizeof(in)), 0);
	cr_assert_eq(in.rejected[QUOTA_REJECT_INFLIGHT], 1);
	/* A lease running: admitted up to max_inflight as before. */
	atomic_store(&qg->inflight_until, mono() + 60 * TL_S);
	struct quota_ticket a, b;
	cr_assert_eq(quota_reserve(c, g, &one, 0, &a), 0);
	cr_assert_eq(quota_reserve(c, g, &one, 0, &b), 0);
	cr_assert_eq(quota_reserve(c, g, &one, 0, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, TL_MS, "a full count retries as before");
	/* The lease ran out: nothing new, while what was admitted settles. */
	atomic_store(&qg->inflight_until, mono() - 1);
	cr_assert_eq(quota_commit(c, &a, &one), 0);
	cr_assert_eq(quota_reserve(c, g, &one, 0, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, TL_S);
	cr_assert_eq(quota_cancel(c, &b), 0);
	/* A host quota ignores the word (0 or anything). */
	atomic_store(&qh->inflight_until, mono() - 1);
	cr_assert_eq(quota_reserve(c, h, &one, 0, &a), 0);
	cr_assert_eq(quota_commit(c, &a, &one), 0);
	quota_close(c);
}

/* quotad lowers the workers' cap below what they hold (a host above its
 * fair share of a global max_inflight): the hold exceeds M - in use, the
 * count exceeds M, and the workers admit nothing until they hold fewer than
 * the cap; the audit keeps count = held + hold. */
Test(lease, cap_below_in_use)
{
	char name[64];
	tl_name(name, sizeof(name), "leasecap");
	tl_create(name, "{\"redis\": {\"url\": \"redis://127.0.0.1:1\"}, \"quotas\": {"
		  "\"g\": {\"max_inflight\": 4, \"scope\": \"global\", \"expected_hosts\": 2}}}");
	quota_client *c = NULL;
	cr_assert_eq(quota_open(name, &c), 0);
	int g = quota_find(c, "g");
	cr_assert(g >= 0);
	struct qs_quota *qg = tl_quota(c, g);
	struct quota_cost one = { .requests = 1 };
	struct quota_ticket t, a[4];
	(void)qc_inflight_hold_set(qg, 0);
	atomic_store(&qg->inflight_until, mono() + 60 * TL_S);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(quota_reserve(c, g, &one, 0, &a[i]), 0);
	/* Cap 1 with 4 in use: hold 3, count 7 > 4. */
	cr_assert_eq(qc_inflight_hold_set(qg, 3), 4, "the workers held 4");
	cr_assert_eq(QS_INFLIGHT_COUNT(atomic_load(&qg->inflight)), 7);
	struct quota_info in;
	cr_assert_eq(quota_info(c, g, &in, sizeof(in)), 0);
	cr_assert_eq(in.inflight, 4);
	uint32_t cursor = 0;
	struct qc_reclaim_counts counts = { 0 };
	cr_assert_eq(qc_audit_some(&c->g, &cursor, 1024, &counts), 0);
	cr_assert_eq(QS_INFLIGHT_COUNT(atomic_load(&qg->inflight)), 7, "the audit kept held + hold");
	/* Nothing admitted while they hold 4, 3, 2, 1; one once they hold 0. */
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(quota_reserve(c, g, &one, 0, &t), -EAGAIN, "admitted holding %d, cap 1", 4 - i);
		cr_assert_eq(quota_commit(c, &a[i], &one), 0);
	}
	cr_assert_eq(QS_INFLIGHT_COUNT(atomic_load(&qg->inflight)), 3);
	cr_assert_eq(quota_reserve(c, g, &one, 0, &a[0]), 0);
	cr_assert_eq(quota_reserve(c, g, &one, 0, &t), -EAGAIN, "a second one under cap 1");
	cr_assert_eq(quota_commit(c, &a[0], &one), 0);
	quota_close(c);
}
