/* SPDX-License-Identifier: MIT */
/*
 * test_scribble.c - a process with write access scribbles random bytes over
 * the live segment (header, quota entries, config records, the name tables,
 * client slots) while 3 workers reserve, commit, look names up, read
 * quota_info and reopen their handles, and quotad serves. Contract 7: no
 * process dies of a signal (SIGSEGV, SIGBUS, SIGFPE) or a sanitizer report;
 * the workers get only the API's documented errors (counted and printed);
 * commit and cancel of an admitted ticket always succeed; quotad survives,
 * counts the damage (quotad_segment_damage_total in `metrics`) and repairs
 * what it published, so that after the scribbler stops a new quota_open()
 * succeeds again. The segment is never truncated (out of scope).
 */
#define _GNU_SOURCE /* strerrorname_np */
#include <errno.h>
#include <fcntl.h>
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
#include "v2lib.h"

#define NWORKERS 3
#define NQUOTAS 8
#define MAXERR 160

struct shared {
	_Atomic int stop;
	_Atomic uint64_t calls;
	_Atomic uint64_t admitted;
	_Atomic uint64_t settle_failed;
	_Atomic uint64_t bad_errno; /* an error quota.h does not document */
	_Atomic int last_bad;
	_Atomic uint64_t err[MAXERR]; /* by -errno */
	_Atomic uint64_t written;
};

static const char *const names[NQUOTAS] = { "a", "b", "c", "d", "e", "f", "g", "h" };

static void count(struct shared *sh, int r, const int *ok)
{
	atomic_fetch_add(&sh->calls, 1);
	if (r >= 0)
		return;
	if (-r < MAXERR)
		atomic_fetch_add(&sh->err[-r], 1);
	for (; *ok; ok++)
		if (r == *ok)
			return;
	atomic_fetch_add(&sh->bad_errno, 1);
	atomic_store(&sh->last_bad, r);
}

static const int open_ok[] = { -EBADMSG, -EPROTONOSUPPORT, -ETIMEDOUT, -EUSERS, -EACCES, -ENOMEM, 0 };
static const int find_ok[] = { -ENOENT, -EAGAIN, 0 };
static const int reserve_ok[] = { -EAGAIN, -E2BIG, -EDQUOT, -ENOENT, -ENOSPC, -EBADMSG, -EUSERS, 0 };
static const int info_ok[] = { -ENOENT, -EBADMSG, -EAGAIN, 0 };

static void worker(const char *seg, struct shared *sh, int w)
{
	uint64_t x = (uint64_t)w * 7919 + 3;
	quota_client *c = NULL;
	for (unsigned i = 0; !atomic_load(&sh->stop); i++) {
		if (!c || i % 64 == 0) {
			quota_close(c);
			c = NULL;
			int r = quota_open(seg, &c);
			count(sh, r, open_ok);
			if (r < 0) {
				c = NULL;
				continue;
			}
		}
		uint64_t r = v2_rand(&x);
		int id = quota_find(c, names[r % NQUOTAS]);
		count(sh, id < 0 ? id : 0, find_ok);
		if (id < 0)
			id = (int)(r >> 8) % (NQUOTAS + 2); /* ids are stable: use one anyway */
		if ((r >> 16) % 16 == 0) {
			struct quota_info in;
			count(sh, quota_info(c, id, &in, sizeof(in)), info_ok);
			continue;
		}
		struct quota_cost cost = { 1, 1 + (r >> 20) % 100, 1 + (r >> 28) % 100 };
		struct quota_ticket t;
		int err = quota_reserve(c, id, &cost, (int64_t)((r >> 36) % 3) * V2_MS, &t);
		count(sh, err, reserve_ok);
		if (err < 0)
			continue;
		atomic_fetch_add(&sh->admitted, 1);
		int s = (r >> 40) & 1 ? quota_cancel(c, &t) : quota_commit(c, &t, &(struct quota_cost){ 1, cost.input_tokens, 0 });
		if (s < 0)
			atomic_fetch_add(&sh->settle_failed, 1);
	}
	quota_close(c);
	_exit(0);
}

