/* SPDX-License-Identifier: MIT */
/*
 * test_fifo.c - the order of lower-lane waiters (waitline.c), on the manual
 * clock where every instant is exact. tpm 600 (0.1 s a token, b = 600), the
 * top lane keeping 120: after the batch lane is filled, a batch cost c is
 * admitted T * c after the TAT leaves the batch lane's tolerance, so waiter
 * i's turn comes at E_i = T * (sum of the costs admitted before it + c_i)
 * after the start. Waiters arrive one after another, each only once the one
 * before is seen waiting in its client slot, with very different costs: a
 * cheap late one would be admitted before an expensive early one if they
 * had no order. The clock moves to E_i only after waiter i-1 has reported,
 * so the instant each returns at tells the order exactly.
 *   order      processes, in arrival order; a top-lane reservation is
 *              admitted past them at once, a top-lane waiter before them
 *   harm       a waiter that times out, one that is stopped, one that is
 *              killed: the waiters behind go on at its deadline, at its
 *              deadline, at its reclamation
 *   threads    threads of one process on two handles, in arrival order;
 *              a waiter of another quota's line is not held up by them
 *   quotad     real clock, real quotad: a waiter killed in line is
 *              reclaimed, and the one behind is woken and admitted
 *   scan_cost  what one scan of the client table costs (printed)
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ctllib.h"
#include "internal.h"
#include "testlib.h"

#define T_NS 100000000LL       /* tpm 600: 0.1 s a token */
#define TAU_B_NS (48 * TL_S)   /* the batch lane's tolerance: b - 120 tokens */
#define TAU_NS (60 * TL_S)
#define LANES "\"tpm\": 600, \"burst\": 1, \"lanes\": {\"interactive\": {\"headroom\": 0.2}, \"batch\": {}}"
#define MAXW 12

struct job {
	uint32_t lane;
	uint64_t cost;
	int64_t timeout;
	int64_t since; /* queued_since_ns; 0: the call's start */
};

struct report {
	int32_t i;
	int32_t err;
	int64_t ticket_time, now;
};

static pid_t kids[MAXW];

static void kill_kids(void)
{
	tl_kill_children(kids, MAXW);
}

static struct quota_reserve_opts lane_opts(uint32_t lane)
{
	struct quota_reserve_opts o;
	quota_reserve_opts_init(&o, sizeof(o));
	o.lane = lane;
	return o;
}

static void child(const char *name, int i, const struct job *j, int go, int out)
{
	struct report rep = { .i = i };
	quota_client *c;
	rep.err = tl_child_open(name, go, &c);
	if (rep.err == 0) {
		struct quota_reserve_opts o = lane_opts(j->lane);
		o.queued_since_ns = j->since;
		struct quota_ticket t;
		rep.err = quota_reserve_ex(c, 0, &(struct quota_cost){ 1, j->cost, 0 }, j->timeout, &o, &t);
		rep.now = quota_now(c);
		if (rep.err == 0)
			rep.ticket_time = quota_ticket_time(&t);
	}
	if (write(out, &rep, sizeof(rep)) != sizeof(rep))
		_exit(2);
	_exit(0);
}

/* Fork one child per job, each held until its go pipe is written. */
static void fork_kids(const char *name, const struct job *jobs, int n, int go[], int *out)
{
	int p[2];
	cr_assert_eq(pipe(p), 0);
	for (int i = 0; i < n; i++) {
		int g[2];
		cr_assert_eq(pipe(g), 0);
		kids[i] = fork();
		cr_assert_geq(kids[i], 0);
		if (kids[i] == 0) {
			close(g[1]);
			close(p[0]);
			child(name, i, &jobs[i], g[0], p[1]);
		}
		close(g[0]);
		go[i] = g[1];
	}
	close(p[1]);
	*out = p[0];
}

static void reap_kids(int n)
{
	for (int i = 0; i < n; i++) {
		int st;
		cr_assert_eq(waitpid(kids[i], &st, 0), kids[i]);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d exit status %d", i, st);
		kids[i] = 0;
	}
}

