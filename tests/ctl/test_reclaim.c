/* SPDX-License-Identifier: MIT */
/*
 * test_reclaim.c - contract 5 through quotad: processes holding in-flight
 * slots are SIGKILLed before, during and after quota_reserve(); every slot
 * comes back within 100 ms of the kill, the shared count never drops below
 * what the survivors hold (nothing given back twice) nor goes negative;
 * a process that dies between the shared count and its own row is repaired
 * by an audit; a slot whose pid now names another process is reclaimed, not
 * adopted; quotad started late adopts the living and reclaims the dead.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>

#include "ctllib.h"

#define CONFIG "{\"quotas\": {\"q\": {\"rpm\": 100000000, \"max_inflight\": 64}}}"
#define SENTINEL 3
#define REPS 120
#define LATENCY_MAX (500 * CL_MS) /* 100 ms required; margin for shared CPUs */

static const struct quota_cost one = { 1, 1, 1 };

static uint32_t count_of(struct qs_quota *q)
{
	return QS_INFLIGHT_COUNT(atomic_load(&q->inflight));
}

/* A child: attach, report the slot, then behave as @mode says. */
static void child(const char *seg, int fd, int mode, unsigned seed)
{
	quota_client *c;
	if (quota_open(seg, &c) < 0)
		_exit(1);
	int id = quota_find(c, "q");
	uint32_t slot = c->first->slot; /* the opening thread's slot */
	if (write(fd, &slot, sizeof(slot)) != sizeof(slot))
		_exit(1);
	struct quota_ticket t[4];
	if (mode == 0) /* killed before any reserve */
		for (;;)
			pause();
	if (mode == 2) { /* killed after reserving, holding 1..4 */
		int n = 1 + (int)(seed % 4);
		for (int i = 0; i < n; i++)
			if (quota_reserve(c, id, &one, 0, &t[i]) < 0)
				_exit(1);
		if (write(fd, "h", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	/* mode 1: killed somewhere in a tight reserve/commit loop */
	unsigned held = 0, head = 0;
	for (uint64_t x = seed | 1;; ) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		if (held < 4 && quota_reserve(c, id, &one, 0, &t[(head + held) % 4]) == 0)
			held++;
		if (held && (x & 3) == 0) {
			if (x & 4)
				quota_commit(c, &t[head], &one);
			else
				quota_cancel(c, &t[head]);
			head = (head + 1) % 4;
			held--;
		}
	}
}

/* Has quotad adopted @pid (a pidfd polled)? Asked over the control socket. */
static bool watched(const char *sock, pid_t pid)
{
	char *r = cl_request(sock, "{\"cmd\":\"clients\"}");
	cJSON *root = r ? cJSON_Parse(r) : NULL;
	free(r);
	bool yes = false;
	const cJSON *c;
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "clients"))
		if (cJSON_GetObjectItemCaseSensitive(c, "pid")->valuedouble == pid &&
		    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "watched")))
			yes = true;
	cJSON_Delete(root);
	return yes;
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

/* Wait until @slot is FREE and the count is @want; assert the count never
 * leaves [@want, 64] meanwhile. Returns the ns it took from @t0. */
static int64_t wait_back(quota_client *c, struct qs_quota *q, uint32_t slot, uint32_t want, int64_t t0)
{
	struct qs_client *cs = qs_client_at(&c->g, slot);
	for (;;) {
		uint32_t n = count_of(q);
		cr_assert(n >= want && n <= 64, "in-flight count %u outside [%u, 64]", n, want);
		uint64_t st = atomic_load(&cs->state);
		int64_t now = cl_now();
		if (QS_CLIENT_STATUS(st) == QS_CLIENT_FREE && n == want)
			return now - t0;
		cr_assert(now - t0 < 2 * CL_S, "slot %u not reclaimed after 2 s (state %llu, count %u)", slot,
			  (unsigned long long)st, n);
		nanosleep(&(struct timespec){ 0, 20000 }, NULL); /* polling a condition */
	}
}

