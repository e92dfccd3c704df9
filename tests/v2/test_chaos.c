/* SPDX-License-Identifier: MIT */
/*
 * test_chaos.c - quotad SIGKILLed at random instants while it reloads in a
 * tight loop (contract 6, issue 8). A helper swaps the config file
 * atomically (link + rename) between 5 variants of ~110-170 quotas out of
 * 200 names - limits, burst, kinds added and removed, quotas added and
 * removed, max_inflight - and sends SIGHUP without pause; the test kills
 * quotad 0-4 ms after it is ready, V2_KILLS times (default 500), and starts
 * the next one, which must adopt the segment and serve (ready on its
 * --ready-fd, `status` answers with its pid). 4 workers reserve throughout.
 *
 * Checked: (1) every quota_reserve() returns within its timeout + 50 ms, not
 * counting the time its process waited for a CPU (the scheduler's run-queue
 * delay, /proc/thread-self/schedstat): this detects a call that spins or
 * sleeps past its timeout, not a slow machine; the plain wall time is
 * printed. (2) Every admission obeys the old or the new configuration: the
 * worker reads the quota's config word before and after the call; when it
 * did not change, the record it names is decoded and must equal the quota's
 * configuration in one of the variants (never a mix, never garbage). Then,
 * per quota and limit kind, the admissions made under configurations that
 * have that kind must satisfy the algorithm's invariant across
 * configurations (gcra.c): their slots, of inc_v(cost) ns each, are disjoint
 * and each lies in [a, a + tau_v] of its admission time a, so for every run
 * of admissions i..j in time order, sum(inc) <= max(a_k + tau_k) - a_i.
 * (3) No quota_open() fails, and no call returns an error quota.h does not
 * document for this situation.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ctllib.h"
#include "gcra.h"
#include "v2lib.h"

#define NNAMES 200
#define NHOT 8
#define NVAR 5
#define NKIND 4 /* rpm, tpm, itpm, otpm */
#define NWORKERS 4
#define MAXREC 600000
#define SLACK_NS (50 * V2_MS)

static const uint32_t kind_of[NKIND] = { QUOTA_RPM, QUOTA_TPM, QUOTA_ITPM, QUOTA_OTPM };
static const char *const kind_key[NKIND] = { "rpm", "tpm", "itpm", "otpm" };
static const uint32_t bursts[5] = { 50000, 100000, 300000, 500000, 1000000 };

/* Quota i in variant v. */
struct vq {
	bool present;
	uint32_t burst_ppm;
	uint64_t limit[NKIND]; /* 0: no such kind */
	uint32_t max_inflight;
	struct qs_limit_cfg lim[NKIND];
};

struct rec {
	int64_t at;
	uint16_t quota;
	uint8_t variant; /* 255: the config changed during the call */
	uint8_t pad;
	uint32_t in, out;
};

struct shared {
	struct vq var[NVAR][NNAMES];
	_Atomic int stop, hup_stop;
	_Atomic int qd_pid;
	_Atomic uint32_t n;
	_Atomic uint64_t calls, slow_wall, late, open_failed, bad_err, foreign, unknown, hups;
	_Atomic int64_t max_adjusted_over, max_wall_over;
	_Atomic int last_bad;
	_Atomic uint64_t err[160];
	struct rec rec[MAXREC];
};

static void make_variants(struct shared *sh, uint64_t seed)
{
	for (int v = 0; v < NVAR; v++)
		for (int i = 0; i < NNAMES; i++) {
			struct vq *q = &sh->var[v][i];
			uint64_t r = v2_rand(&seed);
			q->present = i < NHOT ? (i + v) % NVAR != 0 : r % 4 != 0;
			q->burst_ppm = bursts[(r >> 8) % 5];
			unsigned kinds = (unsigned)(r >> 16) % 15 + 1; /* a non-empty subset */
			for (int k = 0; k < NKIND; k++) {
				q->limit[k] = 0;
				if (kinds & (1u << k))
					q->limit[k] = k == 0 ? 600 + (r >> 24) % 2400 : 60000 + (r >> 32) % 240000;
				if (q->limit[k])
					cr_assert_eq(qg_limit_init(&q->lim[k], kind_of[k], q->limit[k],
								   qg_period_of(kind_of[k]), q->burst_ppm), 0);
			}
			q->max_inflight = (r >> 50) % 3 == 0 ? 2 + (uint32_t)(r >> 52) % 6 : 0;
		}
}