/* How many live slots wait in line @line (the test reads what waitline.c
 * publishes, as a scan does). */
static int waiting(quota_client *c, uint64_t line)
{
	int n = 0;
	for (uint32_t s = 0; s < c->g.client_capacity; s++) {
		struct qs_client *cs = qs_client_at(&c->g, s);
		if (QS_CLIENT_STATUS(atomic_load(&cs->state)) == QS_CLIENT_LIVE &&
		    atomic_load(&cs->wait_key) && QS_WAIT_LINE(atomic_load(&cs->wait_key)) == line)
			n++;
	}
	return n;
}

struct line_is {
	quota_client *c;
	uint64_t line;
	int n;
};

static bool line_is(void *arg)
{
	struct line_is *x = arg;
	return waiting(x->c, x->line) == x->n;
}

/* tl_until() @n slots wait in @line. */
static bool until_waiting(quota_client *c, uint64_t line, int n)
{
	return tl_until(line_is, &(struct line_is){ c, line, n });
}

static struct report next_report(int fd)
{
	struct pollfd p = { fd, POLLIN, 0 };
	struct report rep = { .i = -1 };
	cr_assert_eq(poll(&p, 1, 10000), 1, "no waiter returned within 10 s");
	cr_assert_eq(read(fd, &rep, sizeof(rep)), (ssize_t)sizeof(rep));
	return rep;
}

static bool nothing_reported(int fd)
{
	struct pollfd p = { fd, POLLIN, 0 };
	return poll(&p, 1, 0) == 0;
}

/* Quota 0 with its batch lane full: the TAT at @t0 + 48 s. */
static quota_client *filled(const char *tag, char *name, size_t len, int64_t *t0, int64_t *tat)
{
	quota_client *c = tl_manual(tag, LANES, name, len);
	struct quota_reserve_opts batch = lane_opts(1);
	struct quota_ticket t;
	*t0 = quota_now(c);
	cr_assert_eq(quota_reserve_ex(c, 0, &(struct quota_cost){ 1, 480, 0 }, 0, &batch, &t), 0);
	*tat = *t0 + 480 * T_NS;
	cr_assert_eq(atomic_load(qs_tat(tl_quota(c, 0), QUOTA_TPM)), *tat);
	return c;
}

/* Waiters 0..@n-1 arrive at t0 + 1 + i ns, each once the one before waits. */
static void arrive(quota_client *c, int64_t t0, const int go[], int n)
{
	for (int i = 0; i < n; i++) {
		cr_assert_eq(quota_clock_set(c, t0 + 1 + i), 0);
		cr_assert_eq(write(go[i], "g", 1), 1);
		cr_assert(until_waiting(c, QS_WAIT_LINE_OF(0, 1), i + 1), "waiter %d is not waiting", i);
	}
}

/* Batch waiter @i of cost @cost is admitted at its turn: the clock moves
 * there, and it is the one that returns, at that instant. */
static void admitted_at_turn(quota_client *c, int out, int i, uint64_t cost, int64_t *tat)
{
	int64_t e = *tat + (int64_t)cost * T_NS - TAU_B_NS;
	*tat += (int64_t)cost * T_NS;
	cr_assert_eq(quota_clock_set(c, e), 0);
	struct report rep = next_report(out);
	cr_assert_eq(rep.i, i, "waiter %d returned at waiter %d's turn (%.1f s): not in arrival order", rep.i, i,
		     (double)e / 1e9);
	cr_assert_eq(rep.err, 0, "waiter %d: %s", i, quota_strerror(rep.err));
	cr_assert_eq(rep.ticket_time, e, "waiter %d admitted at %lld, its turn %lld", i, (long long)rep.ticket_time,
		     (long long)e);
	cr_assert_eq(rep.now, e);
}

