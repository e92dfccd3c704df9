/* SPDX-License-Identifier: MIT */
/*
 * test_gcra.c - the arithmetic on the manual clock: admission times, waits
 * and retry delays checked against sequences computed by hand from the
 * definitions in gcra.c (T = period / limit, rounded up to whole ns when it
 * is at least 2^16 ns; capacity = ceil(limit * burst); tau = charge(capacity)).
 */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "gcra.h"
#include "internal.h"
#include "testlib.h"

TestSuite(gcra, .fini = tl_cleanup, .timeout = 60);

static const struct quota_cost ONE_REQ = { 1, 0, 0 };

static int reserve0(quota_client *c, struct quota_cost cost, struct quota_ticket *t)
{
	return quota_reserve(c, 0, &cost, 0, t);
}

static uint64_t avail(quota_client *c, enum quota_limit_kind k)
{
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	return in.rate[k].available;
}

Test(gcra, exact_admission_sequence)
{
	/* rpm 60: T = 1 s; burst 0.05: capacity 3, tau = 3 s. */
	char name[128];
	quota_client *c = tl_manual("seq", "\"rpm\": 60, \"burst\": 0.05", name, sizeof(name));
	struct quota_ticket t;
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(reserve0(c, ONE_REQ, &t), 0, "admission %d at t=0", i);
		cr_assert_eq(quota_ticket_time(&t), 0);
		cr_assert_eq(t.waited_ns, 0);
	}
	/* TAT = 3 s: the next needs TAT + T - tau = 1 s. */
	cr_assert_eq(reserve0(c, ONE_REQ, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 1 * TL_S);
	cr_assert_eq(quota_clock_set(c, TL_S - 1), 0);
	cr_assert_eq(reserve0(c, ONE_REQ, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 1);
	cr_assert_eq(quota_clock_set(c, TL_S), 0);
	cr_assert_eq(reserve0(c, ONE_REQ, &t), 0);
	cr_assert_eq(quota_ticket_time(&t), TL_S);
	/* Steady state: one per second, exactly. */
	for (int s = 2; s < 10; s++) {
		cr_assert_eq(reserve0(c, ONE_REQ, &t), -EAGAIN);
		cr_assert_eq(t.retry_after_ns, TL_S);
		cr_assert_eq(quota_clock_set(c, s * TL_S), 0);
		cr_assert_eq(reserve0(c, ONE_REQ, &t), 0, "second %d", s);
	}
	quota_close(c);
}

Test(gcra, no_extra_admission_after_long_idle)
{
	char name[128];
	quota_client *c = tl_manual("idle", "\"rpm\": 60, \"burst\": 0.05", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, ONE_REQ, &t), 0);
	cr_assert_eq(quota_clock_set(c, 1000 * TL_S), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(reserve0(c, ONE_REQ, &t), 0);
	cr_assert_eq(reserve0(c, ONE_REQ, &t), -EAGAIN, "idle time must not bank beyond capacity");
	cr_assert_eq(t.retry_after_ns, TL_S);
	quota_close(c);
}

Test(gcra, burst_capacity)
{
	/* rpm 1200, burst 0.5: capacity 600, T = 50 ms. */
	char name[128];
	quota_client *c = tl_manual("burst", "\"rpm\": 1200, \"burst\": 0.5", name, sizeof(name));
	struct quota_ticket t;
	for (int i = 0; i < 600; i++)
		cr_assert_eq(reserve0(c, ONE_REQ, &t), 0, "admission %d", i);
	cr_assert_eq(reserve0(c, ONE_REQ, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 50 * TL_MS);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 601, 0, 0 }, &t), -E2BIG);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 600, 0, 0 }, &t), -EAGAIN,
		     "a full-capacity cost is admissible later, not too big");
	quota_close(c);
}

Test(gcra, refund_actual)
{
	/* tpm 60000: T = 1 ms per token; burst 0.01: capacity 600, tau = 600 ms. */
	char name[128];
	quota_client *c = tl_manual("refund", "\"tpm\": 60000, \"burst\": 0.01", name, sizeof(name));
	struct quota_ticket t, u;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 100, 400 }, &t), 0);
	cr_assert_eq(avail(c, QUOTA_TPM), 100);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 100, 100 }), 0);
	cr_assert_eq(avail(c, QUOTA_TPM), 400, "300 unused tokens come back");
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 400, 0 }, &u), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &u), -EAGAIN);
	cr_assert_eq(u.retry_after_ns, 1 * TL_MS);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 100, 100 }), -EINVAL,
		     "a second commit must not refund twice");
	cr_assert_eq(quota_cancel(c, &t), -EINVAL);
	quota_close(c);
}