Test(reclaim, kill9_at_random_moments, .timeout = 120)
{
	struct cl_env e;
	cl_env(&e, "rk");
	cl_quotad(&e, cl_file(&e, "q.json", CONFIG), NULL);
	quota_client *c = cl_open(e.seg);
	int id = quota_find(c, "q");
	struct qs_quota *q = qc_quota(c, id);
	struct quota_ticket sentinel[SENTINEL];
	for (int i = 0; i < SENTINEL; i++)
		cr_assert_eq(quota_reserve(c, id, &one, 0, &sentinel[i]), 0);

	int64_t lat[REPS];
	srand(12345);
	for (int rep = 0; rep < REPS; rep++) {
		int p[2];
		cr_assert(pipe(p) == 0);
		int mode = rep % 3;
		unsigned seed = (unsigned)rand();
		pid_t pid = cl_fork();
		if (pid == 0) {
			close(p[0]);
			child(e.seg, p[1], mode, seed);
			_exit(0);
		}
		close(p[1]);
		uint32_t slot;
		char h;
		cr_assert_eq(read(p[0], &slot, sizeof(slot)), (ssize_t)sizeof(slot), "child %d failed", rep);
		if (mode == 2)
			cr_assert_eq(read(p[0], &h, 1), 1);
		/* Modes 1 and 2 are long-lived workers: quotad watches them before
		 * they die (the pidfd path). Mode 0 is killed without waiting for
		 * quotad to watch it (its claim notice or the next scan of the
		 * client table finds it, possibly dead already). */
		for (int64_t t = cl_now(); mode != 0 && !watched(e.sock, pid);)
			cr_assert_lt(cl_now() - t, 2 * CL_S, "quotad never adopted child %d", (int)pid);
		if (mode == 1) /* a random moment inside the loop (not a synchronisation) */
			nanosleep(&(struct timespec){ 0, (long)(seed % 2000) * 1000 }, NULL);
		kill(pid, SIGKILL);
		int64_t t0 = cl_now();
		lat[rep] = wait_back(c, q, slot, SENTINEL, t0);
		cl_stop(pid, SIGKILL);
		close(p[0]);
	}
	/* Per path: lat[mode::3]. */
	int64_t path[2][REPS];
	int np[2] = { 0, 0 };
	for (int rep = 0; rep < REPS; rep++)
		path[rep % 3 != 0][np[rep % 3 != 0]++] = lat[rep];
	qsort(path[0], (size_t)np[0], sizeof(int64_t), cmp64);
	qsort(path[1], (size_t)np[1], sizeof(int64_t), cmp64);
	fprintf(stderr, "reclaim latency, watched workers (pidfd, %d runs): median %.3f ms, max %.3f ms; "
		"killed right after quota_open (notice or scan, %d runs): median %.3f ms, max %.3f ms\n",
		np[1], path[1][np[1] / 2] / 1e6, path[1][np[1] - 1] / 1e6, np[0], path[0][np[0] / 2] / 1e6,
		path[0][np[0] - 1] / 1e6);
	qsort(lat, REPS, sizeof(lat[0]), cmp64);
	char *st = cl_request(e.sock, "{\"cmd\":\"status\"}");
	cr_assert(st);
	cr_assert_eq(cl_json_num(st, "daemon.reclaim.anomalies"), 0, "%s", st);
	cr_assert_geq(cl_json_num(st, "daemon.reclaim.slots"), REPS, "%s", st);
	int64_t p95 = lat[REPS * 95 / 100];
	fprintf(stderr, "reclaim latency after SIGKILL over %d runs: median %.3f ms, p95 %.3f ms, max %.3f ms; "
		"audits %.0f, in-flight given back %.0f\n", REPS, lat[REPS / 2] / 1e6, p95 / 1e6,
		lat[REPS - 1] / 1e6, cl_json_num(st, "daemon.reclaim.audits"),
		cl_json_num(st, "daemon.reclaim.inflight"));
	free(st);
	/* The requirement is 100 ms. Measured here from kill() to the test
	 * seeing the slot free, on shared CPUs where other jobs run: the 95th
	 * percentile must meet it, and no run may take more than 5 times it
	 * (what is left is scheduling delay, of quotad or of this process). */
	cr_assert_lt(p95, 100 * CL_MS, "p95 reclaim latency %.3f ms", p95 / 1e6);
	cr_assert_lt(lat[REPS - 1], LATENCY_MAX, "max reclaim latency %.3f ms", lat[REPS - 1] / 1e6);
	for (int i = 0; i < SENTINEL; i++)
		cr_assert_eq(quota_commit(c, &sentinel[i], &one), 0);
	cr_assert_eq(count_of(q), 0);
	quota_close(c);
}