Test(fifo, order, .timeout = 60, .fini = kill_kids)
{
	enum { N = 8 };
	static const uint64_t cost[N] = { 300, 10, 50, 10, 120, 1, 200, 10 };
	struct job jobs[N + 1];
	for (int i = 0; i < N; i++)
		jobs[i] = (struct job){ 1, cost[i], 1000 * TL_S };
	jobs[N] = (struct job){ 0, 150, 1000 * TL_S }; /* a top-lane waiter, above the headroom */
	char name[128];
	int64_t t0, tat;
	quota_client *c = filled("fo", name, sizeof(name), &t0, &tat);
	_Atomic int64_t *tpm = qs_tat(tl_quota(c, 0), QUOTA_TPM);
	int go[N + 1], out;
	fork_kids(name, jobs, N + 1, go, &out);
	arrive(c, t0, go, N);
	cr_assert(nothing_reported(out), "a waiter returned before its turn");
	cr_assert_eq(atomic_load(tpm), tat, "a batch waiter took a place");
	for (int i = 0; i < N; i++) {
		if (i == 3) {
			/* The top lane is admitted past every batch waiter at once... */
			struct quota_reserve_opts top = lane_opts(0);
			struct quota_ticket t;
			cr_assert_eq(quota_reserve_ex(c, 0, &(struct quota_cost){ 1, 100, 0 }, 0, &top, &t), 0);
			tat += 100 * T_NS;
			/* ...and a top-lane waiter takes its place ahead of them. */
			cr_assert_eq(write(go[N], "g", 1), 1);
			int64_t e = tat + 150 * T_NS - TAU_NS;
			tat += 150 * T_NS;
			cr_assert(tl_until_word(tpm, tat), "the top-lane waiter did not take its place");
			cr_assert_lt(e, tat + (int64_t)cost[i] * T_NS - TAU_B_NS, "premise: before batch's turn");
			cr_assert_eq(quota_clock_set(c, e), 0);
			struct report rep = next_report(out);
			cr_assert_eq(rep.i, N, "waiter %d returned at the top-lane waiter's turn", rep.i);
			cr_assert_eq(rep.err, 0);
			cr_assert_eq(rep.ticket_time, e);
			cr_assert_eq(waiting(c, QS_WAIT_LINE_OF(0, 1)), N - 3);
		}
		admitted_at_turn(c, out, i, cost[i], &tat);
	}
	reap_kids(N + 1);
	for (int i = 0; i <= N; i++)
		close(go[i]);
	close(out);
	printf("fifo: %d batch waiters (costs 1..300) admitted in arrival order at their exact turns; "
	       "a top-lane reservation and a top-lane waiter went past them\n", N);
	quota_close(c);
}

/* The slots of process @pid. */
static uint32_t slots_of(quota_client *c, pid_t pid, uint32_t *slots)
{
	uint32_t n = 0;
	for (uint32_t s = 0; s < c->g.client_capacity; s++) {
		uint64_t w = atomic_load(&qs_client_at(&c->g, s)->state);
		if (QS_CLIENT_STATUS(w) == QS_CLIENT_LIVE && QS_CLIENT_PID(w) == pid)
			slots[n++] = s;
	}
	return n;
}

