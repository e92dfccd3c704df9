/* SPDX-License-Identifier: MIT */
/*
 * test_sim_bucket.c - the referee's own arithmetic (tools/sim/bucket.c) and
 * header format (tools/sim/format.c): exact continuous refill, the cap,
 * waits rounded up, refunds capped, per-day periods and large limits; and
 * every reset duration the simulator prints parses back (with libquota's
 * quota_parse_duration) to no less than the true value and at most 10 ms
 * more.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "bucket.h"
#include "format.h"
#include "quota.h"

#define S INT64_C(1000000000)
#define MIN (60 * S)
#define DAY (86400 * S)

Test(sim_bucket, starts_full_and_takes)
{
	struct bucket b;

	bucket_init(&b, 1200, 1200, MIN, 1000);
	cr_expect_eq(bucket_remaining(&b), 1200);
	cr_expect_eq(bucket_reset_ns(&b), 0);
	cr_expect_eq(bucket_wait_ns(&b, 1200), 0);
	cr_expect_eq(bucket_wait_ns(&b, 1201), -1, "above capacity: never");
	bucket_take(&b, 1200);
	cr_expect_eq(bucket_remaining(&b), 0);
	/* 1200 per minute: one every 50 ms exactly. */
	cr_expect_eq(bucket_wait_ns(&b, 1), 50000000);
	cr_expect_eq(bucket_wait_ns(&b, 2), 100000000);
	cr_expect_eq(bucket_reset_ns(&b), MIN);
	bucket_refill(&b, 1000 + 49999999);
	cr_expect_eq(bucket_wait_ns(&b, 1), 1);
	cr_expect_eq(bucket_remaining(&b), 0);
	bucket_refill(&b, 1000 + 50000000);
	cr_expect_eq(bucket_wait_ns(&b, 1), 0);
	cr_expect_eq(bucket_remaining(&b), 1);
}

Test(sim_bucket, uneven_rate_rounds_waits_up)
{
	struct bucket b;

	/* 90000 per minute: 2/3 ms per token, not a whole number of ns. */
	bucket_init(&b, 90000, 11250, MIN, 0);
	bucket_take(&b, 11250);
	cr_expect_eq(bucket_wait_ns(&b, 1), 666667);
	cr_expect_eq(bucket_wait_ns(&b, 3), 2000000);
	bucket_refill(&b, 666666);
	cr_expect_eq(bucket_remaining(&b), 0);
	cr_expect_eq(bucket_wait_ns(&b, 1), 1);
	bucket_refill(&b, 2000000);
	cr_expect_eq(bucket_remaining(&b), 3);
	cr_expect_eq(bucket_wait_ns(&b, 3), 0);
}

Test(sim_bucket, cap_drops_refill)
{
	struct bucket b;

	bucket_init(&b, 60, 10, MIN, 0);
	bucket_take(&b, 5);
	bucket_refill(&b, 3600 * S); /* an hour: still only the capacity */
	cr_expect_eq(bucket_remaining(&b), 10);
	cr_expect_eq(bucket_reset_ns(&b), 0);
	bucket_take(&b, 10);
	bucket_refill(&b, 3600 * S + 4 * S); /* 4 s at 1/s */
	cr_expect_eq(bucket_remaining(&b), 4);
}

Test(sim_bucket, time_backwards_adds_nothing)
{
	struct bucket b;

	bucket_init(&b, 60, 60, MIN, 10 * S);
	bucket_take(&b, 60);
	bucket_refill(&b, 5 * S);
	cr_expect_eq(bucket_remaining(&b), 0);
	bucket_refill(&b, 11 * S);
	cr_expect_eq(bucket_remaining(&b), 1);
}

Test(sim_bucket, refund_is_capped)
{
	struct bucket b;

	bucket_init(&b, 1000, 1000, MIN, 0);
	bucket_take(&b, 600);
	bucket_give(&b, 100);
	cr_expect_eq(bucket_remaining(&b), 500);
	bucket_give(&b, 100000);
	cr_expect_eq(bucket_remaining(&b), 1000);
	bucket_give(&b, UINT64_MAX);
	cr_expect_eq(bucket_remaining(&b), 1000);
}

/* --charge usage: output charged when a response ends may go beyond the
 * level; refills pay that debt before anything is available again. */
