/* SPDX-License-Identifier: MIT */
/*
 * test_lanes_mp.c - lanes and streams on the real clock, across processes,
 * with every admission logged:
 *   saturation  8 batch processes saturate tpm while 1 interactive process
 *               reserves every 25 ms; the same run without lanes. Printed:
 *               the interactive waits (p50/p99/max) in both runs, the
 *               binding limit's use; asserted: the window bound on every
 *               window, and that batch takes everything the interactive
 *               lane leaves but its headroom.
 *   streams     8 processes reserve, then extend and partly settle at
 *               random, then commit; each piece (reservation or extension)
 *               is logged at its own admission time with what it kept;
 *               asserted: the window bound on every window.
 * Figures are printed, never asserted against the wall clock.
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

#include "internal.h"
#include "testlib.h"

#define NBATCH 8
#define MAXREC 60000
#define MAXWAIT 4000
#define RUN_NS (3 * TL_S)

struct rec {
	int64_t at;      /* admission time of the piece */
	uint64_t tokens; /* tokens it kept (after refunds) */
	uint32_t requests;
	uint32_t lane;
	int64_t start;   /* saturation: when its reservation began */
	int64_t waited;  /* and how long it waited */
};

struct shared {
	_Atomic uint32_t n, nwait;
	_Atomic uint32_t errors;
	int64_t t0;
	struct rec rec[MAXREC];
	int64_t wait[MAXWAIT];
};

static int64_t mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * TL_S + ts.tv_nsec;
}

static void log_piece(struct shared *sh, int64_t at, uint64_t tokens, uint32_t req, uint32_t lane,
		      int64_t start, int64_t waited)
{
	uint32_t i = atomic_fetch_add(&sh->n, 1);
	if (i < MAXREC)
		sh->rec[i] = (struct rec){ at, tokens, req, lane, start, waited };
}

static uint64_t next(uint64_t *x)
{
	*x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
	return *x;
}

/* Wait for the parent's barrier (the gate pipe closing). */
static quota_client *attach(const char *name, struct shared *sh, int gate, int *id)
{
	quota_client *c;
	char b;
	if (quota_open(name, &c) < 0) {
		atomic_fetch_add(&sh->errors, 1);
		_exit(1);
	}
	*id = quota_find(c, "q");
	if (read(gate, &b, 1) < 0)
		atomic_fetch_add(&sh->errors, 1);
	return c;
}

/* role 0..NBATCH-1: batch; NBATCH: interactive. */
static void saturate(const char *name, struct shared *sh, int gate, int role, bool lanes)
{
	int id;
	quota_client *c = attach(name, sh, gate, &id);
	bool inter = role == NBATCH;
	struct quota_reserve_opts o;
	quota_reserve_opts_init(&o, sizeof(o));
	o.lane = lanes ? (uint32_t)quota_lane(c, id, inter ? "interactive" : "batch") : 0;
	uint64_t x = (uint64_t)role * 2654435761u + 7;
	while (mono() < sh->t0 + RUN_NS) {
		uint64_t in = inter ? 100 : 20 + next(&x) % 60, out = inter ? 200 : 100 + next(&x) % 300;
		struct quota_ticket t;
		int64_t start = mono();
		int r = quota_reserve_ex(c, id, &(struct quota_cost){ 1, in, out },
					 inter ? 2 * TL_S : 200 * TL_MS, lanes ? &o : NULL, &t);
		if (r == -EAGAIN)
			continue;
		if (r < 0) {
			atomic_fetch_add(&sh->errors, 1);
			break;
		}
		uint64_t used = inter || (next(&x) & 1) ? out : next(&x) % (out + 1);
		log_piece(sh, quota_ticket_time(&t), in + used, 1, inter, start, t.waited_ns);
		if (inter) {
			uint32_t w = atomic_fetch_add(&sh->nwait, 1);
			if (w < MAXWAIT)
				sh->wait[w] = t.waited_ns;
		}
		if (quota_commit(c, &t, &(struct quota_cost){ 1, in, used }) < 0)
			atomic_fetch_add(&sh->errors, 1);
		if (inter) /* a user's request every 25 ms: the workload, not a synchronisation */
			nanosleep(&(struct timespec){ 0, 25 * TL_MS }, NULL);
	}
	quota_close(c);
}

/* A stream: reserve, then extend and partly settle at random, commit.
 * pieces[] mirrors the ticket: refunds come from the last piece. */
