/* SPDX-License-Identifier: MIT */
/*
 * test_threads.c - one handle shared by many threads (quota.h: a handle may
 * be used by any number of threads at once; a ticket may be settled by any
 * thread of the handle that took it). 4 processes x 4 threads hammer one
 * quota (rpm, tpm, max_inflight 4) on the real clock; a third of the tickets
 * of the waiting threads are handed to another thread of the process, which
 * commits them. Checks,
 * as test_multiproc does for processes: the admitted cost never exceeds
 * r*W + b in any window, never more than max_inflight calls overlap, the
 * in-flight count is back to 0 once every ticket is settled (before and
 * after quota_close), and quota_info counts every admission. Run twice:
 * as is, and with the quota in two lanes and every reservation in the lower
 * one, whose waiters take their turns through their client slots
 * (waitline.c). tsan.sh runs
 * this file under ThreadSanitizer, built with V2_STANDALONE: Criterion's
 * runner cannot start under TSan (its arena's fixed mapping), so that build
 * has a plain main() and CHECK() exits 1 instead of cr_assert().
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "quota.h"
#include "v2lib.h"

#ifdef V2_STANDALONE
static void cleanup(void);
#define CHECK(c, ...)                                                          \
	do {                                                                   \
		if (!(c)) {                                                    \
			fprintf(stderr, "%s:%d: check failed: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__);                          \
			fputc('\n', stderr);                                   \
			cleanup();                                             \
			exit(1);                                               \
		}                                                              \
	} while (0)
#else
#include <criterion/criterion.h>
#define CHECK(c, ...) cr_assert(c, __VA_ARGS__)
#endif

#define TL_MS V2_MS
static char seg_path[160];
static pid_t creator;

static void cleanup(void)
{
	if (creator == getpid() && seg_path[0])
		shm_unlink(seg_path);
}

#define NPROC 4
#define NTHREAD 4
#define MAXREC 60000
#define MAX_INFLIGHT 4
#define QSIZE 64

struct rec {
	int64_t admitted_at;
	int64_t held_from, held_to;
	uint64_t tokens;
	int32_t taker, settler; /* thread ids: cross-thread when they differ */
};

struct shared {
	_Atomic uint32_t n;
	_Atomic uint32_t errors;
	_Atomic uint32_t cross;
	_Atomic uint32_t inflight_before_close_bad;
	int64_t t0, run_ns;
	pthread_barrier_t done; /* every process settled everything */
	struct rec rec[MAXREC];
};

/* A ticket handed from the thread that took it to another one. */
struct parked {
	struct quota_ticket t;
	int64_t from;
	uint64_t in, out;
	int taker;
};

struct proc {
	struct shared *sh;
	quota_client *c;
	int id;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct parked *q[QSIZE];
	int nq;
};

struct thr {
	struct proc *p;
	int tid;
};

static void settle(struct proc *p, struct parked *pk, int settler)
{
	uint64_t x = (uint64_t)pk->from * 2654435761u;
	uint64_t out = (x >> 7) & 1 ? pk->out : (x >> 9) % (pk->out + 1);
	int64_t to = v2_now();
	uint32_t i = atomic_fetch_add(&p->sh->n, 1);
	if (i < MAXREC)
		p->sh->rec[i] = (struct rec){ quota_ticket_time(&pk->t), pk->from, to, pk->in + out, pk->taker,
					      settler };
	if (pk->taker != settler)
		atomic_fetch_add(&p->sh->cross, 1);
	if (quota_commit(p->c, &pk->t, &(struct quota_cost){ 1, pk->in, out }) < 0)
		atomic_fetch_add(&p->sh->errors, 1);
	free(pk);
}

/* A parked ticket of a thread other than @me (any with @me -1). */
static struct parked *pop(struct proc *p, int me)
{
	struct parked *pk = NULL;
	pthread_mutex_lock(&p->lock);
	for (int i = 0; i < p->nq; i++)
		if (p->q[i]->taker != me) {
			pk = p->q[i];
			p->q[i] = p->q[--p->nq];
			break;
		}
	pthread_mutex_unlock(&p->lock);
	return pk;
}

/* Threads 0..NTHREAD-2 reserve (waiting up to 200 ms) and hand a third of
 * their tickets to the last thread, which commits them, and reserves with
 * timeout 0 and commits its own in between. */
