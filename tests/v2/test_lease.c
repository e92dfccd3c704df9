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