/* The child reserves 2 and waits; returns its pid, slot in *@slot. */
static pid_t holder(const char *seg, uint32_t *slot)
{
	int p[2];
	cr_assert(pipe(p) == 0);
	pid_t pid = cl_fork();
	if (pid == 0) {
		close(p[0]);
		child(seg, p[1], 2, 1); /* seed 1: holds 2 */
		_exit(0);
	}
	close(p[1]);
	char h;
	cr_assert_eq(read(p[0], slot, sizeof(*slot)), (ssize_t)sizeof(*slot));
	cr_assert_eq(read(p[0], &h, 1), 1);
	close(p[0]);
	return pid;
}

Test(reclaim, died_between_count_and_row_is_audited)
{
	struct cl_env e;
	cl_env(&e, "ra");
	cl_quotad(&e, cl_file(&e, "q.json", CONFIG), NULL);
	quota_client *c = cl_open(e.seg);
	int id = quota_find(c, "q");
	struct qs_quota *q = qc_quota(c, id);
	struct quota_ticket t;
	cr_assert_eq(quota_reserve(c, id, &one, 0, &t), 0);
	uint32_t slot;
	pid_t pid = holder(e.seg, &slot);
	cr_assert_eq(count_of(q), 3);
	/* Forge the moment of death: the child's CAS took one more slot, its
	 * row was never updated, its intent still says so. */
	struct qs_client *cs = qs_client_at(&c->g, slot);
	atomic_store(&cs->intent, (1ULL << 32) | (uint32_t)(id + 1));
	atomic_fetch_add(&q->inflight, QS_INFLIGHT_SEQ1 + 1);
	kill(pid, SIGKILL);
	int64_t lat = wait_back(c, q, slot, 1, cl_now());
	cl_stop(pid, SIGKILL);
	char *st = cl_request(e.sock, "{\"cmd\":\"status\"}");
	cr_assert(st);
	cr_assert_geq(cl_json_num(st, "daemon.reclaim.audits"), 1, "%s", st);
	cr_assert_eq(cl_json_num(st, "daemon.reclaim.anomalies"), 0, "%s", st);
	free(st);
	cr_assert_lt(lat, LATENCY_MAX);
	cr_assert_eq(quota_cancel(c, &t), 0);
	cr_assert_eq(count_of(q), 0);
	quota_close(c);
}

Test(reclaim, reused_pid_is_reclaimed_not_adopted)
{
	struct cl_env e;
	cl_env(&e, "rp");
	cl_quotad(&e, cl_file(&e, "q.json", CONFIG), NULL);
	quota_client *c = cl_open(e.seg);
	int id = quota_find(c, "q");
	struct qs_quota *q = qc_quota(c, id);
	/* A living process that is not the slot's owner. */
	pid_t other = cl_fork();
	if (other == 0)
		for (;;)
			pause();
	/* Forge a slot as a dead client would have left it, whose pid now
	 * belongs to @other (a different start time), holding 2. */
	uint32_t s = c->g.client_capacity - 1;
	struct qs_client *cs = qs_client_at(&c->g, s);
	uint64_t w = atomic_load(&cs->state);
	cr_assert_eq(QS_CLIENT_STATUS(w), QS_CLIENT_FREE);
	uint32_t gen = QS_CLIENT_GEN(w) + 1;
	/* The pid is in the state word (layout 2). */
	cr_assert(atomic_compare_exchange_strong(&cs->state, &w, QS_CLIENT_WORD(gen, other, QS_CLIENT_CLAIMING)));
	atomic_store(&cs->starttime, qc_proc_starttime(other) + 4242);
	atomic_store(&cs->rows[0].quota1, (uint32_t)id + 1);
	atomic_store(&cs->rows[0].held, 2);
	atomic_fetch_add(&q->inflight, QS_INFLIGHT_SEQ1 + 2);
	atomic_store(&cs->state, QS_CLIENT_WORD(gen, other, QS_CLIENT_LIVE));
	atomic_fetch_add(&c->g.h->client_seq, 1);
	int64_t lat = wait_back(c, q, s, 0, cl_now());
	cr_assert_eq(kill(other, 0), 0, "the other process must be left alone");
	char *st = cl_request(e.sock, "{\"cmd\":\"status\"}");
	cr_assert(st);
	cr_assert_eq(cl_json_num(st, "daemon.reclaim.pid_reused"), 1, "%s", st);
	free(st);
	cr_assert_lt(lat, LATENCY_MAX);
	cl_stop(other, SIGKILL);
	quota_close(c);
}