Test(gcra, refund_none_keeps_the_estimate)
{
	char name[128];
	quota_client *c = tl_manual("nofund", "\"tpm\": 60000, \"burst\": 0.01, \"refund\": \"none\"",
				    name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 100, 400 }, &t), 0);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 100, 100 }), 0);
	cr_assert_eq(avail(c, QUOTA_TPM), 100, "the provider counted max_tokens");
	quota_close(c);
}

Test(gcra, refund_of_a_slot_already_past_is_lost)
{
	char name[128];
	quota_client *c = tl_manual("past", "\"tpm\": 60000, \"burst\": 0.01", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 0, 100 }, &t), 0); /* slot [0, 100 ms) */
	cr_assert_eq(quota_clock_set(c, 200 * TL_MS), 0);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 0, 0 }), 0);
	cr_assert_eq(avail(c, QUOTA_TPM), 600, "full, and not beyond capacity");
	quota_close(c);
}

Test(gcra, debt_is_paid_by_later_reservations)
{
	char name[128];
	quota_client *c = tl_manual("debt", "\"tpm\": 60000, \"burst\": 0.01", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 100, 0 }, &t), 0); /* TAT 100 ms */
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 100, 900 }), 0); /* +900 ms */
	cr_assert_eq(avail(c, QUOTA_TPM), 0);
	/* TAT = 1000 ms; one token needs 1000 + 1 - 600 = 401 ms. */
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 401 * TL_MS);
	quota_close(c);
}

Test(gcra, cancel_gives_everything_back)
{
	char name[128];
	quota_client *c = tl_manual("cancel", "\"rpm\": 60, \"tpm\": 60000, \"burst\": 0.01, "
				    "\"max_inflight\": 1", name, sizeof(name));
	struct quota_ticket t, u;
	struct quota_info in;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 300, 0 }, &t), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &u), -EAGAIN);
	cr_assert_eq(quota_cancel(c, &t), 0);
	cr_assert_eq(avail(c, QUOTA_TPM), 600);
	cr_assert_eq(avail(c, QUOTA_RPM), 1);
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.inflight, 0);
	cr_assert_eq(in.admitted, 0, "a cancelled reservation is not counted as admitted");
	cr_assert_eq(quota_cancel(c, &t), -EINVAL, "nothing is given back twice");
	/* quota_close gives back the in-flight slot of a ticket left open. */
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 300, 0 }, &u), 0);
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.inflight, 1);
	quota_close(c);
	cr_assert_eq(quota_open(name, &c), 0);
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.inflight, 0);
	cr_assert_eq(in.admitted, 1, "the closed client's statistics are kept");
	cr_assert_eq(avail(c, QUOTA_TPM), 300, "tokens already charged stay charged");
	quota_close(c);
}

Test(gcra, all_or_nothing_when_one_limit_is_short)
{
	/* rpm 60 burst 0.05 -> 3 requests; tpm 60000 -> 3000 tokens. */
	char name[128];
	quota_client *c = tl_manual("aon", "\"rpm\": 60, \"tpm\": 60000, \"burst\": 0.05, "
				    "\"max_inflight\": 10", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 3000, 0 }, &t), 0);
	cr_assert_eq(avail(c, QUOTA_RPM), 2);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), -EAGAIN);
	cr_assert_eq(avail(c, QUOTA_RPM), 2, "the refusals charged nothing to rpm");
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.inflight, 1, "nor to in-flight");
	cr_assert_eq(in.rejected[QUOTA_TPM], 5);
	cr_assert_eq(in.rejected[QUOTA_RPM], 0);
	quota_close(c);
}

Test(gcra, never_fits_is_e2big)
{
	char name[128];
	quota_client *c = tl_manual("e2big", "\"rpm\": 60, \"tpm\": 60000, \"context_window\": 1000, "
				    "\"max_inflight\": 2, \"burst\": 0.01", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 600, 401 }, &t), -E2BIG, "context window");
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 601, 0 }, &t), -E2BIG, "tpm capacity");
	cr_assert_eq(reserve0(c, (struct quota_cost){ 3, 1, 0 }, &t), -E2BIG, "max_inflight");
	/* E2BIG wins over what is short now. */
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 600, 0 }, &t), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 601, 0 }, &t), -E2BIG);
	quota_close(c);
}

