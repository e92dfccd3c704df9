/* SPDX-License-Identifier: MIT */
/*
 * test_rows.c - quota.h: quota_reserve() returns -ENOSPC when "this thread
 * already tracks in-flight requests on too many distinct quotas (64)". A
 * thread that has reserved on 64 quotas without max_inflight tracks no
 * in-flight request at all: a reservation on a 65th quota that has
 * max_inflight must be admitted (a proxy serving many API keys from one
 * worker thread touches more than 64 quotas over its life).
 */
#include <errno.h>
#include <stdio.h>

#include <criterion/criterion.h>

#include "testlib.h"

Test(v2_rows, enospc_only_for_quotas_tracked_in_flight)
{
	char name[128], json[8192];
	int off = snprintf(json, sizeof(json), "{\"clock\": \"manual\", \"max_quotas\": 80, \"quotas\": {");
	for (int i = 0; i < 70; i++)
		off += snprintf(json + off, sizeof(json) - (size_t)off, "%s\"q%d\": {\"rpm\": 600%s}", i ? ", " : "", i,
				i >= 64 ? ", \"max_inflight\": 4" : "");
	snprintf(json + off, sizeof(json) - (size_t)off, "}}");
	tl_name(name, sizeof(name), "rows");
	tl_create(name, json);
	quota_client *c;
	cr_assert_eq(quota_open(name, &c), 0);
	struct quota_ticket t;
	const struct quota_cost one = { 1, 0, 0 };
	for (int i = 0; i < 64; i++) {
		char qn[8];
		snprintf(qn, sizeof(qn), "q%d", i);
		int id = quota_find(c, qn);
		cr_assert_geq(id, 0);
		cr_assert_eq(quota_reserve(c, id, &one, 0, &t), 0, "q%d", i);
		cr_assert_eq(quota_commit(c, &t, &one), 0);
	}
	int id = quota_find(c, "q64");
	int r = quota_reserve(c, id, &one, 0, &t);
	printf("rows: after 64 quotas without max_inflight, a reservation on one with max_inflight: %s\n",
	       r == 0 ? "admitted" : quota_strerror(r));
	cr_expect_eq(r, 0, "refused with %s although this thread tracks no in-flight request", quota_strerror(r));
	if (r == 0)
		cr_assert_eq(quota_commit(c, &t, &one), 0);
	quota_close(c);
}