static void write_variant(const struct cl_env *e, const struct shared *sh, int v, char *path, size_t plen)
{
	size_t cap = 64 * 1024, off = 0;
	char *j = malloc(cap);
	cr_assert(j);
	off += (size_t)snprintf(j + off, cap - off, "{\"max_quotas\": 256, \"max_clients\": 64, \"quotas\": {");
	bool first = true;
	for (int i = 0; i < NNAMES; i++) {
		const struct vq *q = &sh->var[v][i];
		if (!q->present)
			continue;
		off += (size_t)snprintf(j + off, cap - off, "%s\"q%03d\": {\"burst\": %.6f", first ? "" : ", ", i,
					q->burst_ppm / 1e6);
		first = false;
		for (int k = 0; k < NKIND; k++)
			if (q->limit[k])
				off += (size_t)snprintf(j + off, cap - off, ", \"%s\": %llu", kind_key[k],
							(unsigned long long)q->limit[k]);
		if (q->max_inflight)
			off += (size_t)snprintf(j + off, cap - off, ", \"max_inflight\": %u", q->max_inflight);
		off += (size_t)snprintf(j + off, cap - off, "}");
	}
	snprintf(j + off, cap - off, "}}");
	char name[16];
	snprintf(name, sizeof(name), "v%d.json", v);
	snprintf(path, plen, "%s", cl_file(e, name, j));
	free(j);
}

/* The variant whose quota @i has exactly configuration @cfg, or -1. */
static int which_variant(const struct shared *sh, int i, const struct qs_config *cfg)
{
	if (cfg->flags & QS_REC_REMOVED)
		return -1;
	for (int v = 0; v < NVAR; v++) {
		const struct vq *q = &sh->var[v][i];
		if (!q->present || cfg->max_inflight != q->max_inflight)
			continue;
		uint32_t want = 0;
		for (int k = 0; k < NKIND; k++)
			want += q->limit[k] != 0;
		bool same = cfg->nlimits == want;
		for (uint32_t l = 0; l < cfg->nlimits && same; l++) {
			int k = 0;
			while (k < NKIND && kind_of[k] != cfg->lim[l].kind)
				k++;
			same = k < NKIND && q->limit[k] == cfg->lim[l].limit && cfg->lim[l].burst_ppm == q->burst_ppm;
		}
		if (same)
			return v;
	}
	return -1;
}

static void count_err(struct shared *sh, int r)
{
	if (-r < 160)
		atomic_fetch_add(&sh->err[-r], 1);
	if (r != -EAGAIN && r != -ENOENT && r != -E2BIG) {
		atomic_fetch_add(&sh->bad_err, 1);
		atomic_store(&sh->last_bad, r);
	}
}

static void atomic_max(_Atomic int64_t *w, int64_t v)
{
	int64_t cur = atomic_load(w);
	while (v > cur && !atomic_compare_exchange_weak(w, &cur, v))
		;
}

