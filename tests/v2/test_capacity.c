/* SPDX-License-Identifier: MIT */
/*
 * test_capacity.c - exact capacity: for every rpm 1..1000 and burst in
 * {0.01, 0.05, 0.1, 0.3, 0.5, 0.99, 1}, the capacity quota_info() reports is
 * ceil(rpm * burst) (at least 1), a greedy burst of 1-request reservations at
 * one instant (manual clock, timeout 0) admits exactly that many, and from a
 * full bucket one reservation of exactly the capacity is admitted while one
 * above it is refused at once (-E2BIG). One segment holds all 7000 quotas.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "testlib.h"
#include "v2lib.h"

#define RPM_MAX 1000
#define NBURST 7
static const char *const burst_txt[NBURST] = { "0.01", "0.05", "0.1", "0.3", "0.5", "0.99", "1" };
static const uint64_t burst_ppm[NBURST] = { 10000, 50000, 100000, 300000, 500000, 990000, 1000000 };

static uint64_t expected_capacity(uint64_t rpm, uint64_t ppm)
{
	uint64_t cap = (rpm * ppm + 999999) / 1000000;
	return cap ? cap : 1;
}

Test(v2_capacity, ceil_limit_times_burst_for_every_rpm, .timeout = 120)
{
	size_t len = (size_t)RPM_MAX * NBURST * 48 + 256, off = 0;
	char *json = malloc(len);
	cr_assert(json);
	off += (size_t)snprintf(json + off, len - off, "{\"clock\": \"manual\", \"max_quotas\": %d, \"quotas\": {",
				RPM_MAX * NBURST);
	for (int rpm = 1; rpm <= RPM_MAX; rpm++)
		for (int b = 0; b < NBURST; b++)
			off += (size_t)snprintf(json + off, len - off, "%s\"r%db%d\": {\"rpm\": %d, \"burst\": %s}",
						rpm == 1 && b == 0 ? "" : ", ", rpm, b, rpm, burst_txt[b]);
	snprintf(json + off, len - off, "}}");
	char name[128];
	tl_name(name, sizeof(name), "cap");
	int64_t t0 = v2_now();
	tl_create(name, json); /* every (rpm, burst) must be accepted by the config */
	free(json);
	quota_client *c;
	cr_assert_eq(quota_open(name, &c), 0);

	static int id[RPM_MAX + 1][NBURST];
	uint64_t wrong_cap = 0, wrong_burst = 0, reservations = 0;
	struct quota_ticket t;
	const struct quota_cost one = { 1, 0, 0 };
	for (int rpm = 1; rpm <= RPM_MAX; rpm++) {
		for (int b = 0; b < NBURST; b++) {
			char qn[32];
			snprintf(qn, sizeof(qn), "r%db%d", rpm, b);
			int q = id[rpm][b] = quota_find(c, qn);
			cr_assert_geq(q, 0, "%s: %s", qn, quota_strerror(q));
			uint64_t want = expected_capacity((uint64_t)rpm, burst_ppm[b]);
			struct quota_info in;
			cr_assert_eq(quota_info(c, q, &in, sizeof(in)), 0);
			if (in.rate[QUOTA_RPM].capacity != want || in.rate[QUOTA_RPM].available != want) {
				if (wrong_cap++ < 10)
					cr_log_error("rpm %d burst %s: capacity %llu, available %llu, expected %llu", rpm,
						     burst_txt[b], (unsigned long long)in.rate[QUOTA_RPM].capacity,
						     (unsigned long long)in.rate[QUOTA_RPM].available,
						     (unsigned long long)want);
			}
			/* Greedy: 1 request at a time at one instant until refused. */
			uint64_t n = 0;
			int r;
			while ((r = quota_reserve(c, q, &one, 0, &t)) == 0 && n <= want)
				n++;
			reservations += n + 1;
			cr_assert(r == 0 || r == -EAGAIN, "rpm %d burst %s: reserve %s", rpm, burst_txt[b],
				  quota_strerror(r));
			if (n != want && wrong_burst++ < 10)
				cr_log_error("rpm %d burst %s: greedy burst admitted %llu, expected %llu", rpm,
					     burst_txt[b], (unsigned long long)n, (unsigned long long)want);
		}
	}
	/* A period (plus the ns that rounding T' up to whole ns adds, at most
	 * one per unit) later every bucket is full again: exactly the capacity
	 * in one reservation, one more never. */
	cr_assert_eq(quota_clock_set(c, 61 * TL_S), 0);
	uint64_t wrong_one = 0;
	for (int rpm = 1; rpm <= RPM_MAX; rpm++) {
		for (int b = 0; b < NBURST; b++) {
			uint64_t want = expected_capacity((uint64_t)rpm, burst_ppm[b]);
			int q = id[rpm][b];
			int big = quota_reserve(c, q, &(struct quota_cost){ want + 1, 0, 0 }, 0, &t);
			int all = quota_reserve(c, q, &(struct quota_cost){ want, 0, 0 }, 0, &t);
			int more = quota_reserve(c, q, &one, 0, &t);
			if ((big != -E2BIG || all != 0 || more != -EAGAIN) && wrong_one++ < 10)
				cr_log_error("rpm %d burst %s: cost %llu -> %d (want -E2BIG), cost %llu -> %d (want 0), "
					     "then 1 -> %d (want -EAGAIN)", rpm, burst_txt[b],
					     (unsigned long long)want + 1, big, (unsigned long long)want, all, more);
		}
	}
	quota_close(c);
	printf("capacity: %d limits, %llu greedy reservations in %.2f s; wrong capacity %llu, wrong greedy "
	       "burst %llu, wrong single-reservation burst %llu\n", RPM_MAX * NBURST,
	       (unsigned long long)reservations, (v2_now() - t0) / 1e9, (unsigned long long)wrong_cap,
	       (unsigned long long)wrong_burst, (unsigned long long)wrong_one);
	cr_assert_eq(wrong_cap, 0, "%llu limits report a capacity other than ceil(limit * burst)",
		     (unsigned long long)wrong_cap);
	cr_assert_eq(wrong_burst, 0, "%llu limits admit a greedy burst other than their capacity",
		     (unsigned long long)wrong_burst);
	cr_assert_eq(wrong_one, 0, "%llu limits do not admit exactly their capacity at once",
		     (unsigned long long)wrong_one);
}