static void *thread_main(void *arg)
{
	struct thr *th = arg;
	struct proc *p = th->p;
	int me = p->id * NTHREAD + th->tid;
	bool settler = th->tid == NTHREAD - 1;
	uint64_t x = (uint64_t)me * 0x9e3779b97f4a7c15ULL + 1;
	while (v2_now() < p->sh->t0 + p->sh->run_ns) {
		if (settler) {
			pthread_mutex_lock(&p->lock);
			if (p->nq == 0) {
				struct timespec ts;
				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_nsec += 1000000;
				if (ts.tv_nsec >= 1000000000)
					ts.tv_sec++, ts.tv_nsec -= 1000000000;
				pthread_cond_timedwait(&p->cond, &p->lock, &ts);
			}
			pthread_mutex_unlock(&p->lock);
			struct parked *pk;
			while ((pk = pop(p, me)))
				settle(p, pk, me);
		}
		struct parked *pk = malloc(sizeof(*pk));
		if (!pk) {
			atomic_fetch_add(&p->sh->errors, 1);
			break;
		}
		uint64_t r = v2_rand(&x);
		pk->in = 20 + r % 60;
		pk->out = 20 + (r >> 8) % 60;
		pk->taker = me;
		int err = quota_reserve(p->c, 0, &(struct quota_cost){ 1, pk->in, pk->out },
					settler ? 0 : 200 * TL_MS, &pk->t);
		if (err == -EAGAIN) {
			free(pk);
			continue;
		}
		if (err < 0) {
			free(pk);
			atomic_fetch_add(&p->sh->errors, 1);
			break;
		}
		pk->from = v2_now();
		/* The "API call": a short pause (simulated work, not a synchronisation). */
		nanosleep(&(struct timespec){ 0, (long)((r >> 16) % 300000) }, NULL);
		bool parked = false;
		if (!settler && (r >> 40) % 3 == 0) {
			pthread_mutex_lock(&p->lock);
			if (p->nq < QSIZE) {
				p->q[p->nq++] = pk;
				parked = true;
				pthread_cond_signal(&p->cond);
			}
			pthread_mutex_unlock(&p->lock);
		}
		if (!parked)
			settle(p, pk, me);
	}
	return NULL;
}

static void process_main(struct shared *sh, const char *name, int id, int gate)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	static struct proc p;
	p.sh = sh;
	p.id = id;
	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.cond, NULL);
	char b;
	if (quota_open(name, &p.c) < 0 || read(gate, &b, 1) < 0)
		_exit(1);
	pthread_t tids[NTHREAD];
	struct thr th[NTHREAD];
	for (int i = 0; i < NTHREAD; i++) {
		th[i] = (struct thr){ &p, i };
		if (pthread_create(&tids[i], NULL, thread_main, &th[i]) != 0)
			_exit(1);
	}
	for (int i = 0; i < NTHREAD; i++)
		pthread_join(tids[i], NULL);
	/* What is still parked: settled by the opening thread, which took none. */
	struct parked *pk;
	while ((pk = pop(&p, -1)))
		settle(&p, pk, -1);
	pthread_barrier_wait(&sh->done);
	struct quota_info in;
	if (quota_info(p.c, 0, &in, sizeof(in)) < 0 || in.inflight != 0)
		atomic_fetch_add(&sh->inflight_before_close_bad, 1);
	pthread_barrier_wait(&sh->done);
	quota_close(p.c);
	_exit(0);
}

static int by_time(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	return (x->admitted_at > y->admitted_at) - (x->admitted_at < y->admitted_at);
}

/* The largest excess of sum(cost) over r*W + b over all windows [a_i, a_j]. */
static double worst_window(const struct rec *r, uint32_t n, bool tokens, uint64_t limit, int64_t period,
			   uint64_t cap)
{
	double worst = -1e300;
	for (uint32_t i = 0; i < n; i++) {
		__int128 sum = 0;
		for (uint32_t j = i; j < n; j++) {
			sum += tokens ? r[j].tokens : 1;
			__int128 lhs = sum * period;
			__int128 rhs = (__int128)limit * (r[j].admitted_at - r[i].admitted_at) + (__int128)cap * period;
			double excess = (double)(lhs - rhs) / (double)period;
			if (excess > worst)
				worst = excess;
		}
	}
	return worst;
}

struct ev {
	int64_t t;
	int d; /* +1 start, -1 end; ends after starts at the same instant */
};

static int by_ev(const void *a, const void *b)
{
	const struct ev *x = a, *y = b;
	if (x->t != y->t)
		return (x->t > y->t) - (x->t < y->t);
	return y->d - x->d;
}

/* The most [held_from, held_to] intervals that overlap (closed intervals). */
static int max_overlap(const struct rec *r, uint32_t n)
{
	struct ev *e = malloc(2 * n * sizeof(*e));
	CHECK(e, "out of memory");
	for (uint32_t i = 0; i < n; i++) {
		e[2 * i] = (struct ev){ r[i].held_from, +1 };
		e[2 * i + 1] = (struct ev){ r[i].held_to, -1 };
	}
	qsort(e, 2 * n, sizeof(*e), by_ev);
	int cur = 0, best = 0;
	for (uint32_t i = 0; i < 2 * n; i++) {
		cur += e[i].d;
		if (cur > best)
			best = cur;
	}
	free(e);
	return best;
}

/* With @lanes, the quota has two lanes and every reservation is in the
 * lower one: the waiting threads take their turns (waitline.c). */