Test(gcra, spend_budget_is_edquot_until_the_next_day)
{
	/* $1 per Mtok input = 1000 nano-USD per token; $0.001 per day = 1000 tokens. */
	char name[128];
	quota_client *c = tl_manual("spend", "\"price_per_mtok\": {\"input\": 1.0, \"output\": 2.0}, "
				    "\"budget_usd\": {\"day\": 0.001}", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1001, 0 }, &t), -E2BIG);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 600, 0 }, &t), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 600, 0 }, &t), -EDQUOT);
	/* Settle at actual: 300 input + 50 output = 300000 + 100000 nano-USD. */
	struct quota_ticket u;
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 300, 50 }), 0);
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.spent_day_nusd, 400000);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 600, 0 }, &u), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), -EDQUOT);
	cr_assert_eq(quota_commit(c, &u, &(struct quota_cost){ 1, 600, 0 }), 0);
	/* Tomorrow (UTC) the budget is whole again. */
	cr_assert_eq(quota_clock_set(c, 86400 * TL_S), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1000, 0 }, &t), 0);
	quota_close(c);
}

/* Wait (by watching the shared word, not by sleeping) until a child has
 * taken its slot: the rate limit's TAT moves past @old. */
static void wait_tat_past(quota_client *c, int64_t old)
{
	struct qs_quota *q = tl_quota(c, 0);
	while (atomic_load(qs_tat(q, QUOTA_RPM)) <= old)
		sched_yield();
}

Test(gcra, waiters_are_fifo_with_exact_waits)
{
	/* rpm 60, burst 0.01: capacity 1, tau = T = 1 s. */
	char name[128];
	quota_client *c = tl_manual("fifo", "\"rpm\": 60, \"burst\": 0.01", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, ONE_REQ, &t), 0); /* TAT = 1 s */
	int fds[3][2];
	pid_t pids[3];
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(pipe(fds[i]), 0);
		int64_t before = atomic_load(qs_tat(tl_quota(c, 0), QUOTA_RPM));
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0) {
			quota_client *cc;
			int64_t rep[3] = { -1, -1, -1 };
			if (quota_open(name, &cc) == 0) {
				struct quota_ticket ct;
				rep[0] = quota_reserve(cc, 0, &ONE_REQ, 100 * TL_S, &ct);
				rep[1] = ct.waited_ns;
				rep[2] = quota_ticket_time(&ct);
				quota_close(cc);
			}
			(void)!write(fds[i][1], rep, sizeof(rep));
			_exit(0);
		}
		wait_tat_past(c, before);
	}
	/* A fourth, not willing to wait long enough, is refused with the exact
	 * delay and charges nothing. */
	int64_t tat = atomic_load(qs_tat(tl_quota(c, 0), QUOTA_RPM));
	cr_assert_eq(tat, 4 * TL_S);
	cr_assert_eq(quota_reserve(c, 0, &ONE_REQ, 3 * TL_S + TL_S / 2, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 4 * TL_S);
	cr_assert_eq(atomic_load(qs_tat(tl_quota(c, 0), QUOTA_RPM)), tat);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(quota_clock_set(c, (i + 1) * TL_S), 0);
		int64_t rep[3];
		cr_assert_eq(read(fds[i][0], rep, sizeof(rep)), (ssize_t)sizeof(rep));
		cr_assert_eq(rep[0], 0, "waiter %d admitted", i);
		cr_assert_eq(rep[1], (i + 1) * TL_S, "waiter %d waited exactly %d s", i, i + 1);
		cr_assert_eq(rep[2], (i + 1) * TL_S, "waiter %d admitted at its slot", i);
		int st;
		cr_assert_eq(waitpid(pids[i], &st, 0), pids[i]);
	}
	quota_close(c);
}

Test(gcra, one_request_per_day)
{
	char name[128];
	quota_client *c = tl_manual("rpd", "\"rpd\": 1", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, ONE_REQ, &t), 0);
	cr_assert_eq(reserve0(c, ONE_REQ, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 86400 * TL_S);
	cr_assert_eq(quota_clock_set(c, 86400 * TL_S - 1), 0);
	cr_assert_eq(reserve0(c, ONE_REQ, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 1);
	cr_assert_eq(quota_clock_set(c, 86400 * TL_S), 0);
	cr_assert_eq(reserve0(c, ONE_REQ, &t), 0);
	quota_close(c);
}

Test(gcra, a_billion_tokens_per_minute)
{
	/* T = 60 ns per token. */
	char name[128];
	quota_client *c = tl_manual("1e9", "\"tpm\": 1000000000", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 999999999, 0 }, &t), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 60);
	cr_assert_eq(quota_clock_set(c, 600), 0);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), -EAGAIN);
	quota_close(c);
}

