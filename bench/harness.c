/* SPDX-License-Identifier: MIT */
/*
 * harness.c - one run of one scenario on one implementation: fork the
 * worker processes, start them together on a process-shared barrier, let
 * them loop for the run's duration (or a fixed number of operations), and
 * collect their counts, start/end times and sampled latencies.
 *
 * Timing method: every 2^k-th operation of a worker (k = 6 for the
 * in-memory implementations, 0 for Redis, whose operations are slow enough)
 * is bracketed by two clock_gettime(CLOCK_MONOTONIC) reads and recorded in a
 * per-worker log-linear histogram; the other operations run bare. The stop
 * flag is read at the same points only, so the unsampled loop is just the
 * operation and a counter. Throughput is the sum of all workers' operations
 * over the wall time from the first worker's start to the last one's end.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

struct worker_result {
	struct qb_counts c;
	int64_t t0, t1;
	int32_t err;
	int32_t done;
	struct qb_hist h;
};

struct shared {
	pthread_barrier_t barrier;
	_Alignas(64) _Atomic int stop; /* written once per run by the parent */
	char pad[60];
	struct worker_result w[QB_MAX_PROCS];
};

static struct shared *sh;
static pid_t kids[QB_MAX_PROCS];
static int nkids;

static void on_alarm(int sig)
{
	(void)sig;
	for (int i = 0; i < nkids; i++)
		if (kids[i] > 0)
			kill(kids[i], SIGKILL);
	static const char msg[] = "quota-bench: a run did not finish in time; giving up\n";
	ssize_t n = write(2, msg, sizeof(msg) - 1);
	(void)n;
	_exit(3);
}

int qb_harness_init(void)
{
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return -errno;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	return 0;
}

static void worker(const struct qb_impl *im, const struct qb_run_params *p, int idx)
{
	struct worker_result *res = &sh->w[idx];
	void *st = NULL;
	int err = im->attach(p->distinct ? idx : 0, &st);
	pthread_barrier_wait(&sh->barrier);
	if (err) {
		res->err = err;
		_exit(1);
	}
	struct qb_counts c = { 0 };
	static struct qb_hist h; /* private after fork; zero in a fresh child */
	memset(&h, 0, sizeof(h));
	const uint64_t mask = p->sample_mask, max = p->max_ops;
	enum qb_op op = p->op;
	int64_t t0 = qb_now_ns();
	uint64_t n;
	for (n = 0; n < max; n++) {
		int r;
		if ((n & mask) == mask) { /* not op 0: it pays first-touch faults */
			if (atomic_load_explicit(&sh->stop, memory_order_relaxed))
				break;
			int64_t a = qb_now_ns();
			r = im->op(st, op, &c);
			int64_t b = qb_now_ns();
			qb_hist_add(&h, (uint64_t)(b - a));
		} else {
			r = im->op(st, op, &c);
		}
		if (r == 1) {
			c.admitted++;
		} else if (r == 0) {
			c.rejected++;
		} else {
			c.errors++;
			res->err = r;
			break;
		}
	}
	int64_t t1 = qb_now_ns();
	c.ops = n;
	im->detach(st);
	res->c = c;
	res->t0 = t0;
	res->t1 = t1;
	memcpy(&res->h, &h, sizeof(h));
	res->done = 1;
	_exit(0);
}

int qb_harness_run(const struct qb_impl *im, const struct qb_run_params *p, struct qb_run_result *out)
{
	if (p->procs < 1 || p->procs > QB_MAX_PROCS)
		return -EINVAL;
	memset(sh, 0, sizeof(*sh));
	pthread_barrierattr_t ba;
	pthread_barrierattr_init(&ba);
	pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
	pthread_barrier_init(&sh->barrier, &ba, (unsigned)p->procs + 1);
	pthread_barrierattr_destroy(&ba);

	/* Everything below must end within this, or the bench gives up. */
	alarm((unsigned)(p->duration_ns / 1000000000 + 60));
	fflush(NULL);
	nkids = 0;
	for (int i = 0; i < p->procs; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			qb_warn("fork: %s", strerror(errno));
			on_alarm(0);
		}
		if (pid == 0)
			worker(im, p, i);
		kids[nkids++] = pid;
	}
	pthread_barrier_wait(&sh->barrier);
	if (p->duration_ns > 0) {
		struct timespec ts = { (time_t)(p->duration_ns / 1000000000),
				       (long)(p->duration_ns % 1000000000) };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		atomic_store_explicit(&sh->stop, 1, memory_order_relaxed);
	}
	int failed = 0;
	for (int i = 0; i < nkids; i++) {
		int status;
		while (waitpid(kids[i], &status, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !sh->w[i].done)
			failed = 1;
		kids[i] = 0;
	}
	alarm(0);
	nkids = 0;
	pthread_barrier_destroy(&sh->barrier);

	memset(out, 0, sizeof(*out));
	int64_t t0 = INT64_MAX, t1 = INT64_MIN;
	for (int i = 0; i < p->procs; i++) {
		struct worker_result *w = &sh->w[i];
		if (w->err && !out->err)
			out->err = w->err;
		out->c.ops += w->c.ops;
		out->c.admitted += w->c.admitted;
		out->c.rejected += w->c.rejected;
		out->c.retries += w->c.retries;
		out->c.errors += w->c.errors;
		qb_hist_merge(&out->h, &w->h);
		if (w->done) {
			t0 = w->t0 < t0 ? w->t0 : t0;
			t1 = w->t1 > t1 ? w->t1 : t1;
		}
	}
	if (failed && !out->err)
		out->err = -ECHILD;
	out->wall_ns = t1 > t0 ? t1 - t0 : 0;
	out->ops_per_s = out->wall_ns ? (double)out->c.ops * 1e9 / (double)out->wall_ns : 0;
	return out->err;
}