Test(fifo, harm_is_bounded, .timeout = 60, .fini = kill_kids)
{
	/* 0 the head; 1 times out behind it; 2 is stopped, 3 waits behind it;
	 * 4 is killed, 5 waits behind it. */
	enum { N = 6 };
	static const struct job jobs[N] = {
		{ 1, 400, 1000 * TL_S }, { 1, 10, 35 * TL_S }, { 1, 10, 60 * TL_S },
		{ 1, 10, 1000 * TL_S }, { 1, 10, 1000 * TL_S }, { 1, 20, 1000 * TL_S },
	};
	char name[128];
	int64_t t0, tat;
	quota_client *c = filled("fh", name, sizeof(name), &t0, &tat);
	int go[N], out;
	fork_kids(name, jobs, N, go, &out);
	arrive(c, t0, go, N);
	pid_t dead = kids[4];
	cr_assert_eq(kill(kids[2], SIGSTOP), 0);
	cr_assert_eq(kill(dead, SIGKILL), 0);
	cr_assert_eq(waitpid(dead, NULL, 0), dead);
	kids[4] = 0;

	/* 1 gives up at its deadline, behind 0 (whose turn is at 40 s). */
	int64_t d1 = t0 + 2 + 35 * TL_S;
	cr_assert_eq(quota_clock_set(c, d1), 0);
	cr_assert(nothing_reported(out), "a waiter returned at waiter 1's deadline");
	cr_assert_eq(quota_clock_set(c, d1 + 1), 0);
	struct report rep = next_report(out);
	cr_assert_eq(rep.i, 1);
	cr_assert_eq(rep.err, -EAGAIN, "waiter 1: %s", quota_strerror(rep.err));
	cr_assert_eq(rep.now, d1 + 1);
	admitted_at_turn(c, out, 0, 400, &tat);

	/* 2 is stopped at the head of the line: 3 goes on past its deadline. */
	int64_t d2 = t0 + 3 + 60 * TL_S, e3 = tat + 10 * T_NS - TAU_B_NS;
	cr_assert_lt(e3, d2, "premise: 3's turn comes before 2's deadline");
	cr_assert_eq(quota_clock_set(c, e3), 0);
	cr_assert(nothing_reported(out), "waiter 3 went past a stopped waiter before its deadline");
	cr_assert_eq(quota_clock_set(c, d2), 0);
	cr_assert(nothing_reported(out), "waiter 3 went past a stopped waiter at its deadline");
	cr_assert_eq(quota_clock_set(c, d2 + 1), 0);
	rep = next_report(out);
	cr_assert_eq(rep.i, 3);
	cr_assert_eq(rep.err, 0);
	cr_assert_eq(rep.ticket_time, d2 + 1, "waiter 3 admitted at %lld, waiter 2's deadline %lld",
		     (long long)rep.ticket_time, (long long)d2);
	cr_assert_eq(kill(kids[2], SIGCONT), 0);
	rep = next_report(out);
	cr_assert_eq(rep.i, 2);
	cr_assert_eq(rep.err, -EAGAIN, "the stopped waiter: %s", quota_strerror(rep.err));

	/* 4 died waiting (its deadline far): 5, whose turn has come, goes on
	 * when the dead process's slot is reclaimed (as quotad does). */
	int64_t e5 = d2 + 2;
	cr_assert_eq(quota_clock_set(c, e5), 0);
	cr_assert(nothing_reported(out), "waiter 5 went past a dead waiter before its reclamation");
	cr_assert_eq(waiting(c, QS_WAIT_LINE_OF(0, 1)), 2);
	uint32_t slots[8], n = slots_of(c, dead, slots);
	cr_assert_eq(n, 1, "the dead waiter's slot");
	struct qc_reclaim_counts counts = { 0 };
	cr_assert_eq(qc_reclaim_group(&c->g, slots, n, &counts), 0);
	rep = next_report(out);
	cr_assert_eq(rep.i, 5);
	cr_assert_eq(rep.err, 0);
	cr_assert_eq(rep.ticket_time, e5);
	cr_assert_eq(waiting(c, QS_WAIT_LINE_OF(0, 1)), 0);
	for (int i = 0; i < N; i++)
		if (i != 4) {
			int st;
			cr_assert_eq(waitpid(kids[i], &st, 0), kids[i]);
			cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d exit status %d", i, st);
			kids[i] = 0;
		}
	for (int i = 0; i < N; i++)
		close(go[i]);
	close(out);
	printf("fifo: a waiter timing out, a stopped one and a killed one held the waiters behind them "
	       "until their deadline, deadline and reclamation, no longer\n");
	quota_close(c);
}

struct tw {
	quota_client *c;
	int quota;
	uint32_t lane;
	uint64_t cost;
	_Atomic int *done;
	_Atomic int rc, seq; /* rc + 1000 once returned; seq: its place among the returns */
	int64_t ticket_time;
};

