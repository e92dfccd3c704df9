/* SPDX-License-Identifier: MIT */
/*
 * test_fairness.c - order of admission under saturation (quota.h: rate
 * waiters are admitted in the order they took their place). On the manual
 * clock, with a quota whose token bucket is empty, 12 processes arrive one
 * after another (each starts only when the previous one holds its place in
 * line) with very different costs. Exact expectations: waiter i is admitted
 * at the instant the tokens of waiters 0..i have been paid for at the
 * limit's rate, E_i = T * sum(cost_0..i), never earlier, and in arrival
 * order - a cheap late arrival never overtakes an expensive early one. The
 * clock moves to E_i only after waiter i-1 has reported, so the instant each
 * waiter returns at tells the order exactly. A reservation whose timeout is
 * too short is refused at once, with the exact retry time, and takes no
 * place.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "internal.h"
#include "testlib.h"
#include "v2lib.h"

#define N 12
static const uint64_t cost_of[N] = { 300, 10, 50, 10, 120, 1, 200, 10, 30, 10, 5, 64 };
#define T_NS 100000000LL /* tpm 600: 0.1 s per token */
#define TAU_NS (60 * TL_S)

struct report {
	int32_t i;
	int32_t err;
	int64_t ticket_time, now, waited;
};

static pid_t kids[N];

static void kill_kids(void)
{
	tl_kill_children(kids, N);
}

static void waiter(const char *name, int i, int go, int out)
{
	struct report rep = { .i = i };
	quota_client *c;
	rep.err = tl_child_open(name, go, &c);
	if (rep.err == 0) {
		struct quota_ticket t;
		rep.err = quota_reserve(c, 0, &(struct quota_cost){ 1, cost_of[i], 0 }, 1000 * TL_S, &t);
		rep.now = quota_now(c);
		if (rep.err == 0) {
			rep.ticket_time = quota_ticket_time(&t);
			rep.waited = t.waited_ns;
			quota_commit(c, &t, &(struct quota_cost){ 1, cost_of[i], 0 });
		}
	}
	if (write(out, &rep, sizeof(rep)) != sizeof(rep))
		_exit(2);
	_exit(0);
}

static bool read_report(int fd, struct report *rep)
{
	struct pollfd p = { fd, POLLIN, 0 };
	return poll(&p, 1, 10000) == 1 && read(fd, rep, sizeof(*rep)) == sizeof(*rep);
}

Test(v2_fairness, rate_waiters_in_arrival_order, .timeout = 60, .fini = kill_kids)
{
	char name[128];
	quota_client *c = tl_manual("fair", "\"rpm\": 60, \"tpm\": 600, \"burst\": 1", name, sizeof(name));
	struct qs_quota *q = tl_quota(c, 0);
	_Atomic int64_t *tpm = qs_tat(q, QUOTA_TPM);
	struct quota_ticket t0;
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 600, 0 }, 0, &t0), 0, "the whole token burst");
	cr_assert_eq(atomic_load(tpm), TAU_NS);

	int out[2];
	cr_assert_eq(pipe(out), 0);
	int go[N];
	int64_t expect[N], tat = TAU_NS;
	for (int i = 0; i < N; i++) {
		int p[2];
		cr_assert_eq(pipe(p), 0);
		kids[i] = fork();
		cr_assert_geq(kids[i], 0);
		if (kids[i] == 0) {
			close(p[1]);
			waiter(name, i, p[0], out[1]);
		}
		close(p[0]);
		go[i] = p[1];
	}
	close(out[1]);
	for (int i = 0; i < N; i++) {
		/* Arrival i: go, then wait until its place is taken (the token
		 * limit's TAT moved by exactly its cost). */
		cr_assert_eq(write(go[i], "g", 1), 1);
		tat += (int64_t)cost_of[i] * T_NS;
		expect[i] = tat - TAU_NS;
		cr_assert(tl_until_word(tpm, tat), "waiter %d did not take its place: TAT %lld, expected %lld", i,
			  (long long)atomic_load(tpm), (long long)tat);
		if (i == 3) {
			/* Too short a timeout: refused at once, exact retry time, no place. */
			struct quota_ticket t;
			int64_t need = tat + 10 * T_NS - TAU_NS;
			cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 0 }, need - 1, &t), -EAGAIN);
			cr_assert_eq(t.retry_after_ns, need, "retry after %lld, expected %lld",
				     (long long)t.retry_after_ns, (long long)need);
			cr_assert_eq(atomic_load(tpm), tat, "a refused reservation took a place");
		}
	}
	/* Nobody is admitted before the clock moves. */
	struct pollfd pf = { out[0], POLLIN, 0 };
	cr_assert_eq(poll(&pf, 1, 0), 0, "a waiter returned before its time");
	for (int i = 0; i < N; i++) {
		cr_assert_eq(quota_clock_set(c, expect[i]), 0);
		struct report rep;
		cr_assert(read_report(out[0], &rep), "waiter %d not admitted at its time %.1f s", i, expect[i] / 1e9);
		cr_assert_eq(rep.err, 0, "waiter %d: %s", rep.i, quota_strerror(rep.err));
		cr_assert_eq(rep.i, i, "waiter %d admitted when waiter %d's turn came (%.1f s): not in arrival order",
			     rep.i, i, expect[i] / 1e9);
		cr_assert_eq(rep.ticket_time, expect[i], "waiter %d: admission time %lld, expected %lld", i,
			     (long long)rep.ticket_time, (long long)expect[i]);
		cr_assert_eq(rep.now, expect[i], "waiter %d returned at %lld, expected %lld", i, (long long)rep.now,
			     (long long)expect[i]);
		cr_assert_eq(rep.waited, expect[i], "waiter %d: waited_ns %lld", i, (long long)rep.waited);
	}
	for (int i = 0; i < N; i++) {
		int st;
		cr_assert_eq(waitpid(kids[i], &st, 0), kids[i]);
		kids[i] = 0;
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "waiter %d exit status %d", i, st);
		close(go[i]);
	}
	close(out[0]);
	printf("fairness: %d waiters with costs 1..300 tokens admitted in arrival order at the exact instants "
	       "(last at %.1f s)\n", N, expect[N - 1] / 1e9);
	quota_close(c);
}
