/* SPDX-License-Identifier: MIT */
/*
 * test_restart.c - contract 6: quotad SIGKILLed and restarted while 8
 * processes reserve on the real clock. The admission bound (every window W:
 * admitted <= r*W + b, per limit) holds across the restart, no limit's state
 * goes back (spent budget is not refilled), a worker that died while quotad
 * was down is reclaimed by the new quotad. And of two quotads started on one
 * segment exactly one serves it; the other exits 1 naming the winner's pid.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ctllib.h"

#define NPROC 8
#define MAXREC 20000
#define CONFIG "{\"quotas\": {\"q\": {\"rpm\": 6000, \"tpm\": 300000, \"max_inflight\": 4, \"burst\": 0.05}}}"

struct rec {
	int64_t at;      /* quota_ticket_time() */
	uint64_t tokens; /* input + output, committed as reserved */
};

struct shared {
	_Atomic uint32_t n;
	_Atomic uint32_t errors;
	_Atomic int stop;
	uint32_t slot[NPROC];
	struct rec rec[MAXREC];
};

static void worker(const char *seg, struct shared *sh, int w, int gate)
{
	quota_client *c;
	char b;
	if (quota_open(seg, &c) < 0) {
		atomic_fetch_add(&sh->errors, 1);
		_exit(1);
	}
	int id = quota_find(c, "q");
	sh->slot[w] = c->first->slot;
	if (read(gate, &b, 1) < 0) /* returns at EOF: the start barrier */
		atomic_fetch_add(&sh->errors, 1);
	uint64_t x = (uint64_t)w * 2654435761u + 7;
	while (!atomic_load(&sh->stop)) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		struct quota_cost cost = { 1, 10 + x % 60, 10 + (x >> 8) % 60 };
		struct quota_ticket t;
		int r = quota_reserve(c, id, &cost, 200 * CL_MS, &t);
		if (r == -EAGAIN)
			continue;
		if (r < 0) {
			atomic_fetch_add(&sh->errors, 1);
			break;
		}
		uint32_t i = atomic_fetch_add(&sh->n, 1);
		if (i < MAXREC)
			sh->rec[i] = (struct rec){ quota_ticket_time(&t), cost.input_tokens + cost.output_tokens };
		/* the "API call" (simulated work, not a synchronisation) */
		nanosleep(&(struct timespec){ 0, (long)((x >> 16) % 500000) }, NULL);
		quota_commit(c, &t, &cost);
	}
	quota_close(c);
	_exit(0);
}

static int cmp_rec(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	return x->at < y->at ? -1 : x->at > y->at;
}

/* Every window [t_i, t_j]: sum of units * P <= L * (t_j - t_i) + b * P. */
static void check_bound(const struct rec *r, uint32_t n, bool tokens, uint64_t L, uint64_t b, int64_t P)
{
	for (uint32_t i = 0; i < n; i++) {
		unsigned __int128 sum = 0;
		for (uint32_t j = i; j < n; j++) {
			sum += tokens ? r[j].tokens : 1;
			unsigned __int128 lhs = sum * (uint64_t)P;
			unsigned __int128 rhs = (unsigned __int128)L * (uint64_t)(r[j].at - r[i].at) +
						(unsigned __int128)b * (uint64_t)P;
			cr_assert(lhs <= rhs, "%s bound broken in [%lld, %lld]: %llu admitted in %.3f s",
				  tokens ? "tpm" : "rpm", (long long)r[i].at, (long long)r[j].at,
				  (unsigned long long)sum, (r[j].at - r[i].at) / 1e9);
		}
	}
}

/* The TAT of each of quota @id's limits, in the order of its config. */
static uint32_t read_tats(quota_client *c, int id, int64_t *tat)
{
	struct qs_config cfg;
	cr_assert_eq(qs_config_get(&c->g, (uint32_t)id, &cfg, NULL), 0);
	struct qs_quota *q = qs_quota_at(&c->g, (uint32_t)id);
	for (uint32_t k = 0; k < cfg.nlimits; k++)
		tat[k] = atomic_load(qs_tat(q, cfg.lim[k].kind));
	return cfg.nlimits;
}