Test(reclaim, late_quotad_adopts_living_reclaims_dead)
{
	struct cl_env e;
	cl_env(&e, "rl");
	const char *cfg = cl_file(&e, "q.json", CONFIG);
	pid_t qd = cl_quotad(&e, cfg, NULL);
	cl_stop(qd, SIGKILL); /* quotad down, the segment stays */
	quota_client *c = cl_open(e.seg);
	int id = quota_find(c, "q");
	struct qs_quota *q = qc_quota(c, id);
	uint32_t live_slot, dead_slot;
	pid_t live = holder(e.seg, &live_slot);
	pid_t dead = holder(e.seg, &dead_slot);
	cr_assert_eq(count_of(q), 4, "workers keep working without quotad");
	cl_stop(dead, SIGKILL);
	cr_assert_eq(count_of(q), 4, "nobody reclaims while quotad is down");
	cl_quotad(&e, cfg, NULL);
	/* Ready is written after the first scan: the dead one is back already. */
	cr_assert_eq(QS_CLIENT_STATUS(atomic_load(&qs_client_at(&c->g, dead_slot)->state)), QS_CLIENT_FREE);
	cr_assert_eq(count_of(q), 2);
	cr_assert_eq(QS_CLIENT_STATUS(atomic_load(&qs_client_at(&c->g, live_slot)->state)), QS_CLIENT_LIVE);
	char *cl = cl_request(e.sock, "{\"cmd\":\"clients\"}");
	cr_assert(cl && strstr(cl, "\"watched\":true"), "%s", cl ? cl : "(no reply)");
	free(cl);
	kill(live, SIGKILL);
	wait_back(c, q, live_slot, 0, cl_now());
	cl_stop(live, SIGKILL);
	quota_close(c);
}

Test(reclaim, stalled_process_keeps_what_it_holds)
{
	struct cl_env e;
	cl_env(&e, "rz");
	cl_quotad(&e, cl_file(&e, "q.json", CONFIG), NULL);
	quota_client *c = cl_open(e.seg);
	struct qs_quota *q = qc_quota(c, quota_find(c, "q"));
	uint32_t slot;
	pid_t pid = holder(e.seg, &slot);
	kill(pid, SIGSTOP);
	/* An observation window of 25 ticks: a stalled process is not a dead one. */
	nanosleep(&(struct timespec){ 0, 25 * 20 * CL_MS }, NULL);
	cr_assert_eq(QS_CLIENT_STATUS(atomic_load(&qs_client_at(&c->g, slot)->state)), QS_CLIENT_LIVE);
	cr_assert_eq(count_of(q), 2);
	kill(pid, SIGCONT);
	kill(pid, SIGKILL);
	wait_back(c, q, slot, 0, cl_now());
	cl_stop(pid, SIGKILL);
	quota_close(c);
}

#define CONFIG2 "{\"quotas\": {\"q\": {\"rpm\": 100000000, \"max_inflight\": 64}, " \
	"\"r\": {\"rpm\": 100000000, \"max_inflight\": 64}}}"

/* A child holding 2 on "q" and 2 on "r"; returns its pid and slot. */
static pid_t holder2(const char *seg, uint32_t *slot)
{
	int p[2];
	cr_assert(pipe(p) == 0);
	pid_t pid = cl_fork();
	if (pid == 0) {
		quota_client *c;
		struct quota_ticket t[4];
		if (quota_open(seg, &c) < 0)
			_exit(1);
		int q = quota_find(c, "q"), r = quota_find(c, "r");
		for (int i = 0; i < 4; i++)
			if (quota_reserve(c, i < 2 ? q : r, &one, 0, &t[i]) < 0)
				_exit(1);
		uint32_t s = c->first->slot;
		if (write(p[1], &s, sizeof(s)) != sizeof(s))
			_exit(1);
		for (;;)
			pause();
	}
	close(p[1]);
	cr_assert_eq(read(p[0], slot, sizeof(*slot)), (ssize_t)sizeof(*slot));
	close(p[0]);
	return pid;
}