static void worker(const char *seg, struct shared *sh, int w)
{
	uint64_t x = (uint64_t)w * 0x9e3779b97f4a7c15ULL + 11;
	int id_of[NNAMES];
	uint64_t word_seen[NNAMES];
	int var_seen[NNAMES];
	for (int i = 0; i < NNAMES; i++)
		id_of[i] = -1, word_seen[i] = 0, var_seen[i] = -1;
	quota_client *c = NULL;
	for (unsigned it = 0; !atomic_load(&sh->stop); it++) {
		if (!c || it % 128 == 0) { /* fewer than 64 distinct quotas per handle (rows) */
			quota_close(c);
			c = NULL;
			int r = quota_open(seg, &c);
			if (r < 0) {
				atomic_fetch_add(&sh->open_failed, 1);
				atomic_store(&sh->last_bad, r);
				c = NULL;
				continue;
			}
		}
		uint64_t r = v2_rand(&x);
		int i = (r % 10) < 8 ? (int)((r >> 8) % NHOT) : (int)((r >> 8) % NNAMES);
		if (id_of[i] < 0) {
			char name[8];
			snprintf(name, sizeof(name), "q%03d", i);
			id_of[i] = quota_find(c, name);
			if (id_of[i] < 0) {
				if (id_of[i] != -ENOENT && id_of[i] != -EAGAIN)
					count_err(sh, id_of[i]);
				id_of[i] = -1;
				continue;
			}
		}
		struct qs_quota *q = qc_quota(c, id_of[i]);
		struct quota_cost cost = { 1, 1 + (r >> 20) % 200, 1 + (r >> 30) % 200 };
		int64_t timeout = (int64_t)((r >> 40) % 21) * V2_MS;
		struct quota_ticket t;
		uint64_t w1 = atomic_load(&q->cfg);
		int64_t rq0 = v2_runq_ns(), t0 = v2_now();
		int err = quota_reserve(c, id_of[i], &cost, timeout, &t);
		int64_t t1 = v2_now(), rq1 = v2_runq_ns();
		uint64_t w2 = atomic_load(&q->cfg);
		atomic_fetch_add(&sh->calls, 1);
		int64_t wall = t1 - t0, adjusted = rq0 >= 0 && rq1 >= rq0 ? wall - (rq1 - rq0) : wall;
		if (wall > timeout + SLACK_NS)
			atomic_fetch_add(&sh->slow_wall, 1);
		if (adjusted > timeout + SLACK_NS)
			atomic_fetch_add(&sh->late, 1);
		atomic_max(&sh->max_adjusted_over, adjusted - timeout);
		atomic_max(&sh->max_wall_over, wall - timeout);
		if (err < 0) {
			count_err(sh, err);
			continue;
		}
		int v = 255;
		if (w1 == w2) {
			if (word_seen[i] != w1) {
				struct qs_config cfg;
				uint64_t wr = 0;
				var_seen[i] = -2;
				if (qs_config_get(&c->g, (uint32_t)id_of[i], &cfg, &wr) == 0 && wr == w1)
					var_seen[i] = which_variant(sh, i, &cfg);
				word_seen[i] = w1;
			}
			if (var_seen[i] == -1)
				atomic_fetch_add(&sh->foreign, 1);
			v = var_seen[i] >= 0 ? var_seen[i] : 255;
		}
		if (v == 255)
			atomic_fetch_add(&sh->unknown, 1);
		uint32_t n = atomic_fetch_add(&sh->n, 1);
		if (n < MAXREC)
			sh->rec[n] = (struct rec){ quota_ticket_time(&t), (uint16_t)i, (uint8_t)v, 0,
						   (uint32_t)cost.input_tokens, (uint32_t)cost.output_tokens };
		if (quota_commit(c, &t, &cost) < 0)
			count_err(sh, -EPROTO);
	}
	quota_close(c);
	_exit(0);
}

/* Swap the config file between the variants and SIGHUP quotad, tightly. */
static void hupper(const struct cl_env *e, struct shared *sh, char (*paths)[160], const char *cfg)
{
	uint64_t x = 77;
	char tmp[200];
	snprintf(tmp, sizeof(tmp), "%s/swap.tmp", e->dir);
	while (!atomic_load(&sh->hup_stop)) {
		int v = (int)(v2_rand(&x) % NVAR);
		unlink(tmp);
		if (link(paths[v], tmp) == 0 && rename(tmp, cfg) == 0) {
			int pid = atomic_load(&sh->qd_pid);
			if (pid > 0 && kill(pid, SIGHUP) == 0)
				atomic_fetch_add(&sh->hups, 1);
		}
		nanosleep(&(struct timespec){ 0, 50000 }, NULL); /* pacing */
	}
	_exit(0);
}

static int by_at(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	return (x->at > y->at) - (x->at < y->at);
}

/* Check the invariant for quota @i, kind @k over @recs (sorted): returns the
 * number of runs that break it. */