Test(gcra, costs_near_two_to_the_forty)
{
	/* tpd 2^40: T = 86400e9 / 2^40 = 78.58 ns; capacity 2^40, tau = 86400 s. */
	char name[128];
	quota_client *c = tl_manual("2p40", "\"tpd\": 1099511627776", name, sizeof(name));
	struct quota_ticket t;
	uint64_t big = (1ULL << 40) - 1;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, (1ULL << 40) + 1, 0 }, &t), -E2BIG);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, big, 0 }, &t), 0);
	/* charge(2^40 - 1) = ceil(86400e9 - 78.58) = 86400e9 - 78; charge(1) = 79:
	 * the next token is admissible 1 ns from now. */
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 1);
	cr_assert_eq(quota_clock_set(c, 1), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), 0);
	quota_close(c);
}

Test(gcra, time_near_the_start_of_the_clock)
{
	/* At t = 0 and 1 ns the bucket is exactly full: capacity, not more. */
	char name[128];
	quota_client *c = tl_manual("t0", "\"tpm\": 60, \"burst\": 0.05", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(quota_now(c), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 2, 0 }, &t), 0);
	cr_assert_eq(quota_clock_set(c, 1), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), 0);
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, TL_S - 1);
	cr_assert_eq(quota_clock_set(c, 0), -EINVAL, "the clock never goes back");
	quota_close(c);
}

Test(gcra, backoff_pauses_the_quota)
{
	char name[128];
	quota_client *c = tl_manual("backoff", "\"rpm\": 6000", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(quota_backoff(c, 0, 5 * TL_S), 0);
	cr_assert_eq(quota_backoff(c, 0, 2 * TL_S), 0, "an earlier deadline does not shorten it");
	cr_assert_eq(reserve0(c, ONE_REQ, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 5 * TL_S);
	cr_assert_eq(quota_clock_set(c, 5 * TL_S), 0);
	cr_assert_eq(reserve0(c, ONE_REQ, &t), 0);
	cr_assert_eq(quota_ticket_time(&t), 5 * TL_S);
	quota_close(c);
}

Test(gcra, charge_is_exact_ceiling)
{
	/* The multiply-only path against 128-bit division, on awkward limits.
	 * Layout 2 charges T' = P/L per unit when P/L < 2^16 ns (fractional,
	 * the multiply-only path proper) and T' = ceil(P/L) above (gcra.c,
	 * CAPACITY), so the reference is ceil(u * T') with that T'. The
	 * limits from 999983 per minute up keep a fractional T'. */
	static const uint64_t limits[] = { 1, 3, 7, 60, 1200, 900000, 999983, 1000003, 7777777,
					   1000000000, 1ULL << 40, 123456789, 86399, 999999999999ULL };
	static const int64_t periods[] = { 60LL * TL_S, 86400LL * TL_S };
	uint64_t x = 88172645463325252ULL;
	int fractional = 0;
	for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
		for (size_t p = 0; p < 2; p++) {
			struct qs_limit_cfg l;
			uint64_t P = (uint64_t)periods[p], L = limits[i];
			bool whole = P % L == 0 || P / L >= 65536;
			fractional += !whole;
			cr_assert_eq(qg_limit_init(&l, 0, L, periods[p], 1000000), 0);
			for (int n = 0; n < 20000; n++) {
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				uint64_t u = n < 1000 ? (uint64_t)n : x % (l.capacity + 1);
				unsigned __int128 want = whole ?
					(unsigned __int128)u * ((P + L - 1) / L) :
					((unsigned __int128)u * P + L - 1) / L;
				cr_assert_eq(qg_charge(&l, u), (uint64_t)want, "limit %llu units %llu",
					     (unsigned long long)L, (unsigned long long)u);
			}
			/* Exact capacity: ceil(limit * burst), tau = its charge. */
			cr_assert_eq(l.capacity, L);
			cr_assert_eq(qg_charge(&l, l.capacity), (uint64_t)l.tau_ns);
			if (whole)
				cr_assert_leq((unsigned __int128)l.capacity * qg_charge(&l, 1),
					      (unsigned __int128)l.tau_ns,
					      "unit steps reach the capacity (limit %llu)",
					      (unsigned long long)L);
		}
	cr_assert_geq(fractional, 6, "the fractional path is exercised");
}

Test(gcra, bad_arguments)
{
	char name[128];
	quota_client *c = tl_manual("args", "\"rpm\": 60", name, sizeof(name));
	struct quota_ticket t;
	struct quota_cost one = { 1, 0, 0 };
	cr_assert_eq(quota_reserve(NULL, 0, &one, 0, &t), -EINVAL);
	cr_assert_eq(quota_reserve(c, 0, NULL, 0, &t), -EINVAL);
	cr_assert_eq(quota_reserve(c, 0, &one, 0, NULL), -EINVAL);
	cr_assert_eq(quota_reserve(c, 0, &one, -1, &t), -EINVAL);
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 0, 0, 0 }, 0, &t), -EINVAL);
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1ULL << 63, 0, 0 }, 0, &t), -EINVAL);
	cr_assert_eq(quota_reserve(c, 1, &one, 0, &t), -ENOENT);
	cr_assert_eq(quota_reserve(c, -1, &one, 0, &t), -ENOENT);
	cr_assert_eq(quota_reserve(c, 1 << 30, &one, 0, &t), -ENOENT);
	cr_assert_eq(quota_find(c, "q"), 0);
	cr_assert_eq(quota_find(c, "nope"), -ENOENT);
	cr_assert_eq(quota_find(c, ""), -EINVAL);
	cr_assert_eq(quota_find(c, NULL), -EINVAL);
	cr_assert_eq(quota_commit(c, NULL, &one), -EINVAL);
	struct quota_ticket garbage;
	memset(&garbage, 0x5a, sizeof(garbage));
	cr_assert_eq(quota_commit(c, &garbage, &one), -EINVAL);
	cr_assert_eq(quota_cancel(c, &garbage), -EINVAL);
	cr_assert_eq(quota_backoff(c, 0, -1), -EINVAL);
	cr_assert_eq(quota_clock_set(c, -5), -EINVAL);
	cr_assert_str_neq(quota_strerror(-EAGAIN), "unknown error");
	quota_close(NULL);
	/* A handle copied into a forked child must be reopened there. */
	pid_t pid = fork();
	if (pid == 0)
		_exit(quota_reserve(c, 0, &one, 0, &t) == -ECHILD ? 0 : 1);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child must get -ECHILD");
	quota_close(c);
}