Test(sim_bucket, charge_after_the_fact_is_debt)
{
	struct bucket b;

	bucket_init(&b, 1200, 100, MIN, 0); /* 20 per second */
	bucket_take(&b, 60);
	bucket_charge(&b, 30);
	cr_expect_eq(bucket_remaining(&b), 10);
	bucket_charge(&b, 50); /* 40 beyond the level: 2 s of debt */
	cr_expect_eq(bucket_remaining(&b), 0);
	cr_expect_eq(bucket_wait_ns(&b, 1), 2 * S + 50000000);
	cr_expect_eq(bucket_reset_ns(&b), 7 * S);
	bucket_refill(&b, 2 * S);
	cr_expect_eq(bucket_remaining(&b), 0);
	cr_expect_eq(bucket_wait_ns(&b, 1), 50000000);
	bucket_refill(&b, 3 * S);
	cr_expect_eq(bucket_remaining(&b), 20);
}

Test(sim_bucket, per_day_and_large_limits)
{
	struct bucket b;

	/* 1 request per day. */
	bucket_init(&b, 1, 1, DAY, 0);
	bucket_take(&b, 1);
	cr_expect_eq(bucket_wait_ns(&b, 1), DAY);
	bucket_refill(&b, DAY - 1);
	cr_expect_eq(bucket_remaining(&b), 0);
	bucket_refill(&b, DAY);
	cr_expect_eq(bucket_remaining(&b), 1);

	/* 10^12 tokens per day: products beyond 64 bits. */
	bucket_init(&b, UINT64_C(1000000000000), UINT64_C(1000000000000), DAY, 0);
	cr_expect_eq(bucket_remaining(&b), UINT64_C(1000000000000));
	bucket_take(&b, UINT64_C(1000000000000));
	cr_expect_eq(bucket_reset_ns(&b), DAY);
	bucket_refill(&b, DAY / 2);
	cr_expect_eq(bucket_remaining(&b), UINT64_C(500000000000));
}

Test(sim_bucket, limit_zero_never_refuses)
{
	struct bucket b;

	bucket_init(&b, 0, 1, MIN, 0);
	cr_expect_eq(bucket_wait_ns(&b, UINT64_MAX), 0);
	bucket_take(&b, 1000);
	cr_expect_eq(bucket_wait_ns(&b, 1000), 0);
	cr_expect_eq(bucket_reset_ns(&b), 0);
}

/* The referee's bound: over any run, taken - given <= cap + rate * time. */
Test(sim_bucket, bound_holds_under_greedy_use)
{
	struct bucket b;
	uint64_t taken = 0, seed = 12345;
	int64_t t = 0;

	bucket_init(&b, 90000, 11250, MIN, 0);
	for (int i = 0; i < 200000; i++) {
		uint64_t cost;
		int64_t w;

		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		cost = 1 + (seed >> 33) % 400;
		t += (int64_t)((seed >> 13) % 1000000);
		bucket_refill(&b, t);
		w = bucket_wait_ns(&b, cost);
		if (w == 0) {
			bucket_take(&b, cost);
			taken += cost;
		}
		/* taken <= cap + 90000 * t / 60 s, in integers */
		cr_assert((unsigned __int128)taken * MIN <=
				  (unsigned __int128)11250 * MIN + (unsigned __int128)90000 * (uint64_t)t,
			  "over the bound at step %d", i);
	}
}

Test(sim_format, reset_formats)
{
	static const struct {
		int64_t ns;
		const char *want;
	} cases[] = {
		{ 0, "0s" },
		{ -5, "0s" },
		{ 1, "1ms" },
		{ 120000000, "120ms" },
		{ 120000001, "121ms" },
		{ 999000000, "999ms" },
		{ 999000001, "1s" },
		{ S, "1s" },
		{ 7660000000, "7.66s" },
		{ 7600000000, "7.6s" },
		{ 7650000001, "7.66s" },
		{ 179560000000, "2m59.56s" },
		{ 360 * S, "6m0s" },
		{ 3723 * S, "1h2m3s" },
		{ DAY, "24h0m0s" },
	};
	char buf[32];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		sim_fmt_reset(cases[i].ns, buf, sizeof(buf));
		cr_expect_str_eq(buf, cases[i].want, "%lld ns", (long long)cases[i].ns);
	}
}

Test(sim_format, parses_back_rounded_up)
{
	uint64_t seed = 99;

	for (int i = 0; i < 100000; i++) {
		char buf[32];
		int64_t ns, back = -1;

		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		ns = (int64_t)((seed >> 11) % (uint64_t)(2 * DAY));
		if (i % 3 == 0)
			ns %= 2 * S; /* plenty of sub-second values too */
		sim_fmt_reset(ns, buf, sizeof(buf));
		cr_assert_eq(quota_parse_duration(buf, &back), 0, "\"%s\" does not parse", buf);
		cr_assert(back >= ns && back <= ns + 10000000, "%lld ns printed as \"%s\" = %lld ns",
			  (long long)ns, buf, (long long)back);
	}
}