static void *thread_waiter(void *arg)
{
	struct tw *w = arg;
	struct quota_reserve_opts o = lane_opts(w->lane);
	struct quota_ticket t;
	/* claims this thread's slot: refused, nothing taken */
	quota_reserve(w->c, w->quota, &(struct quota_cost){ 0, 1000000, 0 }, 0, &t);
	int r = quota_reserve_ex(w->c, w->quota, &(struct quota_cost){ 1, w->cost, 0 }, 1000 * TL_S, &o, &t);
	w->ticket_time = r == 0 ? quota_ticket_time(&t) : 0;
	atomic_store(&w->seq, atomic_fetch_add(w->done, 1));
	atomic_store(&w->rc, r + 1000);
	return NULL;
}

struct done_is {
	_Atomic int *done;
	int n;
};

static bool done_is(void *arg)
{
	struct done_is *x = arg;
	return atomic_load(x->done) >= x->n;
}

/* tl_until() @n threads returned. */
static bool until_done(_Atomic int *done, int n)
{
	return tl_until(done_is, &(struct done_is){ done, n });
}

/* Threads on two handles of one process wait in one line; quota r's lane 1
 * is another line (r has three lanes: its lane 1 keeps 10 % for lane 0). */
Test(fifo, threads_handles_and_lines, .timeout = 60)
{
	enum { N = 6, OTHER = 2 };
	static const uint64_t cost[N] = { 300, 10, 20, 50, 10, 120 };
	char name[128];
	tl_name(name, sizeof(name), "ft");
	tl_create(name, "{\"clock\": \"manual\", \"quotas\": {\"q\": {" LANES "}, \"r\": {\"tpm\": 600, \"burst\": 1, "
		  "\"lanes\": {\"a\": {\"headroom\": 0.1}, \"b\": {\"headroom\": 0.1}, \"c\": {}}}}}");
	quota_client *h[2];
	cr_assert_eq(quota_open(name, &h[0]), 0);
	cr_assert_eq(quota_open(name, &h[1]), 0);
	int r = quota_find(h[0], "r");
	cr_assert_gt(r, 0);
	struct quota_reserve_opts batch = lane_opts(1);
	struct quota_ticket t;
	int64_t t0 = quota_now(h[0]), tat = t0 + 480 * T_NS;
	cr_assert_eq(quota_reserve_ex(h[0], 0, &(struct quota_cost){ 1, 480, 0 }, 0, &batch, &t), 0);
	cr_assert_eq(quota_reserve_ex(h[0], r, &(struct quota_cost){ 1, 540, 0 }, 0, &batch, &t), 0);
	_Atomic int done = 0;
	struct tw w[N];
	pthread_t th[N];
	int inline_q = 0;
	for (int i = 0; i < N; i++) {
		bool other = i == OTHER;
		w[i] = (struct tw){ .c = h[i % 2], .quota = other ? r : 0, .lane = 1, .cost = cost[i], .done = &done };
		cr_assert_eq(quota_clock_set(h[0], t0 + 1 + i), 0);
		cr_assert_eq(pthread_create(&th[i], NULL, thread_waiter, &w[i]), 0);
		inline_q += !other;
		cr_assert(until_waiting(h[0], other ? QS_WAIT_LINE_OF(r, 1) : QS_WAIT_LINE_OF(0, 1), other ? 1 : inline_q),
			  "thread %d is not waiting", i);
	}
	/* r's waiter: its turn (540 + 20 tokens against r's lane 1, 54 s) is
	 * long before q's first (30 s after the start): the line of q does
	 * not hold it. */
	int64_t e = t0 + 560 * T_NS - 54 * TL_S;
	cr_assert_eq(quota_clock_set(h[0], e), 0);
	cr_assert(until_done(&done, 1), "the waiter of quota r was held up");
	cr_assert_eq(atomic_load(&w[OTHER].seq), 0, "a waiter of q returned at r's waiter's turn");
	cr_assert_eq(atomic_load(&w[OTHER].rc), 1000);
	cr_assert_eq(w[OTHER].ticket_time, e);
	int k = 1;
	for (int i = 0; i < N; i++) {
		if (i == OTHER)
			continue;
		e = tat + (int64_t)cost[i] * T_NS - TAU_B_NS;
		tat += (int64_t)cost[i] * T_NS;
		cr_assert_eq(quota_clock_set(h[0], e), 0);
		cr_assert(until_done(&done, k + 1), "nobody admitted at thread %d's turn", i);
		cr_assert_eq(atomic_load(&w[i].seq), k, "thread %d was not the one admitted at its turn", i);
		cr_assert_eq(atomic_load(&w[i].rc), 1000, "thread %d: %s", i, quota_strerror(atomic_load(&w[i].rc) - 1000));
		cr_assert_eq(w[i].ticket_time, e);
		k++;
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(pthread_join(th[i], NULL), 0);
	printf("fifo: %d threads on two handles admitted in arrival order; a waiter of another quota's lane "
	       "was not held by them\n", N - 1);
	quota_close(h[1]);
	quota_close(h[0]);
}

/* A reservation that would fit at once does not pass the lane's waiters:
 * the batch lane has 10 tokens of room, a waiter wants 300. A newcomer of 5
 * tokens is refused without a timeout (it was admitted before the lanes
 * counted their waiters) and, with one, waits behind the first and is
 * admitted right after it at its own turn. */
Test(fifo, newcomer_does_not_pass, .timeout = 60, .fini = kill_kids)
{
	char name[128];
	quota_client *c = tl_manual("fn", LANES, name, sizeof(name));
	struct qs_quota *q = tl_quota(c, 0);
	struct quota_reserve_opts batch = lane_opts(1);
	struct quota_ticket t;
	int64_t t0 = quota_now(c), tat = t0 + 470 * T_NS;
	cr_assert_eq(quota_reserve_ex(c, 0, &(struct quota_cost){ 1, 470, 0 }, 0, &batch, &t), 0);
	static const struct job jobs[2] = { { 1, 300, 1000 * TL_S }, { 1, 5, 1000 * TL_S } };
	int go[2], out;
	fork_kids(name, jobs, 2, go, &out);
	cr_assert_eq(write(go[0], "g", 1), 1);
	cr_assert(until_waiting(c, QS_WAIT_LINE_OF(0, 1), 1), "the first waiter is not waiting");
	cr_assert_eq(atomic_load(&q->lane_waiters[1]), 1, "the lane counts its waiter");
	cr_assert_eq(atomic_load(&q->lane_waiters[0]), 0);
	cr_assert_eq(quota_clock_set(c, t0 + 1), 0); /* after it, not at the same instant */
	int r = quota_reserve_ex(c, 0, &(struct quota_cost){ 1, 5, 0 }, 0, &batch, &t);
	cr_assert_eq(r, -EAGAIN, "a newcomer that fits passed the waiter (%s)", quota_strerror(r));
	cr_assert_gt(t.retry_after_ns, 0);
	cr_assert_eq(atomic_load(qs_tat(q, QUOTA_TPM)), tat, "the refused newcomer took a slot");
	cr_assert_eq(waiting(c, QS_WAIT_LINE_OF(0, 1)), 1, "the refused newcomer left its wait published");

	cr_assert_eq(write(go[1], "g", 1), 1);
	cr_assert(until_waiting(c, QS_WAIT_LINE_OF(0, 1), 2), "the second waiter is not waiting");
	cr_assert(nothing_reported(out), "the small waiter was admitted past the first");
	static const uint64_t cost[2] = { 300, 5 };
	for (int i = 0; i < 2; i++)
		admitted_at_turn(c, out, i, cost[i], &tat);
	reap_kids(2);
	cr_assert_eq(atomic_load(&q->lane_waiters[1]), 0, "the count went back to zero");
	close(go[0]);
	close(go[1]);
	close(out);
	printf("fifo: a newcomer that fit at once was refused (timeout 0) or waited its turn behind the "
	       "lane's waiter\n");
	quota_close(c);
}

/* A caller that waits in slices (the Python binding) passes when its first
 * slice began: a waiter arriving second but queued since earlier is ahead. */
Test(fifo, queued_since_keeps_the_place, .timeout = 60, .fini = kill_kids)
{
	char name[128];
	int64_t t0, tat;
	quota_client *c = filled("fs", name, sizeof(name), &t0, &tat);
	struct quota_reserve_opts bad = lane_opts(1);
	struct quota_ticket t;
	bad.queued_since_ns = -1;
	cr_assert_eq(quota_reserve_ex(c, 0, &(struct quota_cost){ 1, 1, 0 }, 0, &bad, &t), -EINVAL);
	const struct job jobs[2] = { { 1, 10, 1000 * TL_S, 0 }, { 1, 20, 1000 * TL_S, t0 + 1 } };
	int go[2], out;
	fork_kids(name, jobs, 2, go, &out);
	cr_assert_eq(quota_clock_set(c, t0 + 5), 0);
	cr_assert_eq(write(go[0], "g", 1), 1);
	cr_assert(until_waiting(c, QS_WAIT_LINE_OF(0, 1), 1), "the first waiter is not waiting");
	cr_assert_eq(quota_clock_set(c, t0 + 6), 0);
	cr_assert_eq(write(go[1], "g", 1), 1);
	cr_assert(until_waiting(c, QS_WAIT_LINE_OF(0, 1), 2), "the second waiter is not waiting");
	admitted_at_turn(c, out, 1, 20, &tat); /* queued since t0 + 1: first */
	admitted_at_turn(c, out, 0, 10, &tat);
	reap_kids(2);
	close(go[0]);
	close(go[1]);
	close(out);
	printf("fifo: a waiter queued since before another kept its place (queued_since_ns)\n");
	quota_close(c);
}

struct count_is {
	_Atomic uint32_t *w;
	uint32_t want;
};

static bool count_is(void *arg)
{
	struct count_is *x = arg;
	return atomic_load(x->w) == x->want;
}

/* A count left one too high (a process died between counting its wait and
 * publishing it) costs scans, never admissions, and quotad's audit sets it
 * back to what the client slots say (two checks, 250 ms apart). */
Test(fifo, quotad_repairs_a_leaked_count, .timeout = 60)
{
	struct cl_env e;
	cl_env(&e, "fc");
	cl_quotad(&e, cl_file(&e, "q.json", "{\"quotas\": {\"q\": {" LANES "}}}"), NULL);
	quota_client *c = cl_open(e.seg);
	struct qs_quota *q = tl_quota(c, 0);
	atomic_fetch_add(&q->lane_waiters[1], 1);
	struct quota_reserve_opts batch = lane_opts(1);
	struct quota_ticket t;
	cr_assert_eq(quota_reserve_ex(c, 0, &(struct quota_cost){ 1, 10, 0 }, 0, &batch, &t), 0,
		     "a leaked count refused a reservation that fits with nobody waiting");
	cr_assert_eq(quota_cancel(c, &t), 0);
	cr_assert(tl_until(count_is, &(struct count_is){ &q->lane_waiters[1], 0 }),
		  "quotad did not repair the count");
	printf("fifo: quotad repaired a waiter count left one too high\n");
	quota_close(c);
}

/* On the real clock, with a real quotad: a waiter killed while it waits
 * (its deadline far) is reclaimed by quotad, which wakes the waiter behind
 * it; that one, whose own turn comes 1 s after the start, is admitted -
 * without the wake it would sleep until its own deadline (30 s) and be
 * refused. */
Test(fifo, quotad_reclaims_a_dead_waiter, .timeout = 60, .fini = kill_kids)
{
	struct cl_env e;
	cl_env(&e, "fq");
	cl_quotad(&e, cl_file(&e, "q.json", "{\"quotas\": {\"q\": {" LANES "}}}"), NULL);
	quota_client *c = cl_open(e.seg);
	struct quota_reserve_opts batch = lane_opts(1);
	struct quota_ticket t;
	cr_assert_eq(quota_reserve_ex(c, 0, &(struct quota_cost){ 1, 480, 0 }, 0, &batch, &t), 0);
	static const struct job jobs[2] = { { 1, 100, 1000 * TL_S }, { 1, 10, 30 * TL_S } };
	int go[2], out;
	fork_kids(e.seg, jobs, 2, go, &out);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(write(go[i], "g", 1), 1);
		cr_assert(until_waiting(c, QS_WAIT_LINE_OF(0, 1), i + 1), "waiter %d is not waiting", i);
	}
	cr_assert_eq(kill(kids[0], SIGKILL), 0);
	cr_assert_eq(waitpid(kids[0], NULL, 0), kids[0]);
	kids[0] = 0;
	struct pollfd p = { out, POLLIN, 0 };
	cr_assert_eq(poll(&p, 1, 60000), 1, "the waiter behind the dead one never returned");
	struct report rep;
	cr_assert_eq(read(out, &rep, sizeof(rep)), (ssize_t)sizeof(rep));
	cr_assert_eq(rep.i, 1);
	cr_assert_eq(rep.err, 0, "the waiter behind the dead one: %s (not woken by its reclamation)",
		     quota_strerror(rep.err));
	cr_assert_eq(waiting(c, QS_WAIT_LINE_OF(0, 1)), 0);
	int st;
	cr_assert_eq(waitpid(kids[1], &st, 0), kids[1]);
	kids[1] = 0;
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(go[0]);
	close(go[1]);
	close(out);
	printf("fifo: quotad reclaimed a waiter killed in line and woke the one behind it\n");
	quota_close(c);
}