/* Write random bytes over the live segment until told to stop. */
static void scribbler(const char *seg, struct shared *sh, const struct qs_geom *g, uint64_t seed)
{
	char path[128];
	snprintf(path, sizeof(path), "/%s", seg);
	int fd = shm_open(path, O_RDWR, 0);
	if (fd < 0)
		_exit(1);
	char *base = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (base == MAP_FAILED)
		_exit(1);
	/* The areas, as offsets: [start, end). */
	uint64_t area[5][2] = {
		{ 0, QS_HEADER_SIZE },
		{ (uint64_t)(g->quotas - g->base), (uint64_t)(g->records - g->base) },
		{ (uint64_t)(g->records - g->base), (uint64_t)((char *)g->index[0] - g->base) },
		{ (uint64_t)((char *)g->index[0] - g->base), (uint64_t)(g->clients - g->base) },
		{ (uint64_t)(g->clients - g->base), g->size },
	};
	/* Mostly the parts that name things: the header's first lines, the
	 * used quota entries and records, the index, the first client slots. */
	area[0][1] = 512;
	area[1][1] = area[1][0] + NQUOTAS * sizeof(struct qs_quota);
	area[2][1] = area[2][0] + 2 * (NQUOTAS + 2) * sizeof(struct qs_record);
	area[4][1] = area[4][0] + 16 * sizeof(struct qs_client);
	while (!atomic_load(&sh->stop)) {
		uint64_t r = v2_rand(&seed);
		const uint64_t *a = area[r % 5];
		uint64_t off = a[0] + (r >> 8) % (a[1] - a[0]);
		/* The header's state word is left to damaged_state_word below:
		 * damaging it locks every new client out for good (a bug that test
		 * shows), which would hide everything else this test checks. */
		if (off >= offsetof(struct qs_header, state) && off < offsetof(struct qs_header, state) + 4)
			continue;
		__atomic_store_n((uint8_t *)base + off, (uint8_t)(r >> 56), __ATOMIC_RELAXED);
		atomic_fetch_add(&sh->written, 1);
		nanosleep(&(struct timespec){ 0, 100000 }, NULL); /* pacing, not a synchronisation */
	}
	_exit(0);
}

static void check_log(const struct cl_env *e)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "grep -qE 'AddressSanitizer|runtime error|LeakSanitizer|ThreadSanitizer' '%s'",
		 e->log);
	cr_assert_neq(system(cmd), 0, "quotad's log has a sanitizer report (%s)", e->log);
}

Test(v2_scribble, random_bytes_over_the_live_segment, .timeout = 120)
{
	struct cl_env e;
	cl_env(&e, "v2sc");
	char json[1024];
	int off = snprintf(json, sizeof(json), "{\"max_clients\": 32, \"max_quotas\": %d, \"quotas\": {", NQUOTAS + 2);
	for (int i = 0; i < NQUOTAS; i++)
		off += snprintf(json + off, sizeof(json) - (size_t)off,
				"%s\"%s\": {\"rpm\": %d, \"tpm\": %d, \"max_inflight\": %d, \"burst\": 0.5%s}",
				i ? ", " : "", names[i], 6000 * (i + 1), 600000 * (i + 1), 4 + i,
				i & 1 ? ", \"budget_usd\": {\"day\": 100}, \"price_per_mtok\": {\"input\": 1, \"output\": 2}" : "");
	snprintf(json + off, sizeof(json) - (size_t)off, "}}");
	const char *cfg = cl_file(&e, "q.json", json);
	pid_t qd = cl_quotad(&e, cfg, NULL);
	quota_client *c = cl_open(e.seg);
	struct qs_geom g = c->g;
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert(sh != MAP_FAILED);
	pid_t w[NWORKERS];
	for (int i = 0; i < NWORKERS; i++)
		if ((w[i] = cl_fork()) == 0)
			worker(e.seg, sh, i);
	pid_t sc = cl_fork();
	if (sc == 0)
		scribbler(e.seg, sh, &g, (uint64_t)v2_env_long("V2_SEED", 4242));

	/* Let it run (the workload's duration, not a synchronisation). */
	int64_t run = v2_env_long("V2_SCRIBBLE_MS", 3000) * V2_MS;
	nanosleep(&(struct timespec){ run / V2_S, run % V2_S }, NULL);
	atomic_store(&sh->stop, 1);
	int st;
	cr_assert_eq(waitpid(sc, &st, 0), sc);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the scribbler failed (%d)", st);
	int64_t t0 = v2_now();
	for (int i = 0; i < NWORKERS; i++) {
		pid_t got;
		while ((got = waitpid(w[i], &st, WNOHANG)) == 0 && v2_now() - t0 < 10 * V2_S)
			nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
		cr_assert_eq(got, w[i], "worker %d still running 10 s after the stop: hung", i);
		cr_assert(!WIFSIGNALED(st), "worker %d killed by signal %d (%s)", i, WTERMSIG(st), strsignal(WTERMSIG(st)));
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d exited %d (a sanitizer report?)", i,
			  WEXITSTATUS(st));
	}
	cr_assert_eq(waitpid(qd, &st, WNOHANG), 0, "quotad died (%s %d)", WIFSIGNALED(st) ? "signal" : "exit",
		     WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));

	/* quotad counted the damage, and a new client can attach again once
	 * its next check repaired the header (QD_CHECK_NS, 250 ms). */
	double damage = -1;
	for (t0 = v2_now(); v2_now() - t0 < 5 * V2_S; nanosleep(&(struct timespec){ 0, 10000000 }, NULL))
		if ((damage = v2_metric(e.sock, "quotad_segment_damage_total")) > 0)
			break;
	int r = -1;
	quota_client *again = NULL;
	for (t0 = v2_now(); v2_now() - t0 < 5 * V2_S; nanosleep(&(struct timespec){ 0, 10000000 }, NULL))
		if ((r = quota_open(e.seg, &again)) == 0)
			break;
	quota_close(again);

	printf("scribble: %llu bytes written over the live segment; %llu API calls, %llu admitted; quotad "
	       "counted %.0f damaged parts; errors:", (unsigned long long)atomic_load(&sh->written),
	       (unsigned long long)atomic_load(&sh->calls), (unsigned long long)atomic_load(&sh->admitted), damage);
	for (int i = 1; i < MAXERR; i++)
		if (atomic_load(&sh->err[i]))
			printf(" %s %llu", strerrorname_np(i) ? strerrorname_np(i) : "?", (unsigned long long)atomic_load(&sh->err[i]));
	printf("\n");
	cr_assert_gt(atomic_load(&sh->written), 1000);
	cr_assert_gt(atomic_load(&sh->admitted), 0);
	cr_assert_eq(atomic_load(&sh->bad_errno), 0, "%llu undocumented errors (last %d: %s)",
		     (unsigned long long)atomic_load(&sh->bad_errno), atomic_load(&sh->last_bad),
		     strerror(-atomic_load(&sh->last_bad)));
	cr_assert_eq(atomic_load(&sh->settle_failed), 0, "commit/cancel of an admitted ticket failed");
	cr_assert_gt(damage, 0, "quotad did not report the damage (quotad_segment_damage_total %.0f)", damage);
	cr_assert_eq(r, 0, "quota_open still fails 5 s after the scribbling stopped: %s (header state word %#x, "
		     "magic %#llx)", quota_strerror(r), atomic_load(&c->g.h->state),
		     (unsigned long long)c->g.h->magic);
	quota_close(c);
	st = cl_stop(qd, SIGTERM);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "quotad: %s %d", WIFSIGNALED(st) ? "signal" : "exit",
		  WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	check_log(&e);
}

