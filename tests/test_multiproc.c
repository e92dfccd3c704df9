/* SPDX-License-Identifier: MIT */
/*
 * test_multiproc.c - contracts 1 and 3 on the real clock: 8 forked processes
 * hammer one quota (rpm, tpm, max_inflight) with random costs for a few
 * seconds, logging every admission. Afterwards, for every limit and every
 * window between two admissions, the admitted cost is at most r*W + b; the
 * in-flight count never exceeded its maximum; and the binding limit was used
 * at >= 99 % of what it allowed.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "testlib.h"

#define NPROC 8
#define MAXREC 40000
#define RUN_NS (3 * TL_S)
#define MAX_INFLIGHT 4

struct rec {
	int64_t admitted_at; /* quota_ticket_time() */
	int64_t held_from;   /* monotonic time right after reserve returned */
	int64_t held_to;     /* monotonic time right before commit */
	uint64_t tokens;     /* actual input + output, as committed */
};

struct shared {
	_Atomic uint32_t n;
	_Atomic uint32_t errors;
	int64_t t0;
	struct rec rec[MAXREC];
};

static int64_t mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * TL_S + ts.tv_nsec;
}

static void worker(const char *name, struct shared *sh, int gate, unsigned seed)
{
	quota_client *c;
	char b;
	if (quota_open(name, &c) < 0) {
		atomic_fetch_add(&sh->errors, 1);
		return;
	}
	int id = quota_find(c, "q");
	if (read(gate, &b, 1) < 0) /* the barrier: returns when the parent closes it */
		atomic_fetch_add(&sh->errors, 1);
	uint64_t x = seed * 2654435761u + 1;
	while (mono() < sh->t0 + RUN_NS) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		uint64_t in = 20 + x % 60, out = 20 + (x >> 8) % 60;
		struct quota_ticket t;
		int r = quota_reserve(c, id, &(struct quota_cost){ 1, in, out }, 200 * TL_MS, &t);
		if (r == -EAGAIN)
			continue;
		if (r < 0) {
			atomic_fetch_add(&sh->errors, 1);
			break;
		}
		int64_t from = mono();
		/* The "API call": a short random pause (work being simulated, not
		 * synchronisation). */
		struct timespec call = { 0, (long)((x >> 16) % 400000) };
		nanosleep(&call, NULL);
		/* Half of the calls use fewer output tokens than reserved. */
		uint64_t actual_out = (x >> 24) & 1 ? out : (x >> 32) % (out + 1);
		int64_t to = mono();
		uint32_t i = atomic_fetch_add(&sh->n, 1);
		if (i < MAXREC)
			sh->rec[i] = (struct rec){ quota_ticket_time(&t), from, to, in + actual_out };
		if (quota_commit(c, &t, &(struct quota_cost){ 1, in, actual_out }) < 0)
			atomic_fetch_add(&sh->errors, 1);
	}
	quota_close(c);
}

static int by_time(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	return (x->admitted_at > y->admitted_at) - (x->admitted_at < y->admitted_at);
}

/* Largest excess of sum(cost) over r*W + b, scaled by P, over all windows
 * [a_i, a_j]: must be <= 0. Returns the worst excess in units. */
static double worst_window(const struct rec *r, uint32_t n, bool tokens, uint64_t limit,
			   int64_t period, uint64_t cap)
{
	double worst = -1e300;
	for (uint32_t i = 0; i < n; i++) {
		__int128 sum = 0;
		for (uint32_t j = i; j < n; j++) {
			sum += tokens ? r[j].tokens : 1;
			__int128 lhs = sum * period;
			__int128 rhs = (__int128)limit * (r[j].admitted_at - r[i].admitted_at) +
				       (__int128)cap * period;
			double excess = (double)(lhs - rhs) / (double)period;
			if (excess > worst)
				worst = excess;
		}
	}
	return worst;
}