Test(reclaim, quotad_killed_mid_give_back_is_repaired)
{
	for (int moved = 0; moved < 2; moved++) {
		struct cl_env e;
		cl_env(&e, "rj");
		const char *cfg = cl_file(&e, "q.json", CONFIG);
		cl_stop(cl_quotad(&e, cfg, NULL), SIGKILL);
		quota_client *c = cl_open(e.seg);
		int id = quota_find(c, "q");
		struct qs_quota *q = qc_quota(c, id);
		struct quota_ticket t;
		cr_assert_eq(quota_reserve(c, id, &one, 0, &t), 0);
		uint32_t slot;
		cl_stop(holder(e.seg, &slot), SIGKILL);
		cr_assert_eq(count_of(q), 3);
		/* Forge what a quotad killed inside give_back() leaves: the slot
		 * RECLAIMING, the row journalled (journal = the amount, held not
		 * yet zeroed), the counter moved or not yet. */
		struct qs_client *cs = qs_client_at(&c->g, slot);
		uint64_t w = atomic_load(&cs->state);
		atomic_store(&cs->state, (w & ~0xffULL) | QS_CLIENT_RECLAIMING);
		for (int r = 0; r < (int)QS_CLIENT_ROWS; r++)
			if (atomic_load(&cs->rows[r].quota1) == (uint32_t)id + 1)
				atomic_store(&cs->rows[r].journal, 2);
		if (moved)
			atomic_fetch_add(&q->inflight, QS_INFLIGHT_SEQ1 - 2);
		cl_quotad(&e, cfg, NULL);
		wait_back(c, q, slot, 1, cl_now());
		char *st = cl_request(e.sock, "{\"cmd\":\"status\"}");
		cr_assert(st && cl_json_num(st, "daemon.reclaim.audits") >= 1, "%s", st ? st : "(no reply)");
		free(st);
		cr_assert_eq(quota_cancel(c, &t), 0);
		cr_assert_eq(count_of(q), 0, "counter moved: %d", moved);
		quota_close(c);
		cl_cleanup();
	}
}

Test(reclaim, an_ambiguity_does_not_hold_back_other_quotas)
{
	struct cl_env e;
	cl_env(&e, "rb");
	cl_quotad(&e, cl_file(&e, "q.json", CONFIG2), NULL);
	quota_client *c = cl_open(e.seg);
	int q = quota_find(c, "q"), r = quota_find(c, "r");
	struct qs_quota *qq = qc_quota(c, q), *qr = qc_quota(c, r);
	uint32_t slot;
	pid_t pid = holder2(e.seg, &slot);
	/* The child dies mid-update on q; and this (living) process looks as
	 * if it were mid-update on q too, so q cannot be audited yet. */
	atomic_store(&qs_client_at(&c->g, slot)->intent, (1ULL << 32) | (uint32_t)(q + 1));
	atomic_fetch_add(&qq->inflight, QS_INFLIGHT_SEQ1 + 1);
	atomic_store(&c->first->cs->intent, (1ULL << 32) | (uint32_t)(q + 1));
	kill(pid, SIGKILL);
	int64_t t0 = cl_now();
	while (QS_INFLIGHT_COUNT(atomic_load(&qr->inflight)) != 0)
		cr_assert_lt(cl_now() - t0, 2 * CL_S, "r's slots not given back while q waits");
	cr_assert_eq(QS_CLIENT_STATUS(atomic_load(&qs_client_at(&c->g, slot)->state)), QS_CLIENT_RECLAIMING);
	cr_assert_eq(count_of(qq), 3, "q is left alone while it cannot be audited");
	atomic_store(&c->first->cs->intent, 0); /* our "update" is done */
	wait_back(c, qq, slot, 0, cl_now());
	cl_stop(pid, SIGKILL);
	quota_close(c);
}