Test(gcra, monotonic_segment_refuses_clock_set)
{
	char name[128], json[256];
	tl_name(name, sizeof(name), "mono");
	snprintf(json, sizeof(json), "{\"quotas\": {\"q\": {\"rpm\": 60}}}");
	tl_create(name, json);
	quota_client *c;
	cr_assert_eq(quota_open(name, &c), 0);
	cr_assert_eq(quota_clock_set(c, 5), -EPERM);
	cr_assert_gt(quota_now(c), 0);
	quota_close(c);
}

Test(gcra, refunds_during_a_wait_keep_the_waiter_in_place)
{
	/* rpm 60 burst 0.01: capacity 1, tau 1 s (binds); tpm 60000 burst 0.01:
	 * capacity 600, tau 600 ms. */
	char name[128];
	quota_client *c = tl_manual("wref", "\"rpm\": 60, \"tpm\": 60000, \"burst\": 0.01", name,
				    sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 100, 0 }, &t), 0); /* rpm TAT 1 s */
	int fd[2];
	cr_assert_eq(pipe(fd), 0);
	int64_t before = atomic_load(qs_tat(tl_quota(c, 0), QUOTA_RPM));
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		quota_client *cc;
		int64_t rep[2] = { -1, -1 };
		if (quota_open(name, &cc) == 0) {
			struct quota_ticket ct;
			rep[0] = quota_reserve(cc, 0, &(struct quota_cost){ 1, 100, 0 }, 10 * TL_S, &ct);
			rep[1] = quota_ticket_time(&ct);
			quota_close(cc);
		}
		(void)!write(fd[1], rep, sizeof(rep));
		_exit(0);
	}
	wait_tat_past(c, before);
	/* The waiter's tpm slot starts tau/8 = 75 ms after its admission time
	 * (1 s): [1.075 s, 1.175 s). */
	cr_assert_eq(atomic_load(qs_tat(tl_quota(c, 0), QUOTA_TPM)), 1175 * TL_MS);
	/* 50 of our 100 tokens come back while it waits (a refund that moves its
	 * tpm slot by 50 ms, within its 75 ms of room). */
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 50, 0 }), 0);
	cr_assert_eq(quota_clock_set(c, TL_S), 0);
	int64_t rep[2];
	cr_assert_eq(read(fd[0], rep, sizeof(rep)), (ssize_t)sizeof(rep));
	cr_assert_eq(rep[0], 0);
	cr_assert_eq(rep[1], TL_S, "admitted at its place in line, not requeued");
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	quota_close(c);
}