/* One scribbled word, deterministically: the header's state word (READY
 * published by quotad). A damaged state must neither lock every new client
 * out nor stop a restarted quotad from adopting the segment. */
Test(v2_scribble, damaged_state_word, .timeout = 60)
{
	struct cl_env e;
	cl_env(&e, "v2st");
	const char *cfg = cl_file(&e, "q.json", "{\"quotas\": {\"q\": {\"rpm\": 600}}}");
	pid_t qd = cl_quotad(&e, cfg, NULL);
	quota_client *c = cl_open(e.seg);
	atomic_store(&c->g.h->state, 0x5a5a5a00u);
	quota_client *again = NULL;
	int r = -1;
	/* quotad's checks (every 250 ms) should put it back; 3 s at most. */
	for (int64_t t0 = v2_now(); v2_now() - t0 < 3 * V2_S; nanosleep(&(struct timespec){ 0, 10000000 }, NULL))
		if ((r = quota_open(e.seg, &again)) == 0)
			break;
	quota_close(again);
	double damage = -1;
	for (int64_t t0 = v2_now(); v2_now() - t0 < 3 * V2_S; nanosleep(&(struct timespec){ 0, 10000000 }, NULL))
		if ((damage = v2_metric(e.sock, "quotad_segment_damage_total")) > 0)
			break;
	printf("damaged state word: quota_open %s; quotad counted %.0f damaged parts\n",
	       r == 0 ? "succeeds again" : quota_strerror(r), damage);
	cr_expect_eq(r, 0, "a scribbled header state word locks new clients out: quota_open: %s",
		     quota_strerror(r));
	cr_expect_gt(damage, 0, "quotad did not report the damaged state word");
	/* A quotad restarted on the damaged segment adopts it. */
	cl_stop(qd, SIGKILL);
	atomic_store(&c->g.h->state, 0x5a5a5a00u);
	bool ready;
	int st;
	cl_quotad_try(&e, cfg, NULL, &ready, &st);
	cr_expect(ready, "a restarted quotad refuses a segment whose state word is damaged (exit %d)",
		  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	quota_close(c);
}