static void run_test(bool lanes)
{
	char name[128], json[512], err[512];
	snprintf(name, sizeof(name), "qtest-v2thr-%d-%d", (int)getpid(), lanes);
	snprintf(json, sizeof(json),
		 "{\"quotas\": {\"q\": {\"rpm\": 120000, \"tpm\": 6000000, \"max_inflight\": %d, "
		 "\"burst\": 0.05%s}}, \"max_clients\": 64}", MAX_INFLIGHT,
		 lanes ? ", \"lanes\": {\"top\": {\"headroom\": 0.1}, \"rest\": {}}" : "");
	if (creator == getpid())
		cleanup(); /* the segment of the run before, in this process */
	else
		atexit(cleanup);
	creator = getpid();
	snprintf(seg_path, sizeof(seg_path), "/%s", name);
	CHECK(qd_create_segment_json(json, name, err, sizeof(err)) == 0, "creating %s: %s", name, err);
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(sh != MAP_FAILED, "mmap");
	pthread_barrierattr_t ba;
	pthread_barrierattr_init(&ba);
	pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
	pthread_barrier_init(&sh->done, &ba, NPROC);
	sh->run_ns = v2_env_long("V2_THREADS_MS", 2000) * TL_MS;
	int gate[2];
	CHECK(pipe(gate) == 0, "pipe");
	pid_t pids[NPROC];
	for (int i = 0; i < NPROC; i++) {
		pids[i] = fork();
		CHECK(pids[i] >= 0, "fork");
		if (pids[i] == 0) {
			close(gate[1]);
			process_main(sh, name, i, gate[0]);
		}
	}
	close(gate[0]);
	sh->t0 = v2_now();
	close(gate[1]); /* the start barrier: every process reads EOF */
	for (int i = 0; i < NPROC; i++) {
		int st;
		CHECK(waitpid(pids[i], &st, 0) == pids[i], "waitpid");
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "process %d: %s %d", i,
			  WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	}
	uint32_t n = atomic_load(&sh->n);
	CHECK(atomic_load(&sh->errors) == 0, "%u errors from the API", atomic_load(&sh->errors));
	CHECK(n < MAXREC, "log overflow");
	CHECK(n > 500, "only %u admissions", n);
	CHECK(atomic_load(&sh->cross) > 0, "no ticket was settled by another thread");
	CHECK(atomic_load(&sh->inflight_before_close_bad) == 0,
		     "in flight not 0 with every ticket settled (handles still open)");

	quota_client *c;
	CHECK(quota_open(name, &c) == 0, "quota_open");
	struct quota_info in;
	CHECK(quota_info(c, 0, &in, sizeof(in)) == 0, "quota_info");
	quota_close(c);
	CHECK(in.inflight == 0, "in flight %llu after every handle closed", (unsigned long long)in.inflight);
	CHECK(in.admitted == n, "quota_info counts %llu admissions, the workers %u",
		     (unsigned long long)in.admitted, n);

	qsort(sh->rec, n, sizeof(sh->rec[0]), by_time);
	const int64_t minute = 60 * V2_S;
	double w_req = worst_window(sh->rec, n, false, in.rate[QUOTA_RPM].limit, minute, in.rate[QUOTA_RPM].capacity);
	double w_tok = worst_window(sh->rec, n, true, in.rate[QUOTA_TPM].limit, minute, in.rate[QUOTA_TPM].capacity);
	int overlap = max_overlap(sh->rec, n);
	uint64_t used = 0;
	for (uint32_t i = 0; i < n; i++)
		if (sh->rec[i].admitted_at <= sh->t0 + sh->run_ns)
			used += sh->rec[i].tokens;
	double allowed = (double)in.rate[QUOTA_TPM].capacity +
			 (double)in.rate[QUOTA_TPM].limit * (double)sh->run_ns / (double)minute;
	printf("threads%s: %u admissions by %d processes x %d threads in %.1f s, %u settled by another thread; "
	       "worst window excess requests %.3f tokens %.3f (<= 0); max in flight seen %d/%d; tpm used "
	       "%.2f %% of allowed\n", lanes ? " (lower lane)" : "", n, NPROC, NTHREAD, sh->run_ns / 1e9, atomic_load(&sh->cross), w_req, w_tok,
	       overlap, MAX_INFLIGHT, 100.0 * (double)used / allowed);
	CHECK(w_req <= 0.0, "requests over r*W + b by %.3f", w_req);
	CHECK(w_tok <= 0.0, "tokens over r*W + b by %.3f", w_tok);
	CHECK(overlap <= MAX_INFLIGHT, "%d calls in flight at once", overlap);
	munmap(sh, sizeof(*sh));
}

#ifdef V2_STANDALONE
int main(void)
{
	run_test(false);
	run_test(true);
	return 0;
}
#else
Test(v2_threads, four_threads_per_handle_keep_the_bound, .timeout = 180)
{
	run_test(false);
}

Test(v2_threads, lower_lane_waiters_keep_the_bound, .timeout = 180)
{
	run_test(true);
}
#endif