static uint64_t check_kind(const struct shared *sh, const struct rec *recs, uint32_t n, int i, int k,
			   uint32_t *checked)
{
	struct rec *r = malloc((n ? n : 1) * sizeof(*r));
	cr_assert(r);
	uint32_t m = 0;
	for (uint32_t j = 0; j < n; j++)
		if (recs[j].quota == i && recs[j].variant < NVAR && sh->var[recs[j].variant][i].limit[k])
			r[m++] = recs[j];
	*checked += m;
	uint64_t bad = 0;
	for (uint32_t a = 0; a < m; a++) {
		__int128 sum = 0, maxend = INT64_MIN;
		for (uint32_t b = a; b < m; b++) {
			const struct qs_limit_cfg *l = &sh->var[r[b].variant][i].lim[k];
			uint64_t units = k == 0 ? 1 : k == 1 ? (uint64_t)r[b].in + r[b].out : k == 2 ? r[b].in : r[b].out;
			sum += qg_charge(l, units);
			__int128 end = (__int128)r[b].at + l->tau_ns;
			if (end > maxend)
				maxend = end;
			if (sum > maxend - r[a].at) {
				if (bad++ < 5)
					cr_log_error("q%03d %s: admissions %u..%u (%.6f s .. %.6f s) take %lld ns of slots, "
						     "only %lld ns fit", i, kind_key[k], a, b, r[a].at / 1e9, r[b].at / 1e9,
						     (long long)sum, (long long)(maxend - r[a].at));
				break;
			}
		}
	}
	free(r);
	return bad;
}