Test(multiproc, bound_inflight_and_utilisation, .timeout = 120)
{
	char name[128], json[512];
	tl_name(name, sizeof(name), "mp");
	/* tpm binds: 100k tokens/s against ~100 tokens per call; rpm allows 2000/s. */
	snprintf(json, sizeof(json),
		 "{\"quotas\": {\"q\": {\"rpm\": 120000, \"tpm\": 6000000, \"max_inflight\": %d, "
		 "\"burst\": 0.05}}}", MAX_INFLIGHT);
	tl_create(name, json);

	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(sh, MAP_FAILED);
	int gate[2];
	cr_assert_eq(pipe(gate), 0);
	pid_t pids[NPROC];
	for (int i = 0; i < NPROC; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0) {
			close(gate[1]);
			worker(name, sh, gate[0], (unsigned)i + 1);
			_exit(0);
		}
	}
	close(gate[0]);
	sh->t0 = mono();
	close(gate[1]); /* release every worker at once */
	tl_reap(pids, NPROC);
	cr_assert_eq(atomic_load(&sh->errors), 0);
	uint32_t n = atomic_load(&sh->n);
	cr_assert_lt(n, MAXREC, "log overflow");
	cr_assert_gt(n, 1000, "only %u admissions", n);

	quota_client *c;
	cr_assert_eq(quota_open(name, &c), 0);
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	quota_close(c);
	cr_assert_eq(in.admitted, n);
	cr_assert_eq(in.inflight, 0);

	qsort(sh->rec, n, sizeof(sh->rec[0]), by_time);
	const int64_t minute = 60 * TL_S;
	double w_req = worst_window(sh->rec, n, false, in.rate[QUOTA_RPM].limit, minute,
				    in.rate[QUOTA_RPM].capacity);
	double w_tok = worst_window(sh->rec, n, true, in.rate[QUOTA_TPM].limit, minute,
				    in.rate[QUOTA_TPM].capacity);
	cr_log_info("%u admissions; worst window excess: requests %.3f, tokens %.3f (must be <= 0)",
		    n, w_req, w_tok);
	cr_assert_leq(w_req, 0.0, "requests over r*W + b by %.3f", w_req);
	cr_assert_leq(w_tok, 0.0, "tokens over r*W + b by %.3f", w_tok);

	/* In flight: the [held_from, held_to] intervals lie inside the slot
	 * holding times, so their overlap can never exceed the maximum. */
	int max_seen = 0;
	for (uint32_t i = 0; i < n; i++) {
		int overlap = 0;
		for (uint32_t j = 0; j < n; j++)
			if (sh->rec[j].held_from <= sh->rec[i].held_from &&
			    sh->rec[j].held_to >= sh->rec[i].held_from)
				overlap++;
		if (overlap > max_seen)
			max_seen = overlap;
	}
	cr_assert_leq(max_seen, MAX_INFLIGHT, "%d in flight at once", max_seen);

	/* Utilisation of the binding limit (tpm) over [t0, t0 + RUN]: it allowed
	 * b + r * RUN tokens. */
	uint64_t used = 0;
	int64_t end = sh->t0 + RUN_NS;
	for (uint32_t i = 0; i < n; i++)
		if (sh->rec[i].admitted_at <= end)
			used += sh->rec[i].tokens;
	double allowed = (double)in.rate[QUOTA_TPM].capacity +
			 (double)in.rate[QUOTA_TPM].limit * (double)RUN_NS / (double)minute;
	double util = (double)used / allowed;
	cr_log_info("tpm utilisation %.4f (%llu of %.0f tokens), max in flight seen %d", util,
		    (unsigned long long)used, allowed, max_seen);
	printf("multiproc: %u admissions by %d processes in %.1f s; tpm used %.2f %% of allowed; "
	       "worst window excess requests %.3f tokens %.3f; max in flight %d/%d\n",
	       n, NPROC, RUN_NS / 1e9, util * 100, w_req, w_tok, max_seen, MAX_INFLIGHT);
	cr_assert_geq(util, 0.99, "binding limit used at %.4f", util);
	munmap(sh, sizeof(*sh));
}