static void stream(const char *name, struct shared *sh, int gate, int role)
{
	int id;
	quota_client *c = attach(name, sh, gate, &id);
	uint64_t x = (uint64_t)role * 2654435761u + 11;
	while (mono() < sh->t0 + RUN_NS) {
		uint64_t in = 20 + next(&x) % 60, est = 50 + next(&x) % 200, used = 0;
		struct quota_ticket t;
		int r = quota_reserve(c, id, &(struct quota_cost){ 1, in, est }, 200 * TL_MS, &t);
		if (r == -EAGAIN)
			continue;
		if (r < 0) {
			atomic_fetch_add(&sh->errors, 1);
			break;
		}
		struct { int64_t at; uint64_t units; } piece[32];
		int np = 1;
		piece[0].at = quota_ticket_time(&t), piece[0].units = in + est;
		for (int step = 0; step < 12; step++) {
			uint64_t roll = next(&x) % 10;
			used += next(&x) % (est - used + 1); /* the stream goes on */
			if (roll < 4 && np < 32) {
				uint64_t more = 50 + next(&x) % 250;
				r = quota_extend(c, &t, &(struct quota_cost){ 0, 0, more }, 100 * TL_MS);
				if (r == -EAGAIN)
					break;
				if (r < 0) {
					atomic_fetch_add(&sh->errors, 1);
					break;
				}
				piece[np].at = qt_priv(&t)->piece_at, piece[np].units = more;
				np++;
				est += more;
			} else if (roll < 7 && est > used) {
				uint64_t lower = used + next(&x) % (est - used);
				if (quota_settle_partial(c, &t, &(struct quota_cost){ 1, in, lower }) < 0) {
					atomic_fetch_add(&sh->errors, 1);
					break;
				}
				uint64_t give = est - lower;
				piece[np - 1].units -= give < piece[np - 1].units ? give : piece[np - 1].units;
				est = lower;
			}
		}
		uint64_t give = est - used;
		piece[np - 1].units -= give < piece[np - 1].units ? give : piece[np - 1].units;
		for (int i = 0; i < np; i++)
			log_piece(sh, piece[i].at, piece[i].units, i == 0, 0, 0, 0);
		if (quota_commit(c, &t, &(struct quota_cost){ 1, in, used }) < 0)
			atomic_fetch_add(&sh->errors, 1);
	}
	quota_close(c);
}

static int by_time(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	return (x->at > y->at) - (x->at < y->at);
}

/* Largest excess of sum(cost) over r*W + b over all windows [a_i, a_j]
 * (must be <= 0), in units. */
static double worst_window(const struct rec *r, uint32_t n, bool tokens, uint64_t limit, uint64_t cap)
{
	const int64_t period = 60 * TL_S;
	double worst = -1e300;
	for (uint32_t i = 0; i < n; i++) {
		__int128 sum = 0;
		for (uint32_t j = i; j < n; j++) {
			sum += tokens ? r[j].tokens : r[j].requests;
			__int128 lhs = sum * period;
			__int128 rhs = (__int128)limit * (r[j].at - r[i].at) + (__int128)cap * period;
			double excess = (double)(lhs - rhs) / (double)period;
			if (excess > worst)
				worst = excess;
		}
	}
	return worst;
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* Fork @nproc workers running @fn on segment @name, release them together,
 * reap them; then check the window bound of quota 0's rpm and tpm. */
static struct shared *run(const char *name, int nproc, bool lanes, bool streams, struct quota_info *in)
{
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(sh, MAP_FAILED);
	int gate[2];
	cr_assert_eq(pipe(gate), 0);
	pid_t pids[16];
	for (int i = 0; i < nproc; i++) {
		pids[i] = fork();
		cr_assert_geq(pids[i], 0);
		if (pids[i] == 0) {
			close(gate[1]);
			if (streams)
				stream(name, sh, gate[0], i);
			else
				saturate(name, sh, gate[0], i, lanes);
			_exit(0);
		}
	}
	close(gate[0]);
	sh->t0 = mono();
	close(gate[1]);
	tl_reap(pids, nproc);
	cr_assert_eq(atomic_load(&sh->errors), 0);
	uint32_t n = atomic_load(&sh->n);
	cr_assert_lt(n, MAXREC, "log overflow");
	cr_assert_gt(n, 200, "only %u admissions", n);
	quota_client *c;
	cr_assert_eq(quota_open(name, &c), 0);
	cr_assert_eq(quota_info(c, 0, in, sizeof(*in)), 0);
	quota_close(c);
	cr_assert_eq(in->inflight, 0);
	qsort(sh->rec, n, sizeof(sh->rec[0]), by_time);
	double w_req = worst_window(sh->rec, n, false, in->rate[QUOTA_RPM].limit, in->rate[QUOTA_RPM].capacity);
	double w_tok = worst_window(sh->rec, n, true, in->rate[QUOTA_TPM].limit, in->rate[QUOTA_TPM].capacity);
	printf("%s%s: %u pieces logged; worst window excess requests %.3f tokens %.3f (must be <= 0)\n",
	       streams ? "streams" : "saturation", streams ? "" : lanes ? " with lanes" : " without lanes",
	       n, w_req, w_tok);
	cr_assert_leq(w_req, 0.0, "requests over r*W + b by %.3f", w_req);
	cr_assert_leq(w_tok, 0.0, "tokens over r*W + b by %.3f", w_tok);
	return sh;
}

/* tpm binds: 50k tokens/s, b = 60k; the interactive lane keeps 10 % (6k). */
#define SAT_JSON "{\"quotas\": {\"q\": {\"rpm\": 600000, \"tpm\": 3000000, \"burst\": 0.02%s}}}"

/* The order of the batch waiters (waitline.c), printed: pairs of
 * reservations that both waited, the earlier begun admitted later
 * (inversions, and those begun over 1 ms apart); and waiters that a
 * reservation begun after them, admitted at once, went past (a newcomer
 * admitted at once takes no turn in the line). */
static void batch_order(const struct rec *r, uint32_t n)
{
	uint32_t waited = 0, inv = 0, inv_ms = 0, passed = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (r[i].lane || !r[i].waited)
			continue;
		waited++;
		bool by_newcomer = false;
		for (uint32_t j = 0; j < n; j++) {
			if (r[j].lane || r[j].start <= r[i].start || r[j].at >= r[i].at)
				continue;
			if (r[j].waited) {
				inv++;
				inv_ms += r[j].start - r[i].start > TL_MS;
			} else {
				by_newcomer = true;
			}
		}
		passed += by_newcomer;
	}
	printf("saturation with lanes: %u batch reservations waited; order inversions among them %u "
	       "(%u begun over 1 ms apart); %u went past by a newcomer admitted at once\n", waited, inv, inv_ms,
	       passed);
}