Test(v2_chaos, kill_quotad_while_it_reloads, .timeout = 900)
{
	struct cl_env e;
	cl_env(&e, "v2ch");
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert(sh != MAP_FAILED);
	uint64_t seed = (uint64_t)v2_env_long("V2_SEED", 2026);
	make_variants(sh, seed);
	static char paths[NVAR][160];
	for (int v = 0; v < NVAR; v++)
		write_variant(&e, sh, v, paths[v], sizeof(paths[v]));
	char cfg[200];
	snprintf(cfg, sizeof(cfg), "%s/quotad.json", e.dir);
	cr_assert_eq(link(paths[0], cfg), 0);
	int kills = (int)v2_env_long("V2_KILLS", 500);

	pid_t qd = cl_quotad(&e, cfg, NULL);
	pid_t w[NWORKERS];
	for (int i = 0; i < NWORKERS; i++)
		if ((w[i] = cl_fork()) == 0)
			worker(e.seg, sh, i);
	pid_t hup = cl_fork();
	if (hup == 0)
		hupper(&e, sh, paths, cfg);

	quota_client *obs = cl_open(e.seg);
	uint64_t gen0 = atomic_load(&obs->g.h->generation);
	int64_t t0 = v2_now(), *startup = calloc((size_t)kills + 1, sizeof(int64_t));
	cr_assert(startup);
	for (int k = 0; k <= kills; k++) {
		if (k > 0) {
			truncate(e.log, 0); /* keep the last life's log only */
			int64_t s0 = v2_now();
			bool ready;
			int st;
			qd = cl_quotad_try(&e, cfg, NULL, &ready, &st);
			startup[k - 1] = v2_now() - s0;
			if (!ready) {
				char cmd[256];
				snprintf(cmd, sizeof(cmd), "cat '%s' >&2", e.log);
				if (system(cmd) != 0)
					fprintf(stderr, "(no log)\n");
			}
			cr_assert(ready, "quotad %d of %d did not adopt the segment (status %d)", k, kills, st);
		}
		char *reply = cl_request(e.sock, "{\"cmd\":\"status\"}");
		double pid = reply ? cl_json_num(reply, "daemon.pid") : -1;
		free(reply);
		cr_assert_eq(pid, (double)qd, "quotad %d does not serve: status says pid %.0f", k, pid);
		if (k == kills)
			break;
		atomic_store(&sh->qd_pid, qd);
		v2_spin((int64_t)(v2_rand(&seed) % (4 * V2_MS + 1))); /* a random instant */
		atomic_store(&sh->qd_pid, 0);
		int st = cl_stop(qd, SIGKILL);
		cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "quotad %d died before the kill (status %d)", k, st);
	}
	uint64_t gens = atomic_load(&obs->g.h->generation) - gen0;
	int64_t chaos_ns = v2_now() - t0;
	atomic_store(&sh->hup_stop, 1);
	cr_assert_eq(cl_stop(hup, 0), 0);
	atomic_store(&sh->stop, 1);
	for (int i = 0; i < NWORKERS; i++) {
		int st;
		pid_t got;
		int64_t s0 = v2_now();
		while ((got = waitpid(w[i], &st, WNOHANG)) == 0 && v2_now() - s0 < 10 * V2_S)
			nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
		cr_assert_eq(got, w[i], "worker %d still running 10 s after the stop: hung", i);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d: %s %d", i,
			  WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	}
	/* Every in-flight slot is back once the workers closed. */
	for (int id = 0; id < quota_count(obs); id++) {
		struct quota_info in;
		cr_assert_eq(quota_info(obs, id, &in, sizeof(in)), 0);
		cr_assert_eq(in.inflight, 0, "quota %s: %llu in flight after every worker closed", in.name,
			     (unsigned long long)in.inflight);
	}
	quota_close(obs);

	uint32_t n = atomic_load(&sh->n);
	cr_assert_lt(n, MAXREC, "log overflow");
	qsort(sh->rec, n, sizeof(sh->rec[0]), by_at);
	uint64_t broken = 0;
	uint32_t checked = 0;
	for (int i = 0; i < NNAMES; i++)
		for (int k = 0; k < NKIND; k++)
			broken += check_kind(sh, sh->rec, n, i, k, &checked);

	v2_print_timings("chaos: quotad start to ready (adopting)", startup, (size_t)kills);
	printf("chaos: %d kills in %.1f s, %llu SIGHUPs sent, %llu config generations published; %llu reserve "
	       "calls, %u admitted (%llu during a reload: not attributed), %u limit-admissions checked, %llu "
	       "runs breaking the bound; late (> timeout + 50 ms beyond run-queue waits) %llu, max %.3f ms over "
	       "the timeout (wall: %llu over +50 ms, max %.3f ms over)\n", kills, chaos_ns / 1e9,
	       (unsigned long long)atomic_load(&sh->hups), (unsigned long long)gens,
	       (unsigned long long)atomic_load(&sh->calls), n, (unsigned long long)atomic_load(&sh->unknown), checked,
	       (unsigned long long)broken, (unsigned long long)atomic_load(&sh->late),
	       atomic_load(&sh->max_adjusted_over) / 1e6, (unsigned long long)atomic_load(&sh->slow_wall),
	       atomic_load(&sh->max_wall_over) / 1e6);
	printf("chaos: errors:");
	for (int i = 1; i < 160; i++)
		if (atomic_load(&sh->err[i]))
			printf(" %d:%llu", i, (unsigned long long)atomic_load(&sh->err[i]));
	printf("\n");
	cr_assert_eq(atomic_load(&sh->open_failed), 0, "quota_open failed %llu times (last %s)",
		     (unsigned long long)atomic_load(&sh->open_failed), quota_strerror(atomic_load(&sh->last_bad)));
	cr_assert_eq(atomic_load(&sh->bad_err), 0, "%llu unexpected errors (last %s)",
		     (unsigned long long)atomic_load(&sh->bad_err), quota_strerror(atomic_load(&sh->last_bad)));
	cr_assert_eq(atomic_load(&sh->late), 0, "%llu reservations returned later than timeout + 50 ms",
		     (unsigned long long)atomic_load(&sh->late));
	cr_assert_eq(atomic_load(&sh->foreign), 0, "%llu admissions under a configuration of no variant",
		     (unsigned long long)atomic_load(&sh->foreign));
	cr_assert_eq(broken, 0, "%llu runs of admissions exceed what the limits allow", (unsigned long long)broken);
	cr_assert_gt(n, 1000, "only %u admissions", n);
	munmap(sh, sizeof(*sh));
	free(startup);
}