Test(restart, kill9_under_load_keeps_the_bound, .timeout = 60)
{
	struct cl_env e;
	cl_env(&e, "rs");
	const char *cfg = cl_file(&e, "q.json", CONFIG);
	pid_t qd = cl_quotad(&e, cfg, NULL);
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert(sh != MAP_FAILED);
	int gate[2];
	cr_assert(pipe(gate) == 0);
	pid_t pids[NPROC];
	for (int w = 0; w < NPROC; w++) {
		pids[w] = cl_fork();
		if (pids[w] == 0) {
			close(gate[1]);
			worker(e.seg, sh, w, gate[0]);
		}
	}
	close(gate[0]);
	quota_client *c = cl_open(e.seg);
	int id = quota_find(c, "q");
	struct qs_quota *q = qc_quota(c, id);
	close(gate[1]); /* go */

	nanosleep(&(struct timespec){ 1, 0 }, NULL); /* load runs */
	cl_stop(qd, SIGKILL);
	int64_t t_kill = cl_now();
	int64_t before[QS_KINDS];
	uint32_t nlim = read_tats(c, id, before);
	cr_assert_eq(nlim, 2, "rpm and tpm");
	uint32_t n_before = atomic_load(&sh->n);
	/* A worker dies while quotad is down, probably holding in-flight. */
	cl_stop(pids[0], SIGKILL);
	uint32_t victim = sh->slot[0];
	cr_assert_eq(QS_CLIENT_STATUS(atomic_load(&qs_client_at(&c->g, victim)->state)), QS_CLIENT_LIVE);
	nanosleep(&(struct timespec){ 0, 300 * CL_MS }, NULL); /* quotad stays down; load runs */
	cr_assert_gt(atomic_load(&sh->n), n_before, "workers must keep admitting while quotad is down");

	int64_t t_start = cl_now();
	cl_quotad(&e, cfg, NULL);
	int64_t t_ready = cl_now();
	int64_t after[QS_KINDS];
	cr_assert_eq(read_tats(c, id, after), nlim, "the restart kept the config");
	for (uint32_t k = 0; k < nlim; k++)
		cr_assert_geq(after[k], before[k], "limit %u went back: budget refilled by the restart", k);
	/* The new quotad scanned before it said ready. */
	cr_assert_eq(QS_CLIENT_STATUS(atomic_load(&qs_client_at(&c->g, victim)->state)), QS_CLIENT_FREE,
		     "the worker that died while quotad was down is reclaimed after the restart");
	fprintf(stderr, "restart: quotad start to ready %.3f ms (down %.3f ms in total, of which 300 ms "
		"on purpose); admissions went on throughout\n", (t_ready - t_start) / 1e6,
		(t_ready - t_kill) / 1e6);

	uint32_t n_restart = atomic_load(&sh->n);
	nanosleep(&(struct timespec){ 1, 500 * CL_MS }, NULL); /* load runs */
	atomic_store(&sh->stop, 1);
	for (int w = 1; w < NPROC; w++)
		cr_assert_eq(cl_stop(pids[w], 0), 0, "worker %d", w);
	cr_assert_eq(atomic_load(&sh->errors), 0);
	uint32_t n = atomic_load(&sh->n);
	cr_assert_lt(n, MAXREC);
	cr_assert_gt(n, n_restart, "admissions after the restart");
	cr_assert_eq(QS_INFLIGHT_COUNT(atomic_load(&q->inflight)), 0, "every in-flight slot is back");

	struct quota_info in;
	cr_assert_eq(quota_info(c, quota_find(c, "q"), &in, sizeof(in)), 0);
	qsort(sh->rec, n, sizeof(sh->rec[0]), cmp_rec);
	check_bound(sh->rec, n, false, in.rate[QUOTA_RPM].limit, in.rate[QUOTA_RPM].capacity, 60 * CL_S);
	check_bound(sh->rec, n, true, in.rate[QUOTA_TPM].limit, in.rate[QUOTA_TPM].capacity, 60 * CL_S);
	fprintf(stderr, "restart under load: %u admissions by %d processes, bound held in every window\n", n,
		NPROC);
	quota_close(c);
	munmap(sh, sizeof(*sh));
}

Test(restart, second_quotad_names_the_first)
{
	struct cl_env e;
	cl_env(&e, "r2");
	pid_t first = cl_quotad(&e, NULL, NULL);
	bool ready;
	int status;
	cl_quotad_try(&e, NULL, NULL, &ready, &status);
	cr_assert(!ready);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d", status);
	char cmd[512], pid[32];
	snprintf(pid, sizeof(pid), "pid %d", (int)first);
	snprintf(cmd, sizeof(cmd), "grep -q 'already served by quotad %s' '%s'", pid, e.log);
	cr_assert_eq(system(cmd), 0, "the loser names the winner (%s)", pid);
	/* The first one still serves. */
	char *r = cl_request(e.sock, "{\"cmd\":\"status\"}");
	cr_assert(r && cl_json_num(r, "daemon.pid") == first);
	free(r);
}

Test(restart, two_started_together_one_wins, .timeout = 60)
{
	for (int i = 0; i < 5; i++) {
		struct cl_env e;
		cl_env(&e, "rt");
		int fa, fb;
		pid_t a = cl_quotad_spawn(&e, NULL, NULL, &fa);
		pid_t b = cl_quotad_spawn(&e, NULL, NULL, &fb);
		bool ra = cl_ready(fa), rb = cl_ready(fb);
		cr_assert(ra != rb, "exactly one of two quotads serves (round %d: %d %d)", i, ra, rb);
		pid_t loser = ra ? b : a, winner = ra ? a : b;
		int status = cl_stop(loser, 0);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "loser status %d", status);
		cr_assert_eq(cl_stop(winner, SIGTERM), 0);
		cl_cleanup();
	}
}