static void saturation(bool lanes, int64_t *p99)
{
	char name[128], json[512];
	tl_name(name, sizeof(name), lanes ? "sl" : "sn");
	snprintf(json, sizeof(json), SAT_JSON,
		 lanes ? ", \"lanes\": {\"interactive\": {\"headroom\": 0.1}, \"batch\": {}}" : "");
	tl_create(name, json);
	struct quota_info in;
	struct shared *sh = run(name, NBATCH + 1, lanes, false, &in);
	uint32_t n = atomic_load(&sh->n), nw = atomic_load(&sh->nwait);
	cr_assert_gt(nw, 20, "the interactive process got %u reservations", nw);
	nw = nw < MAXWAIT ? nw : MAXWAIT;
	qsort(sh->wait, nw, sizeof(sh->wait[0]), cmp64);
	*p99 = sh->wait[(nw * 99) / 100];
	uint64_t used = 0, used_inter = 0;
	int64_t end = sh->t0 + RUN_NS;
	for (uint32_t i = 0; i < n; i++)
		if (sh->rec[i].at <= end) {
			used += sh->rec[i].tokens;
			used_inter += sh->rec[i].lane ? sh->rec[i].tokens : 0;
		}
	const struct quota_limit_info *l = &in.rate[QUOTA_TPM];
	double allowed = (double)l->capacity + (double)l->limit * (double)RUN_NS / (60.0 * TL_S);
	double headroom = lanes ? 0.1 * (double)l->capacity : 0;
	printf("saturation %s lanes: interactive waits (%u) p50 %.3f ms p99 %.3f ms max %.3f ms; "
	       "tpm used %.2f %% of allowed (%.2f %% by interactive), %.2f %% of allowed less the headroom\n",
	       lanes ? "with" : "without", nw, sh->wait[nw / 2] / 1e6, *p99 / 1e6, sh->wait[nw - 1] / 1e6,
	       100.0 * (double)used / allowed, 100.0 * (double)used_inter / allowed,
	       100.0 * (double)used / (allowed - headroom));
	if (lanes)
		batch_order(sh->rec, n < MAXREC ? n : MAXREC);
	/* batch takes everything interactive does not use, but the headroom */
	cr_assert_geq((double)used / (allowed - headroom), 0.98, "tpm used at %.4f of allowed less headroom",
		      (double)used / (allowed - headroom));
	munmap(sh, sizeof(*sh));
}

Test(lanes_mp, interactive_under_batch_saturation, .timeout = 120)
{
	int64_t p99_lanes, p99_plain;
	saturation(true, &p99_lanes);
	saturation(false, &p99_plain);
	printf("interactive p99 wait: %.3f ms with lanes, %.3f ms without\n", p99_lanes / 1e6, p99_plain / 1e6);
}

Test(lanes_mp, streams_extend_and_settle_partly, .timeout = 120)
{
	char name[128];
	tl_name(name, sizeof(name), "st");
	tl_create(name, "{\"quotas\": {\"q\": {\"rpm\": 600000, \"tpm\": 3000000, \"burst\": 0.02}}}");
	struct quota_info in;
	struct shared *sh = run(name, NBATCH, false, true, &in);
	munmap(sh, sizeof(*sh));
}