Test(gcra, absurd_debt_saturates_instead_of_overflowing)
{
	/* Usage reported in bytes instead of tokens, again and again: the TAT
	 * saturates (UBSan would flag an overflow in the sanitizer build). */
	char name[128];
	quota_client *c = tl_manual("debt2", "\"tpd\": 1000000", name, sizeof(name));
	struct quota_ticket t[4];
	for (int i = 0; i < 4; i++)
		cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 1 }, &t[i]), 0);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(quota_commit(c, &t[i], &(struct quota_cost){ 1, 1, 1ULL << 62 }), 0);
	int64_t tat = atomic_load(qs_tat(tl_quota(c, 0), QUOTA_TPD));
	cr_assert_gt(tat, 0);
	cr_assert_leq(tat, INT64_MAX / 2);
	struct quota_ticket u;
	cr_assert_eq(reserve0(c, (struct quota_cost){ 1, 1, 0 }, &u), -EAGAIN);
	cr_assert_gt(u.retry_after_ns, 0);
	quota_close(c);
}

Test(gcra, a_refunder_that_dies_mid_refund_is_audited)
{
	/* A process killed between refund_begun and refund_done leaves a gap
	 * that every later ticket would count as movement; reclaiming its slot
	 * closes it, but only when no live process is refunding that limit. */
	char name[128];
	quota_client *c = tl_manual("rfdead", "\"rpm\": 60, \"burst\": 0.05", name, sizeof(name));
	int fd[2], go[2];
	cr_assert_eq(pipe(fd), 0);
	cr_assert_eq(pipe(go), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		quota_client *cc;
		char b = quota_open(name, &cc) == 0 ? 'y' : 'n';
		(void)!write(fd[1], &b, 1);
		(void)!read(go[0], &b, 1); /* killed while waiting here */
		_exit(0);
	}
	char b;
	cr_assert_eq(read(fd[0], &b, 1), 1);
	cr_assert_eq(b, 'y');
	uint32_t slot = UINT32_MAX;
	for (uint32_t s = 0; s < c->g.client_capacity; s++) {
		uint64_t w = atomic_load(&qs_client_at(&c->g, s)->state);
		if (QS_CLIENT_STATUS(w) == QS_CLIENT_LIVE && QS_CLIENT_PID(w) == pid)
			slot = s;
	}
	cr_assert_neq(slot, UINT32_MAX);
	struct qs_client *cs = qs_client_at(&c->g, slot);
	struct qs_quota *q = tl_quota(c, 0);
	/* Forge the death: journalled refund of the rpm limit (kind + 1 << 32 |
	 * quota id + 1), begun moved, done not. */
	uint64_t key = ((uint64_t)(QUOTA_RPM + 1) << 32) | 1;
	atomic_store(&cs->refund_intent, key);
	atomic_fetch_add(&q->refund_begun[QUOTA_RPM], 3 * TL_S);
	kill(pid, SIGKILL);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	/* Our own (live) slot journals a refund on the same limit: wait. */
	atomic_store(&c->first->cs->refund_intent, key);
	struct qc_reclaim_counts counts = { 0 };
	cr_assert_eq(qc_reclaim_group(&c->g, &slot, 1, &counts), -EAGAIN);
	cr_assert_neq(atomic_load(&q->refund_begun[QUOTA_RPM]), atomic_load(&q->refund_done[QUOTA_RPM]));
	atomic_store(&c->first->cs->refund_intent, 0);
	cr_assert_eq(qc_reclaim_group(&c->g, &slot, 1, &counts), 0);
	cr_assert_eq(atomic_load(&q->refund_begun[QUOTA_RPM]), atomic_load(&q->refund_done[QUOTA_RPM]),
		     "the gap is closed");
	cr_assert_eq(QS_CLIENT_STATUS(atomic_load(&cs->state)), QS_CLIENT_FREE);
	quota_close(c);
}