/* What a scan costs: client_capacity slots, one cache line each. Printed,
 * not asserted. Warm: the lines in cache (a waiter polling); cold: after
 * 64 MiB were written (a waiter that slept). */
static void scan_cost(uint32_t clients)
{
	char name[128], json[256];
	tl_name(name, sizeof(name), "fs");
	snprintf(json, sizeof(json), "{\"max_clients\": %u, \"quotas\": {\"q\": {" LANES "}}}", clients);
	tl_create(name, json);
	quota_client *c;
	cr_assert_eq(quota_open(name, &c), 0);
	struct qc_thread *self;
	cr_assert_eq(qc_writer(c, &self), 0);
	uint64_t key = QS_WAIT_LINE_OF(0, 1) | 1;
	struct qc_waiter w;
	enum { WARM = 2000, COLD = 20 };
	size_t big = 64u << 20;
	char *evict = malloc(big);
	cr_assert_not_null(evict);
	struct timespec a, b;
	int64_t warm = 0, cold = 0;
	cr_assert(!qc_wait_ahead(&c->g, self->slot, key, 0, 0, &w)); /* the pages mapped */
	for (int i = 0; i < COLD; i++) {
		memset(evict, i, big);
		clock_gettime(CLOCK_MONOTONIC, &a);
		cr_assert(!qc_wait_ahead(&c->g, self->slot, key, 0, 0, &w));
		clock_gettime(CLOCK_MONOTONIC, &b);
		cold += (b.tv_sec - a.tv_sec) * TL_S + (b.tv_nsec - a.tv_nsec);
	}
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < WARM; i++)
		cr_assert(!qc_wait_ahead(&c->g, self->slot, key, 0, 0, &w));
	clock_gettime(CLOCK_MONOTONIC, &b);
	warm = (b.tv_sec - a.tv_sec) * TL_S + (b.tv_nsec - a.tv_nsec);
	free(evict);
	printf("fifo: a scan of %u client slots costs %.2f us warm (%.1f ns a slot), %.2f us cold (%.1f ns a slot)\n",
	       clients, (double)warm / WARM / 1e3, (double)warm / WARM / clients, (double)cold / COLD / 1e3,
	       (double)cold / COLD / clients);
	quota_close(c);
}

Test(fifo, scan_cost, .timeout = 120)
{
	scan_cost(256);
	scan_cost(4096);
}
