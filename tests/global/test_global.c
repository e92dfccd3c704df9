/* SPDX-License-Identifier: MIT */
/*
 * test_global.c - global quotas through Redis (issue 11), on one machine:
 * a redis-server on a unix socket in a temp dir, several quotads with their
 * own segments and host_ids standing for hosts, greedy workers that log the
 * monotonic time of every admission, and an auditor that counts the global
 * admissions in every window and checks the bound docs/ARCHITECTURE.md
 * states. Everything started here is killed at exit, also on failure
 * (ctllib; children get PDEATHSIG). GLOBAL_SOAK=SECONDS runs longer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <hiredis/hiredis.h>

#include "ctllib.h"
#include "quota.h"

#define H_MAX 6

struct host {
	struct cl_env e;
	pid_t quotad;
	char cfg[200];
};

static int64_t soak_s(int64_t dflt)
{
	const char *s = getenv("GLOBAL_SOAK");
	long v = s ? atol(s) : 0;
	return v > 0 ? v : dflt;
}

/* ------------------------------------------------------------------ Redis */

static bool redis_up(const char *sock)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
	bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* redis-server on DIR/redis.sock only (no TCP), no persistence: a restart
 * is a master that comes back empty. Waits until it accepts. */
static pid_t redis_start(const char *dir, char *sock, size_t socklen)
{
	snprintf(sock, socklen, "%s/redis.sock", dir);
	unlink(sock);
	pid_t pid = cl_fork();
	if (pid == 0) {
		char log[160];
		snprintf(log, sizeof(log), "%s/redis.log", dir);
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
		       "--appendonly", "no", "--dir", dir, (char *)NULL);
		_exit(127);
	}
	int64_t until = cl_now() + 10 * CL_S;
	while (!redis_up(sock)) {
		int st;
		cr_assert(waitpid(pid, &st, WNOHANG) == 0, "redis-server exited (is it installed?)");
		cr_assert(cl_now() < until, "redis-server not accepting on %s", sock);
		struct timespec ts = { 0, 2 * CL_MS };
		nanosleep(&ts, NULL); /* polling a condition, bounded */
	}
	return pid;
}

static redisContext *redis_ctx(const char *sock)
{
	redisContext *c = redisConnectUnix(sock);
	cr_assert(c && !c->err, "redis connect %s", sock);
	return c;
}

/* ------------------------------------------------------------------ hosts */

static const char *host_config(struct host *h, int i, const char *rsock, const char *quotas)
{
	char json[2048];
	snprintf(json, sizeof(json),
		 "{\"redis\": {\"url\": \"unix://%s\", \"host_id\": \"h%d\"},\n"
		 " \"quotas\": {%s}}\n", rsock, i, quotas);
	const char *p = cl_file(&h->e, "global.json", json);
	snprintf(h->cfg, sizeof(h->cfg), "%s", p);
	return h->cfg;
}

/* Host @i (host_id h@i) serving @quotas. */
static void host_start(struct host *h, int i, const char *rsock, const char *quotas)
{
	cl_env(&h->e, "glob");
	host_config(h, i, rsock, quotas);
	h->quotad = cl_quotad(&h->e, h->cfg, NULL);
}

static void hosts_start(struct host *h, int n, const char *rsock, const char *quotas)
{
	for (int i = 0; i < n; i++)
		host_start(&h[i], i, rsock, quotas);
}

/* A test's Redis (its socket in @rsock) and @n hosts serving @quotas;
 * returns the redis-server's pid. */
static pid_t fleet_start(struct cl_env *re, char *rsock, size_t len, struct host *h, int n, const char *quotas)
{
	cl_env(re, "redis");
	pid_t pid = redis_start(re->dir, rsock, len);
	hosts_start(h, n, rsock, quotas);
	return pid;
}

/* Host @h's status once it holds @a (and @b unless NULL), within 5 s;
 * malloc'ed. */
static char *status_until(const struct host *h, const char *a, const char *b)
{
	int64_t lim = cl_now() + 5 * CL_S;
	for (;;) {
		char *st = cl_request(h->e.sock, "{\"cmd\": \"status\"}");
		if (st && strstr(st, a) && (!b || strstr(st, b)))
			return st;
		free(st);
		cr_assert(cl_now() < lim, "host %s: no '%s'%s%s in its status", h->e.seg, a, b ? " and " : "",
			  b ? b : "");
		struct timespec s = { 0, 20 * CL_MS };
		nanosleep(&s, NULL); /* polling a condition, bounded */
	}
}

/* ------------------------------------------------------------------ workers */

/* A greedy worker: reserves 1 request on @quota until @until, logging the
 * monotonic time after each admission (8 bytes each) to @path. */
static pid_t worker_wait(const char *seg, const char *quota, const char *path, int64_t until,
			 int64_t wait_ns);

static pid_t worker(const char *seg, const char *quota, const char *path, int64_t until)
{
	return worker_wait(seg, quota, path, until, 0);
}

/* The same for requests of @cost; a refusal for a budget (-EDQUOT: the
 * host's grant of a global budget is spent) is retried like a wait. */
static pid_t worker_cost(const char *seg, const char *quota, const char *path, int64_t until,
			 int64_t wait_ns, struct quota_cost one);

/* The same, allowing quota_reserve to wait up to @wait_ns. */
static pid_t worker_wait(const char *seg, const char *quota, const char *path, int64_t until,
			 int64_t wait_ns)
{
	return worker_cost(seg, quota, path, until, wait_ns, (struct quota_cost){ .requests = 1 });
}

static pid_t worker_cost(const char *seg, const char *quota, const char *path, int64_t until,
			 int64_t wait_ns, struct quota_cost one)
{
	pid_t pid = cl_fork();
	if (pid)
		return pid;
	quota_client *c = NULL;
	if (quota_open(seg, &c) < 0)
		_exit(2);
	int id = quota_find(c, quota);
	if (id < 0)
		_exit(3);
	size_t cap = 1 << 16, n = 0;
	int64_t *ts = malloc(cap * sizeof(*ts));
	int64_t maxlag = 0;
	for (;;) {
		int64_t t0 = cl_now();
		if (t0 >= until)
			break;
		struct quota_ticket t;
		int r = quota_reserve(c, id, &one, wait_ns, &t);
		int64_t t1 = cl_now();
		if (r == 0) {
			if (n < cap)
				ts[n++] = t1;
			/* A wait is not lag: admission is at its end. */
			if (t1 - t0 - t.waited_ns > maxlag)
				maxlag = t1 - t0 - t.waited_ns;
			quota_commit(c, &t, &one);
		} else if (r == -EAGAIN || r == -EDQUOT) {
			int64_t w = r == -EAGAIN ? t.retry_after_ns : 500000;
			if (w > 2 * CL_MS)
				w = 2 * CL_MS;
			if (w < 100000)
				w = 100000;
			struct timespec s = { 0, (long)w };
			nanosleep(&s, NULL); /* pacing a retry, not synchronisation */
		} else {
			_exit(4);
		}
	}
	FILE *f = fopen(path, "w");
	if (!f)
		_exit(5);
	fwrite(&maxlag, sizeof(maxlag), 1, f);
	fwrite(ts, sizeof(*ts), n, f);
	fclose(f);
	_exit(0);
}

struct log {
	int64_t *t;
	size_t n, cap;
	int64_t maxlag;
};

static void log_add_file(struct log *l, const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert(f, "worker log %s missing", path);
	int64_t lag = 0, v;
	cr_assert(fread(&lag, sizeof(lag), 1, f) == 1);
	if (lag > l->maxlag)
		l->maxlag = lag;
	while (fread(&v, sizeof(v), 1, f) == 1) {
		if (l->n == l->cap) {
			l->cap = l->cap ? 2 * l->cap : 4096;
			l->t = realloc(l->t, l->cap * sizeof(*l->t));
		}
		l->t[l->n++] = v;
	}
	fclose(f);
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static void wait_workers(pid_t *w, int n)
{
	for (int i = 0; i < n; i++) {
		int st;
		cr_assert(waitpid(w[i], &st, 0) == w[i]);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d failed (status %d)", i, st);
	}
}

/* The most admissions in any window [x, x + W) (x at an admission). */
static size_t max_window(const struct log *l, int64_t W)
{
	size_t best = 0, j = 0;
	for (size_t i = 0; i < l->n; i++) {
		while (l->t[i] - l->t[j] >= W)
			j++;
		if (i - j + 1 > best)
			best = i - j + 1;
	}
	return best;
}

static size_t count_in(const struct log *l, int64_t a, int64_t b)
{
	size_t n = 0;
	for (size_t i = 0; i < l->n; i++)
		n += l->t[i] >= a && l->t[i] < b;
	return n;
}

/* Check every window length in @ws against r*(W + lag) + b + extra(W). */
static void audit(const struct log *l, double r_per_s, double b, double extra_rate, double extra_b,
		  const char *what)
{
	static const int64_t ws[] = { 250 * CL_MS, 500 * CL_MS, CL_S, 2 * CL_S, 5 * CL_S };
	for (size_t k = 0; k < sizeof(ws) / sizeof(ws[0]); k++) {
		double W = (double)(ws[k] + l->maxlag) / 1e9;
		double bound = r_per_s * W + b + extra_rate * W + extra_b;
		size_t got = max_window(l, ws[k]);
		fprintf(stderr, "%s: window %.2f s: max %zu admitted, bound %.1f\n", what,
			(double)ws[k] / 1e9, got, bound);
		cr_assert(got <= bound, "%s: %zu admitted in a %.2f s window, bound %.1f", what, got,
			  (double)ws[k] / 1e9, bound);
	}
}

/* ------------------------------------------------------------------ tests */

/* rpm 6000 (100/s), burst 0.02 (b = 120), 4 hosts: static share 1500 rpm
 * (25/s), b_l = 30. */
#define G_RPM 6000
#define G_BURST 0.02
#define G_B 120.0
#define G_R (G_RPM / 60.0)

/* Quota "g" of the rate tests: rpm G_RPM, burst G_BURST, global, shared by
 * @hosts hosts. */
static void rate_quota(char *q, size_t len, int hosts)
{
	snprintf(q, len, "\"g\": {\"rpm\": %d, \"burst\": %g, \"scope\": \"global\", "
		 "\"expected_hosts\": %d}", G_RPM, G_BURST, hosts);
}

/* A redis-server of the test's own (its socket in @rsock) and @n hosts
 * sharing rate_quota(). */
static void rate_fleet(struct host *h, int n, char *rsock, size_t len)
{
	struct cl_env re;
	char q[256];
	rate_quota(q, sizeof(q), n);
	fleet_start(&re, rsock, len, h, n, q);
}

Test(global, four_hosts_uniform_demand, .timeout = 120)
{
	struct host h[4];
	char rsock[160];
	rate_fleet(h, 4, rsock, sizeof(rsock));
	int64_t dur = soak_s(8) * CL_S, t0 = cl_now(), until = t0 + dur;
	pid_t w[8];
	char path[8][200];
	for (int i = 0; i < 8; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/w%d.log", h[i / 2].e.dir, i);
		w[i] = worker(h[i / 2].e.seg, "g", path[i], until);
	}
	wait_workers(w, 8);
	struct log l = { 0 };
	for (int i = 0; i < 8; i++)
		log_add_file(&l, path[i]);
	qsort(l.t, l.n, sizeof(*l.t), cmp64);
	audit(&l, G_R, G_B, 0, 0, "uniform");
	/* Use: from 2 s in (the bucket starts empty), >= 95 % of the limit. */
	double secs = (double)(until - (t0 + 2 * CL_S)) / 1e9;
	size_t used = count_in(&l, t0 + 2 * CL_S, until);
	fprintf(stderr, "uniform: %zu admitted in the last %.1f s = %.1f %% of the limit\n", used, secs,
		100.0 * (double)used / (G_R * secs));
	cr_assert(used >= 0.95 * G_R * secs, "only %zu admitted in %.1f s (limit %.0f/s)", used, secs, G_R);
	/* Equal demand, equal shares: each host >= 80 % of a quarter. */
	for (int i = 0; i < 4; i++) {
		struct log one = { 0 };
		log_add_file(&one, path[2 * i]);
		log_add_file(&one, path[2 * i + 1]);
		size_t n = count_in(&one, t0 + 2 * CL_S, until);
		fprintf(stderr, "uniform: host %d: %zu = %.1f %% of a quarter\n", i, n,
			100.0 * (double)n / (G_R / 4 * secs));
		cr_assert(n >= 0.8 * G_R / 4 * secs, "host %d got %zu", i, n);
		free(one.t);
	}
	char *st = cl_request(h[0].e.sock, "{\"cmd\": \"status\"}");
	cr_assert(st && strstr(st, "\"mode\":\"granted\""), "status: %s", st ? st : "(none)");
	free(st);
	free(l.t);
}

/* One host ten times the demand of the two others: the light ones get what
 * they ask, the heavy one most of the rest. Light demand: 8/s each, by
 * pacing; limit 100/s. */
static pid_t phased_worker(const char *seg, const char *path, int64_t until, int64_t shift,
			   int64_t every_before, int64_t every_after)
{
	pid_t pid = cl_fork();
	if (pid)
		return pid;
	quota_client *c = NULL;
	if (quota_open(seg, &c) < 0)
		_exit(2);
	int id = quota_find(c, "g");
	size_t n = 0, cap = 1 << 16;
	int64_t *ts = malloc(cap * sizeof(*ts)), next = cl_now(), lag = 0;
	struct quota_cost one = { .requests = 1 };
	while (cl_now() < until) {
		int64_t every = cl_now() < shift ? every_before : every_after;
		struct quota_ticket t;
		int64_t t0 = cl_now();
		int r = quota_reserve(c, id, &one, 0, &t);
		int64_t t1 = cl_now();
		if (r == 0) {
			if (n < cap)
				ts[n++] = t1;
			lag = t1 - t0 > lag ? t1 - t0 : lag;
			quota_commit(c, &t, &one);
			next = every ? (next + every > t1 - CL_S ? next + every : t1) : t1;
		}
		int64_t w = r == 0 ? next - cl_now() : 200000;
		if (w > 0) {
			struct timespec sl = { w / CL_S, (long)(w % CL_S) };
			nanosleep(&sl, NULL); /* pacing the demand */
		}
	}
	FILE *f = fopen(path, "w");
	fwrite(&lag, sizeof(lag), 1, f);
	fwrite(ts, sizeof(*ts), n, f);
	fclose(f);
	_exit(0);
}

static pid_t paced_worker(const char *seg, const char *path, int64_t until, int64_t every)
{
	return phased_worker(seg, path, until, 0, every, every);
}

Test(global, one_heavy_host, .timeout = 120)
{
	struct host h[3];
	char rsock[160];
	rate_fleet(h, 3, rsock, sizeof(rsock));
	int64_t t0 = cl_now(), until = t0 + soak_s(8) * CL_S;
	char path[4][200];
	pid_t w[4];
	for (int i = 0; i < 2; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/heavy%d.log", h[0].e.dir, i);
		w[i] = worker(h[0].e.seg, "g", path[i], until);
	}
	for (int i = 0; i < 2; i++) {
		snprintf(path[2 + i], sizeof(path[2 + i]), "%s/light.log", h[1 + i].e.dir);
		w[2 + i] = paced_worker(h[1 + i].e.seg, path[2 + i], until, CL_S / 8);
	}
	wait_workers(w, 4);
	for (int i = 0; i < 3; i++) {
		char *st = cl_request(h[i].e.sock, "{\"cmd\": \"status\"}");
		const char *g = st ? strstr(st, "\"global\"") : NULL;
		fprintf(stderr, "host %d: %s\n", i, g ? g : "(no status)");
		free(st);
	}
	struct log all = { 0 }, heavy = { 0 }, light[2] = { { 0 } };
	for (int i = 0; i < 4; i++)
		log_add_file(&all, path[i]);
	for (int i = 0; i < 2; i++) {
		log_add_file(&heavy, path[i]);
		log_add_file(&light[i], path[2 + i]);
	}
	qsort(all.t, all.n, sizeof(*all.t), cmp64);
	audit(&all, G_R, G_B, 0, 0, "heavy");
	int64_t from = t0 + 2 * CL_S;
	double secs = (double)(until - from) / 1e9;
	for (int i = 0; i < 2; i++) {
		size_t got = count_in(&light[i], from, until);
		fprintf(stderr, "light host %d: %zu of %.0f asked\n", i, got, 8 * secs);
		cr_assert(got >= 0.98 * 8 * secs - 1, "light host %d got %zu of %.0f", i, got, 8 * secs);
	}
	size_t hv = count_in(&heavy, from, until);
	double rest = (G_R - 16) * secs;
	fprintf(stderr, "heavy host: %zu of the %.0f left\n", hv, rest);
	cr_assert(hv >= 0.90 * rest, "heavy host got %zu of %.0f", hv, rest);
	free(all.t);
	free(heavy.t);
	free(light[0].t);
	free(light[1].t);
}

/* Redis killed, then restarted empty: static_share admits its share, fail_closed
 * nothing beyond what it held, and grants resume. */
Test(global, redis_outage_policies, .timeout = 120)
{
	struct cl_env re;
	cl_env(&re, "redis");
	char rsock[160];
	pid_t rpid = redis_start(re.dir, rsock, sizeof(rsock));
	struct host h[2];
	char q[512];
	snprintf(q, sizeof(q),
		 "\"s\": {\"rpm\": %d, \"burst\": %g, \"scope\": \"global\", \"expected_hosts\": 2, "
		 "\"outage\": \"static_share\"}, "
		 "\"f\": {\"rpm\": %d, \"burst\": %g, \"scope\": \"global\", \"expected_hosts\": 2, "
		 "\"outage\": \"fail_closed\"}", G_RPM, G_BURST, G_RPM, G_BURST);
	hosts_start(h, 2, rsock, q);
	int64_t down = soak_s(3) * CL_S;
	/* After the restart: the outage's units are paid back as debt first
	 * (about the outage's length at the full rate), then grants resume. */
	int64_t t0 = cl_now(), until = t0 + 2 * CL_S + 2 * down + 7 * CL_S;
	pid_t w[4];
	char path[4][200];
	for (int i = 0; i < 4; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/%c%d.log", h[i / 2].e.dir, i % 2 ? 'f' : 's', i);
		w[i] = worker(h[i / 2].e.seg, i % 2 ? "f" : "s", path[i], until);
	}
	/* Run on grants, then kill Redis for 3 s (GLOBAL_SOAK: longer). */
	struct timespec two = { 2, 0 };
	nanosleep(&two, NULL); /* let the run go on: a schedule, not a synchronisation */
	int64_t killed = cl_now();
	cl_stop(rpid, SIGKILL);
	/* Wait until both hosts report the outage (status), bounded. */
	for (int i = 0; i < 2; i++)
		free(status_until(&h[i], "outage-fail_closed", "outage-static_share"));
	int64_t outage_seen = cl_now();
	struct timespec d = { down / CL_S, 0 };
	nanosleep(&d, NULL);
	int64_t restarted = cl_now();
	redis_start(re.dir, rsock, sizeof(rsock));
	wait_workers(w, 4);
	struct log s = { 0 }, f = { 0 };
	for (int i = 0; i < 4; i++)
		log_add_file(i % 2 ? &f : &s, path[i]);
	qsort(s.t, s.n, sizeof(*s.t), cmp64);
	qsort(f.t, f.n, sizeof(*f.t), cmp64);
	/* The outage window [outage_seen, restarted): a tick (20 ms) after a
	 * host entered it, nothing is exposed beyond its policy. */
	int64_t a = outage_seen + 50 * CL_MS, b = restarted;
	size_t fs = count_in(&f, a, b), ss = count_in(&s, a, b);
	double secs = (double)(b - a) / 1e9;
	double share = 2 * (G_R / 2 * secs + G_B / 2); /* 2 hosts x (r/2 W + b/2) */
	fprintf(stderr, "outage %.2f s (killed at +%.2f s): fail_closed admitted %zu, static_share %zu "
		"(stated at most %.1f)\n", secs, (double)(killed - t0) / 1e9, fs, ss, share);
	cr_assert_eq(fs, 0, "fail_closed admitted %zu in the outage", fs);
	cr_assert(ss <= share, "static_share admitted %zu, more than %.1f", ss, share);
	cr_assert(ss >= 0.9 * G_R * secs - 2 * G_B, "static_share admitted only %zu", ss);
	/* Every window, the outage term added for static_share. */
	audit(&s, G_R, G_B, G_R, G_B, "static_share");
	audit(&f, G_R, G_B, 0, 0, "fail_closed");
	/* Grants resume: both quotas admit again after the restart, the
	 * static_share one once its outage debt is paid. */
	size_t fa = count_in(&f, restarted + CL_S, until), sa = count_in(&s, until - 2 * CL_S, until);
	fprintf(stderr, "after the restart: fail_closed %zu, static_share %zu\n", fa, sa);
	cr_assert(fa > 0 && sa > 0, "grants did not resume (f %zu, s %zu)", fa, sa);
	char *st = cl_request(h[0].e.sock, "{\"cmd\": \"status\"}");
	cr_assert(st);
	fprintf(stderr, "status: %s\n", st);
	cr_assert(strstr(st, "\"mode\":\"granted\""), "not back to granted");
	free(st);
	free(s.t);
	free(f.t);
}

/* A host's quotad SIGKILLed: its grant is reaped within lease + refresh,
 * and the others' admissions plus its own (static share) stay in the bound. */
Test(global, host_death_lease_reaped, .timeout = 120)
{
	struct host h[3];
	char rsock[160];
	rate_fleet(h, 3, rsock, sizeof(rsock));
	int64_t t0 = cl_now(), until = t0 + 11 * CL_S;
	pid_t w[3];
	char path[3][200];
	for (int i = 0; i < 3; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/w.log", h[i].e.dir);
		w[i] = worker(h[i].e.seg, "g", path[i], until);
	}
	redisContext *c = redis_ctx(rsock);
	/* Wait until h0 holds a grant in Redis. */
	int64_t lim = cl_now() + 5 * CL_S;
	for (;;) {
		redisReply *r = redisCommand(c, "HEXISTS quotad:{g}:rpm o:h0");
		bool there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
		freeReplyObject(r);
		if (there)
			break;
		cr_assert(cl_now() < lim, "h0 never got a grant");
		struct timespec s = { 0, 20 * CL_MS };
		nanosleep(&s, NULL);
	}
	struct timespec one = { 1, 0 };
	nanosleep(&one, NULL); /* running on grants for a while: a schedule */
	int64_t killed = cl_now();
	cl_stop(h[0].quotad, SIGKILL);
	lim = killed + 10 * CL_S;
	int64_t reaped;
	for (;;) {
		redisReply *r = redisCommand(c, "HEXISTS quotad:{g}:rpm o:h0");
		bool there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
		freeReplyObject(r);
		if (!there) {
			reaped = cl_now();
			break;
		}
		cr_assert(cl_now() < lim, "the dead host's grant was never reaped");
		struct timespec s = { 0, 20 * CL_MS };
		nanosleep(&s, NULL);
	}
	fprintf(stderr, "dead host reaped %.2f s after the kill (lease 5 s + refresh 0.5 s)\n",
		(double)(reaped - killed) / 1e9);
	cr_assert(reaped - killed <= 5500 * CL_MS + 500 * CL_MS, "reaped after %.2f s",
		  (double)(reaped - killed) / 1e9);
	redisFree(c);
	/* A new quotad adopts the host's live segment and holds it again. */
	int64_t restarted = cl_now();
	h[0].quotad = cl_quotad(&h[0].e, h[0].cfg, NULL);
	wait_workers(w, 3);
	char *st = cl_request(h[0].e.sock, "{\"cmd\": \"status\"}");
	cr_assert(st && strstr(st, "\"mode\":\"granted\""), "restarted host: %s", st ? st : "(none)");
	free(st);
	struct log l = { 0 }, dead = { 0 };
	for (int i = 0; i < 3; i++)
		log_add_file(&l, path[i]);
	log_add_file(&dead, path[0]);
	qsort(l.t, l.n, sizeof(*l.t), cmp64);
	/* The dead host's workers go on at its static share: r/3, b/3. */
	audit(&l, G_R, G_B, G_R / 3, G_B / 3, "host death");
	/* While its quotad was dead: at most the static share (r/3 W + b/3). */
	double dsecs = (double)(restarted - killed) / 1e9;
	size_t dn = count_in(&dead, killed, restarted);
	fprintf(stderr, "dead host: %zu admitted in the %.2f s its quotad was down (static share: at most "
		"%.1f)\n", dn, dsecs, G_R / 3 * dsecs + G_B / 3);
	cr_assert(dn <= G_R / 3 * dsecs + G_B / 3 + 1);
	size_t an = count_in(&dead, restarted + CL_S, until);
	fprintf(stderr, "restarted host: %zu admitted in the last %.2f s\n", an,
		(double)(until - restarted - CL_S) / 1e9);
	cr_assert(an > 0, "the restarted host admits nothing");
	free(l.t);
	free(dead.t);
}

/* ------------------------------------------------------------------ Sentinel */

/* A free loopback TCP port (bound, read, closed: a race with another
 * process taking it is possible but harmless: the start then fails). */
static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	socklen_t l = sizeof(a);
	cr_assert(getsockname(fd, (struct sockaddr *)&a, &l) == 0);
	close(fd);
	return ntohs(a.sin_port);
}

static pid_t spawn_redis(const char *dir, const char *tag, char *const extra[])
{
	pid_t pid = cl_fork();
	if (pid == 0) {
		char log[200];
		snprintf(log, sizeof(log), "%s/%s.log", dir, tag);
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		char *argv[32] = { "redis-server" };
		int n = 1;
		for (int i = 0; extra[i] && n < 31; i++)
			argv[n++] = extra[i];
		argv[n] = NULL;
		execvp("redis-server", argv);
		_exit(127);
	}
	return pid;
}

static redisContext *tcp_ctx(int port)
{
	struct timeval tv = { 1, 0 };
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	if (c && c->err) {
		redisFree(c);
		c = NULL;
	}
	return c;
}

/* Whether a reply (nested arrays included) holds @want. */
static bool reply_has(const redisReply *r, const char *want)
{
	if (!r)
		return false;
	if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
		return strstr(r->str, want) != NULL;
	if (r->type == REDIS_REPLY_INTEGER) {
		char n[32];
		snprintf(n, sizeof(n), "%lld", r->integer);
		return strcmp(n, want) == 0;
	}
	for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
		if (reply_has(r->element[i], want))
			return true;
	return false;
}

/* Poll @port with @cmd until the reply contains @want (bounded). */
static void until_reply(int port, const char *cmd, const char *want, int64_t limit_ns, const char *what)
{
	int64_t until = cl_now() + limit_ns;
	for (;;) {
		redisContext *c = tcp_ctx(port);
		bool ok = false;
		if (c) {
			redisReply *r = redisCommand(c, cmd);
			ok = reply_has(r, want);
			freeReplyObject(r);
			redisFree(c);
		}
		if (ok)
			return;
		cr_assert(cl_now() < until, "%s: no '%s' from port %d (%s)", what, want, port, cmd);
		struct timespec s = { 0, 20 * CL_MS };
		nanosleep(&s, NULL); /* polling a condition, bounded */
	}
}

/* Master, replica, three sentinels (quorum 2) on loopback; quotads find the
 * master through the sentinels and credit a grant only once WAIT says a
 * replica has it. The master is SIGKILLed mid-run: the sentinels promote the
 * replica, the quotads follow, and no window goes over r*W + b (fail_closed:
 * no outage term), and the service back (the time it took printed). */
/* The failover test's Redis: a master, two replicas (the second less
 * preferred) and three sentinels watching "mm", all on loopback ports of
 * their own, ready when it returns (the sentinels know the master, both
 * replicas and each other). */
struct sentinel_set {
	pid_t master;
	int pm, pr, pr2, ps[3];
	char spm[16], spr[16], spr2[16];
	char list[256]; /* the sentinels as a JSON list's items */
};

static void redis_node(struct cl_env *re, const char *tag, char *port, char *rdb, char *of, char *priority,
		       pid_t *ret)
{
	char *argv[] = { "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			 "--dir", re->dir, "--dbfilename", rdb, NULL, NULL, NULL, NULL, NULL, NULL };
	int n = 12;
	if (of) {
		argv[n++] = "--replicaof";
		argv[n++] = "127.0.0.1";
		argv[n++] = of;
	}
	if (priority) {
		argv[n++] = "--replica-priority";
		argv[n++] = priority;
	}
	pid_t pid = spawn_redis(re->dir, tag, argv);
	if (ret)
		*ret = pid;
}

static void sentinels_start(struct cl_env *re, struct sentinel_set *ss)
{
	for (int i = 0; i < 3; i++) {
		char conf[200], text[512], tag[8], path[200];
		snprintf(tag, sizeof(tag), "s%d", i);
		snprintf(text, sizeof(text),
			 "port %d\nbind 127.0.0.1\ndir %s\n"
			 "sentinel monitor mm 127.0.0.1 %d 2\n"
			 "sentinel down-after-milliseconds mm 3000\n"
			 "sentinel failover-timeout mm 10000\n"
			 "sentinel parallel-syncs mm 1\n", ss->ps[i], re->dir, ss->pm);
		snprintf(conf, sizeof(conf), "sentinel%d.conf", i);
		snprintf(path, sizeof(path), "%s", cl_file(re, conf, text));
		char *argv[] = { path, "--sentinel", NULL };
		spawn_redis(re->dir, tag, argv);
		size_t used = strlen(ss->list);
		snprintf(ss->list + used, sizeof(ss->list) - used, "%s\"127.0.0.1:%d\"", i ? ", " : "", ss->ps[i]);
	}
	/* Each sentinel knows the master, the replicas and the two others. */
	for (int i = 0; i < 3; i++) {
		until_reply(ss->ps[i], "SENTINEL get-master-addr-by-name mm", ss->spm, 10 * CL_S, "sentinel");
		until_reply(ss->ps[i], "SENTINEL replicas mm", ss->spr, 15 * CL_S, "sentinel sees the replica");
		until_reply(ss->ps[i], "SENTINEL replicas mm", ss->spr2, 15 * CL_S, "sentinel sees replica 2");
		until_reply(ss->ps[i], "SENTINEL sentinels mm", "127.0.0.1", 15 * CL_S, "sentinels meet");
	}
}

static void sentinel_set_start(struct cl_env *re, struct sentinel_set *ss)
{
	*ss = (struct sentinel_set){ .pm = free_port(), .pr = free_port(), .pr2 = free_port() };
	for (int i = 0; i < 3; i++)
		ss->ps[i] = free_port();
	snprintf(ss->spm, sizeof(ss->spm), "%d", ss->pm);
	snprintf(ss->spr, sizeof(ss->spr), "%d", ss->pr);
	snprintf(ss->spr2, sizeof(ss->spr2), "%d", ss->pr2);
	redis_node(re, "master", ss->spm, "m.rdb", NULL, NULL, &ss->master);
	until_reply(ss->pm, "PING", "PONG", 10 * CL_S, "master");
	redis_node(re, "replica", ss->spr, "r.rdb", ss->spm, NULL, NULL);
	/* A second replica: after the failover the new master still has one to
	 * confirm grants (WAIT 1); a master with none grants nothing. */
	redis_node(re, "replica2", ss->spr2, "r2.rdb", ss->spm, "200", NULL);
	until_reply(ss->pm, "INFO replication", "connected_slaves:2", 10 * CL_S, "replicas");
	until_reply(ss->pr, "INFO replication", "master_link_status:up", 10 * CL_S, "replica link");
	until_reply(ss->pr2, "INFO replication", "master_link_status:up", 10 * CL_S, "replica 2 link");
	sentinels_start(re, ss);
}

/* Three hosts finding the master through the sentinels of @ss. */
static void sentinel_hosts(struct host *h, const struct sentinel_set *ss)
{
	for (int i = 0; i < 3; i++) {
		cl_env(&h[i].e, "sent");
		char json[1024];
		snprintf(json, sizeof(json),
			 "{\"redis\": {\"sentinels\": [%s], \"master\": \"mm\", \"host_id\": \"h%d\"},\n"
			 " \"quotas\": {\"g\": {\"rpm\": %d, \"burst\": %g, \"scope\": \"global\", "
			 "\"expected_hosts\": 3, \"outage\": \"fail_closed\"}}}\n",
			 ss->list, i, G_RPM, G_BURST);
		snprintf(h[i].cfg, sizeof(h[i].cfg), "%s", cl_file(&h[i].e, "global.json", json));
		h[i].quotad = cl_quotad(&h[i].e, h[i].cfg, NULL);
	}
}

Test(global, sentinel_failover, .timeout = 180)
{
	struct cl_env re;
	cl_env(&re, "sent");
	struct sentinel_set ss;
	sentinel_set_start(&re, &ss);
	struct host h[3];
	sentinel_hosts(h, &ss);
	int64_t t0 = cl_now(), until = t0 + 16 * CL_S;
	pid_t w[3];
	char path[3][200];
	for (int i = 0; i < 3; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/w.log", h[i].e.dir);
		w[i] = worker(h[i].e.seg, "g", path[i], until);
	}
	struct timespec three = { 3, 0 };
	nanosleep(&three, NULL); /* running on grants: a schedule */
	int64_t killed = cl_now();
	cl_stop(ss.master, SIGKILL);
	/* The sentinels promote the replica. */
	until_reply(ss.ps[0], "SENTINEL get-master-addr-by-name mm", ss.spr, 20 * CL_S, "failover");
	int64_t promoted = cl_now();
	wait_workers(w, 3);
	struct log l = { 0 };
	for (int i = 0; i < 3; i++)
		log_add_file(&l, path[i]);
	qsort(l.t, l.n, sizeof(*l.t), cmp64);
	audit(&l, G_R, G_B, 0, 0, "failover");
	char *st = cl_request(h[0].e.sock, "{\"cmd\": \"status\"}");
	cr_assert(st);
	const char *g = strstr(st, "\"global\"");
	fprintf(stderr, "host 0: %s\n", g ? g : st);
	/* Service back: the first admission once the sentinels promoted. */
	int64_t back = until;
	for (size_t i = 0; i < l.n; i++)
		if (l.t[i] >= promoted) {
			back = l.t[i];
			break;
		}
	fprintf(stderr, "failover: master killed at +%.2f s, sentinels promoted at +%.2f s, service back "
		"at +%.2f s (%.2f s after the kill)\n", (double)(killed - t0) / 1e9, (double)(promoted - t0) / 1e9,
		(double)(back - t0) / 1e9, (double)(back - killed) / 1e9);
	/* Timings are printed, not asserted (a loaded machine stretches them):
	 * the service must come back within the run at all. */
	cr_assert(back < until, "service not back %.2f s after the kill", (double)(until - killed) / 1e9);
	size_t after = count_in(&l, until - 2 * CL_S, until);
	fprintf(stderr, "failover: %zu admitted in the last 2 s (%.0f %% of the rate)\n", after,
		100.0 * (double)after / (G_R * 2));
	if (after < 0.9 * G_R * 2) {
		char cmd[600];
		snprintf(cmd, sizeof(cmd), "cd '%s' && tail -n 25 s0.log replica.log replica2.log >&2; "
			 "grep -v debug '%s' | tail -n 25 >&2", re.dir, h[0].e.log);
		if (system(cmd) != 0)
			fprintf(stderr, "(no logs)\n");
	}
	/* Host 0 follows to a promoted replica (under load the sentinels may
	 * fail over twice: either replica can be the master by now). */
	char m1[64], m2[64];
	snprintf(m1, sizeof(m1), "\"master\":\"127.0.0.1:%s\"", ss.spr);
	snprintf(m2, sizeof(m2), "\"master\":\"127.0.0.1:%s\"", ss.spr2);
	cr_assert(strstr(st, m1) || strstr(st, m2), "host 0 does not name a promoted replica");
	free(st);
	free(l.t);
}

/* Demand moves: host A heavy then light, host B light then heavy (C light
 * throughout). Within two refresh periods (1 s) of the shift, B gets what A
 * had: >= 90 % of the rest of the limit. */
Test(global, demand_shifts, .timeout = 120)
{
	struct host h[3];
	char rsock[160];
	rate_fleet(h, 3, rsock, sizeof(rsock));
	int64_t t0 = cl_now(), shift = t0 + 4 * CL_S, until = t0 + 9 * CL_S;
	char path[3][200];
	pid_t w[3];
	for (int i = 0; i < 3; i++)
		snprintf(path[i], sizeof(path[i]), "%s/w.log", h[i].e.dir);
	w[0] = phased_worker(h[0].e.seg, path[0], until, shift, 0, CL_S / 8);
	w[1] = phased_worker(h[1].e.seg, path[1], until, shift, CL_S / 8, 0);
	w[2] = paced_worker(h[2].e.seg, path[2], until, CL_S / 8);
	wait_workers(w, 3);
	struct log all = { 0 }, per[3] = { { 0 } };
	for (int i = 0; i < 3; i++) {
		log_add_file(&all, path[i]);
		log_add_file(&per[i], path[i]);
	}
	qsort(all.t, all.n, sizeof(*all.t), cmp64);
	audit(&all, G_R, G_B, 0, 0, "shift");
	double before = (double)count_in(&per[0], t0 + 2 * CL_S, shift) / 2.0;
	int64_t from = shift + CL_S;
	double secs = (double)(until - from) / 1e9;
	size_t b = count_in(&per[1], from, until);
	double rest = (G_R - 16) * secs;
	fprintf(stderr, "shift: A had %.1f/s before; B got %zu of the %.0f left in the %.1f s from 1 s "
		"after the shift (%.1f %%)\n", before, b, rest, secs, 100.0 * (double)b / rest);
	for (int k = 0; k < 8; k++) {
		int64_t a0 = shift + k * 250 * CL_MS;
		fprintf(stderr, "  B in [shift + %.2f s, + 250 ms): %zu\n", (double)(a0 - shift) / 1e9,
			count_in(&per[1], a0, a0 + 250 * CL_MS));
	}
	cr_assert(b >= 0.9 * rest, "B got %zu of %.0f after the shift", b, rest);
	for (int i = 0; i < 3; i++)
		free(per[i].t);
	free(all.t);
}

/* A host whose wall clock is 30 s off (libfaketime on its quotad; every
 * duration quotad measures is on CLOCK_MONOTONIC, and the refill on Redis'
 * TIME): it changes nothing - the bound holds and the skewed host gets its
 * share. Skipped without libfaketime. */
#define FAKETIME_LIB "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

Test(global, clock_30s_off, .timeout = 120)
{
	if (access(FAKETIME_LIB, R_OK) != 0)
		cr_skip_test("libfaketime not installed (apt-get install faketime)");
	struct cl_env re;
	cl_env(&re, "redis");
	char rsock[160];
	redis_start(re.dir, rsock, sizeof(rsock));
	struct host h[3];
	char q[256];
	rate_quota(q, sizeof(q), 3);
	static const char *const off[3] = { "-30s", "+30s", NULL };
	for (int i = 0; i < 3; i++) {
		cl_env(&h[i].e, "clock");
		host_config(&h[i], i, rsock, q);
		char asan[512];
		const char *ao = getenv("ASAN_OPTIONS");
		snprintf(asan, sizeof(asan), "%s%sverify_asan_link_order=0", ao ? ao : "", ao ? ":" : "");
		char *ao_saved = ao ? strdup(ao) : NULL;
		if (off[i]) {
			/* An ASan build must accept a preload before its runtime. */
			setenv("ASAN_OPTIONS", asan, 1);
			setenv("LD_PRELOAD", FAKETIME_LIB, 1);
			setenv("FAKETIME", off[i], 1);
			setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
		}
		h[i].quotad = cl_quotad(&h[i].e, h[i].cfg, NULL);
		if (off[i]) {
			/* libfaketime gives every process it is preloaded into a shm
			 * object and a semaphore named after its pid, and removes
			 * them only at a normal exit: remove the names now (the
			 * quotad keeps its mapping), so that nothing is left behind. */
			char n[64];
			snprintf(n, sizeof(n), "/faketime_shm_%d", (int)h[i].quotad);
			shm_unlink(n);
			snprintf(n, sizeof(n), "/faketime_sem_%d", (int)h[i].quotad);
			sem_unlink(n);
		}
		unsetenv("LD_PRELOAD");
		unsetenv("FAKETIME");
		unsetenv("FAKETIME_DONT_FAKE_MONOTONIC");
		if (ao_saved)
			setenv("ASAN_OPTIONS", ao_saved, 1);
		else
			unsetenv("ASAN_OPTIONS");
		free(ao_saved);
	}
	int64_t t0 = cl_now(), until = t0 + soak_s(7) * CL_S;
	pid_t w[3];
	char path[3][200];
	for (int i = 0; i < 3; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/w.log", h[i].e.dir);
		w[i] = worker(h[i].e.seg, "g", path[i], until);
	}
	wait_workers(w, 3);
	struct log all = { 0 }, per[3] = { { 0 } };
	for (int i = 0; i < 3; i++) {
		log_add_file(&all, path[i]);
		log_add_file(&per[i], path[i]);
	}
	qsort(all.t, all.n, sizeof(*all.t), cmp64);
	audit(&all, G_R, G_B, 0, 0, "clock off");
	double secs = (double)(until - t0 - 2 * CL_S) / 1e9;
	for (int i = 0; i < 3; i++) {
		size_t n = count_in(&per[i], t0 + 2 * CL_S, until);
		fprintf(stderr, "host %d (wall clock %s): %zu admitted, %.1f %% of a third of the limit\n", i,
			off[i] ? off[i] : "right", n, 100.0 * (double)n / (G_R / 3 * secs));
		cr_assert(n >= 0.8 * G_R / 3 * secs, "host %d got %zu", i, n);
		free(per[i].t);
	}
	size_t total = count_in(&all, t0 + 2 * CL_S, until);
	cr_assert(total >= 0.95 * G_R * secs, "only %zu admitted", total);
	free(all.t);
}

/* Workers that wait (1 s) in quota_reserve: bookings beyond the grant (the
 * overdraft D of the bound, charged to the bucket as debt). The bound with D
 * holds; the figure shows what D costs. */
Test(global, waiting_workers_overdraft, .timeout = 120)
{
	struct host h[4];
	char rsock[160];
	rate_fleet(h, 4, rsock, sizeof(rsock));
	int64_t t0 = cl_now(), until = t0 + soak_s(8) * CL_S, w = CL_S;
	pid_t wk[8];
	char path[8][200];
	for (int i = 0; i < 8; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/w%d.log", h[i / 2].e.dir, i);
		wk[i] = worker_wait(h[i / 2].e.seg, "g", path[i], until, w);
	}
	wait_workers(wk, 8);
	struct log l = { 0 };
	for (int i = 0; i < 8; i++)
		log_add_file(&l, path[i]);
	qsort(l.t, l.n, sizeof(*l.t), cmp64);
	/* D <= sum over hosts of r_s (W + w) + b_s = r (W + w) + b. */
	audit(&l, G_R, G_B, G_R, G_B + G_R * (double)w / 1e9, "waiting 1 s");
	double secs = (double)(until - t0 - 2 * CL_S) / 1e9;
	size_t used = count_in(&l, t0 + 2 * CL_S, until);
	fprintf(stderr, "waiting 1 s: %zu admitted in %.1f s = %.1f %% of the limit\n", used, secs,
		100.0 * (double)used / (G_R * secs));
	free(l.t);
}

/* ------------------------------------------------------------------ in-flight slots */

/* An in-flight event in a worker's log: +1 logged after an admission, -1
 * before its commit, so every logged interval lies inside the real one and
 * the logs never show more overlap than there was. Written at once: a
 * SIGKILLed worker's log keeps all but its last release. */
struct slot_ev {
	int64_t t;
	int64_t d;
	int64_t asked; /* +1: when the reserve call began (it admitted after) */
};

static void ev_write(int fd, int64_t t, int64_t d, int64_t asked)
{
	struct slot_ev e = { t, d, asked };
	if (write(fd, &e, sizeof(e)) != (ssize_t)sizeof(e))
		_exit(6);
}

/* A worker holding a slot of quota "g" for @hold_ns per request, plus up to
 * @spread_ns more drawn at random (waiting up to 20 ms for one) until
 * @until. */
static pid_t slot_worker(const char *seg, const char *path, int64_t until, int64_t hold_ns, int64_t spread_ns)
{
	pid_t pid = cl_fork();
	if (pid)
		return pid;
	quota_client *c = NULL;
	if (quota_open(seg, &c) < 0)
		_exit(2);
	int id = quota_find(c, "g");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	if (id < 0 || fd < 0)
		_exit(3);
	struct quota_cost one = { .requests = 1 };
	srandom((unsigned)getpid());
	while (cl_now() < until) {
		struct quota_ticket t;
		int64_t asked = cl_now();
		int r = quota_reserve(c, id, &one, 20 * CL_MS, &t);
		if (r == -EAGAIN && t.retry_after_ns > 20 * CL_MS) {
			/* refused at once (the host's lease ran out): retry later */
			struct timespec s = { 0, 20 * CL_MS };
			nanosleep(&s, NULL); /* pacing a retry, not synchronisation */
		}
		if (r == -EAGAIN)
			continue;
		if (r < 0)
			_exit(4);
		ev_write(fd, cl_now(), 1, asked);
		int64_t dur = hold_ns + (spread_ns ? (int64_t)(random() % (spread_ns + 1)) : 0);
		struct timespec s = { dur / CL_S, (long)(dur % CL_S) };
		nanosleep(&s, NULL); /* the request's duration */
		ev_write(fd, cl_now(), -1, 0);
		quota_commit(c, &t, &one);
	}
	close(fd);
	_exit(0);
}

struct slot_log {
	struct slot_ev *e;
	size_t n, cap;
	size_t admitted;
};

/* Add a worker's log; an admission it never released (the worker was
 * killed) ends at @end. */
static void slot_log_add(struct slot_log *l, const char *path, int64_t end)
{
	FILE *f = fopen(path, "r");
	cr_assert(f, "slot log %s missing", path);
	struct slot_ev e;
	int64_t open_n = 0;
	for (;;) {
		bool more = fread(&e, sizeof(e), 1, f) == 1;
		if (!more && open_n > 0)
			e = (struct slot_ev){ end, -1, 0 };
		else if (!more)
			break;
		if (l->n == l->cap) {
			l->cap = l->cap ? 2 * l->cap : 4096;
			l->e = realloc(l->e, l->cap * sizeof(*l->e));
		}
		l->e[l->n++] = e;
		open_n += e.d;
		l->admitted += e.d > 0;
	}
	fclose(f);
}

static int cmp_ev(const void *a, const void *b)
{
	const struct slot_ev *x = a, *y = b;
	if (x->t != y->t)
		return (x->t > y->t) - (x->t < y->t);
	return (x->d < y->d) - (x->d > y->d); /* +1 first at a tie: counts high */
}

/* The most requests in flight at once across the logs from @from on. */
static int64_t slot_peak_since(struct slot_log *l, int64_t from)
{
	qsort(l->e, l->n, sizeof(*l->e), cmp_ev);
	int64_t cur = 0, peak = 0;
	for (size_t i = 0; i < l->n; i++) {
		cur += l->e[i].d;
		if (l->e[i].t >= from || i + 1 == l->n || l->e[i + 1].t >= from)
			peak = cur > peak ? cur : peak;
	}
	return peak;
}

/* The most requests in flight at once across the logs. */
static int64_t slot_peak(struct slot_log *l)
{
	return slot_peak_since(l, INT64_MIN);
}

/* A number after "@key": in a status reply (the first one). */
static double status_num(const char *st, const char *key)
{
	char k[64];
	snprintf(k, sizeof(k), "\"%s\":", key);
	const char *p = st ? strstr(st, k) : NULL;
	return p ? atof(p + strlen(k)) : -1;
}

static double slots_held(const struct host *h)
{
	char *st = cl_request(h->e.sock, "{\"cmd\": \"status\"}");
	double v = status_num(st, "slots_held");
	free(st);
	return v;
}

/* Until hosts @h[0 .. n-1] hold @at_least slots between them, bounded by
 * @bound_s. */
static void until_held(const struct host *h, int n, double at_least, int64_t bound_s, const char *what)
{
	int64_t lim = cl_now() + bound_s * CL_S;
	for (;;) {
		double sum = 0;
		for (int i = 0; i < n; i++)
			sum += slots_held(&h[i]);
		if (sum >= at_least)
			return;
		cr_assert(cl_now() < lim, "%s: host %s%s holds %.0f slots, not %.0f", what, h->e.seg,
			  n > 1 ? " and the next" : "", sum, at_least);
		struct timespec s = { 0, 20 * CL_MS };
		nanosleep(&s, NULL); /* polling a condition, bounded */
	}
}

/* Until Redis has reaped host @id from the slots of "g", before @lim. */
static void until_reaped(redisContext *c, const char *id, int64_t lim)
{
	for (;;) {
		redisReply *r = redisCommand(c, "HEXISTS quotad:{g}:inflight o:%s", id);
		bool there = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
		freeReplyObject(r);
		if (!there)
			return;
		cr_assert(cl_now() < lim, "the dead host's slots were never reaped");
		struct timespec s = { 0, 20 * CL_MS };
		nanosleep(&s, NULL); /* polling a condition, bounded */
	}
}

/* quotactl global shows the slot limit; its metrics pass promtool (when
 * installed) and carry the workers' cap. */
static void check_slot_metrics(const struct host *h)
{
	const char *q = getenv("QUOTACTL"), *prom = getenv("PROMTOOL");
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' global | grep -q '^g  *inflight  *granted '", q, h->e.sock);
	cr_assert_eq(system(cmd), 0, "quotactl global: no inflight row");
	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' metrics >'%s/m.txt'", q, h->e.sock, h->e.dir);
	cr_assert_eq(system(cmd), 0);
	snprintf(cmd, sizeof(cmd), "grep -q '^quota_global_inflight_cap{quota=\"g\",limit=\"inflight\"} [0-9]' "
		 "'%s/m.txt'", h->e.dir);
	cr_assert_eq(system(cmd), 0, "no quota_global_inflight_cap in %s/m.txt", h->e.dir);
	if (prom) {
		snprintf(cmd, sizeof(cmd), "'%s' check metrics <'%s/m.txt'", prom, h->e.dir);
		cr_assert_eq(system(cmd), 0, "promtool check metrics failed on %s/m.txt", h->e.dir);
	}
}

/* The slot tests' fleet: a Redis and @n hosts sharing global max_inflight
 * @max as quota "g" (@expected hosts expected, lease @lease_s), each with
 * @per slot workers holding a slot 2 ms at a time until @until (logs
 * HOSTDIR/TAG<i>.log in @path, pids in @w); the redis-server's pid. */
static pid_t slot_fleet(struct cl_env *re, char *rsock, size_t len, struct host *h, int n, int max, int expected,
			int lease_s, int per, int64_t until, pid_t *w, char (*path)[200], const char *tag)
{
	char q[256];
	snprintf(q, sizeof(q), "\"g\": {\"max_inflight\": %d, \"scope\": \"global\", \"expected_hosts\": %d, "
		 "\"inflight_lease_s\": %d}", max, expected, lease_s);
	pid_t rpid = fleet_start(re, rsock, len, h, n, q);
	for (int i = 0; i < n * per; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/%s%d.log", h[i / per].e.dir, tag, i);
		w[i] = slot_worker(h[i / per].e.seg, path[i], until, 2 * CL_MS, 0);
	}
	return rpid;
}

/* Global max_inflight 6 over 3 hosts, each with 3 workers that would hold
 * far more: never more than 6 in flight fleet-wide (audited from the logs);
 * then host 0 (quotad and workers) SIGKILLed: Redis reaps its slots after
 * the lease and the two others get all 6, still never more than 6. */
#define S_MAX 6
#define S_LEASE_S 3

Test(global, inflight_slots, .timeout = 120)
{
	struct cl_env re;
	char rsock[160];
	struct host h[3];
	int64_t until = cl_now() + soak_s(4) * CL_S + 2 * S_LEASE_S * CL_S + 6 * CL_S;
	pid_t w[9];
	char path[9][200];
	slot_fleet(&re, rsock, sizeof(rsock), h, 3, S_MAX, 3, S_LEASE_S, 3, until, w, path, "s");
	/* A fresh Redis grants slots once the 3 expected hosts have reported
	 * (inflight_slots_grace): wait until host 0 holds some, bounded. */
	until_held(&h[0], 1, 1, S_LEASE_S + 10, "start");
	struct timespec run = { soak_s(2), 0 };
	nanosleep(&run, NULL); /* running on slots for a while: a schedule */
	for (int i = 0; i < 3; i++) {
		char *st = cl_request(h[i].e.sock, "{\"cmd\": \"status\"}");
		const char *g = st ? strstr(st, "\"global\"") : NULL;
		fprintf(stderr, "host %d: %s\n", i, g ? g : "(no status)");
		cr_assert(g && strstr(g, "\"limit\":\"inflight\"") && strstr(g, "\"mode\":\"granted\""));
		free(st);
	}
	check_slot_metrics(&h[1]);
	/* Host 0 dies: its quotad and its workers. */
	cl_stop(h[0].quotad, SIGKILL);
	for (int i = 0; i < 3; i++)
		cl_stop(w[i], SIGKILL);
	int64_t killed = cl_now();
	redisContext *c = redis_ctx(rsock);
	until_reaped(c, "h0", killed + (S_LEASE_S + 10) * CL_S);
	int64_t reaped = cl_now();
	redisFree(c);
	fprintf(stderr, "dead host's slots reaped %.2f s after the kill (lease %d s)\n",
		(double)(reaped - killed) / 1e9, S_LEASE_S);
	/* Not before the lease: its last call was at most a refresh (0.5 s)
	 * before the kill. */
	cr_assert(reaped - killed >= S_LEASE_S * CL_S - 500 * CL_MS, "reaped %.2f s after the kill, "
		  "before the lease", (double)(reaped - killed) / 1e9);
	/* Its slots come back to the two others: all 6 held between them. */
	until_held(&h[1], 2, S_MAX, 10, "the survivors");
	wait_workers(w + 3, 6);
	struct slot_log l = { 0 };
	size_t per[3] = { 0 };
	for (int i = 0; i < 9; i++) {
		size_t before = l.admitted;
		slot_log_add(&l, path[i], killed);
		per[i / 3] += l.admitted - before;
	}
	int64_t peak = slot_peak(&l);
	fprintf(stderr, "in flight: at most %lld at once fleet-wide (max_inflight %d); admitted %zu, "
		"by host %zu %zu %zu\n", (long long)peak, S_MAX, l.admitted, per[0], per[1], per[2]);
	cr_assert(peak <= S_MAX, "%lld in flight at once, max_inflight %d", (long long)peak, S_MAX);
	for (int i = 0; i < 3; i++)
		cr_assert(per[i] > 0, "host %d admitted nothing", i);
	free(l.e);
}

/* static_share takes the live hosts Redis last reported: 2 hosts of 4
 * expected share the limit by halves in an outage, not by quarters. */
Test(global, static_share_live_hosts, .timeout = 120)
{
	struct cl_env re;
	char rsock[160];
	struct host h[2];
	char q[256];
	snprintf(q, sizeof(q), "\"s\": {\"rpm\": %d, \"burst\": %g, \"scope\": \"global\", \"expected_hosts\": 4, "
		 "\"outage\": \"static_share\"}", G_RPM, G_BURST);
	pid_t rpid = fleet_start(&re, rsock, sizeof(rsock), h, 2, q);
	int64_t t0 = cl_now(), until = t0 + 2 * CL_S + soak_s(3) * CL_S + 2 * CL_S;
	pid_t w[4];
	char path[4][200];
	for (int i = 0; i < 4; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/s%d.log", h[i / 2].e.dir, i);
		w[i] = worker(h[i / 2].e.seg, "s", path[i], until);
	}
	struct timespec two = { 2, 0 };
	nanosleep(&two, NULL); /* running on grants: a schedule */
	cl_stop(rpid, SIGKILL);
	for (int i = 0; i < 2; i++) {
		char *st = status_until(&h[i], "outage-static_share", NULL);
		cr_assert_eq(status_num(st, "outage_share_hosts"), 2, "%s", st);
		free(st);
	}
	int64_t outage_seen = cl_now();
	wait_workers(w, 4);
	struct log l = { 0 };
	for (int i = 0; i < 4; i++)
		log_add_file(&l, path[i]);
	qsort(l.t, l.n, sizeof(*l.t), cmp64);
	int64_t a = outage_seen + 50 * CL_MS;
	double secs = (double)(until - a) / 1e9;
	size_t n = count_in(&l, a, until);
	/* Each host's term: r/2 W + b/2 (its share of 2 live hosts), +1 for
	 * the rounding of b/2. */
	double term = 2 * (G_R / 2 * secs + G_B / 2 + 1);
	fprintf(stderr, "outage %.2f s: static_share admitted %zu (%.1f %% of the limit), its term %.1f; "
		"a quarter share each could give at most %.1f\n", secs, n, 100.0 * (double)n / (G_R * secs), term,
		2 * (G_R / 4 * secs + G_B / 4 + 1));
	cr_assert(n <= term, "admitted %zu in the outage, term %.1f", n, term);
	/* More than quarters could ever admit: the halves were used. */
	cr_assert(n > 2 * (G_R / 4 * secs + G_B / 4 + 1), "only %zu admitted: not the live hosts' halves", n);
	audit(&l, G_R, G_B, G_R, G_B, "static_share live hosts");
	free(l.t);
}

/* ------------------------------------------------------------------ spend */

/* A fleet-wide budget of $2 a day ($0.001 a request: 2,000 requests) over 3
 * hosts with greedy workers, host 0's quotad SIGKILLed mid-run (its workers
 * go on with what its segment exposes, never more than its grant): never
 * more than $2 spent; at most host 0's credit (B/N) and less than a request
 * per host left unspent. The host's and Redis' months agree. */
#define USD_DAY 2
#define USD_REQ_NUSD 1000000

Test(global, spend_budget, .timeout = 120)
{
	struct cl_env re;
	char rsock[160];
	struct host h[3];
	char q[400];
	snprintf(q, sizeof(q), "\"g\": {\"rpm\": 600000, \"budget_usd\": {\"day\": %d, \"month\": 1000}, "
		 "\"price_per_mtok\": {\"input\": 1.0, \"output\": 0}, \"scope\": \"global\", \"expected_hosts\": 3}",
		 USD_DAY);
	fleet_start(&re, rsock, sizeof(rsock), h, 3, q);
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	long day0 = (long)(rt.tv_sec / 86400);
	int64_t until = cl_now() + soak_s(6) * CL_S;
	/* $0.001 a request: 1000 input tokens at $1 per million. */
	struct quota_cost cost = { .requests = 1, .input_tokens = 1000 };
	pid_t w[6];
	char path[6][200];
	for (int i = 0; i < 6; i++) {
		snprintf(path[i], sizeof(path[i]), "%s/u%d.log", h[i / 2].e.dir, i);
		w[i] = worker_cost(h[i / 2].e.seg, "g", path[i], until, 0, cost);
	}
	/* Once Redis has answered the month's limit, its month is the host's. */
	int64_t lim = cl_now() + 10 * CL_S;
	char *st;
	const char *mo;
	for (;;) {
		st = cl_request(h[0].e.sock, "{\"cmd\": \"status\"}");
		mo = st ? strstr(st, "\"limit\":\"usd_month\"") : NULL;
		if (mo && status_num(mo, "redis_period") > 0)
			break;
		free(st);
		cr_assert(cl_now() < lim, "Redis never answered the month's limit");
		struct timespec s = { 0, 5 * CL_MS };
		nanosleep(&s, NULL); /* polling a condition, bounded */
	}
	double hp = status_num(mo, "period"), rp = status_num(mo, "redis_period");
	free(st);
	cr_assert_eq(hp, rp, "months differ: host %.0f, Redis %.0f", hp, rp);
	/* Host 0's quotad dies once it has spent something. */
	lim = cl_now() + 10 * CL_S;
	for (;;) {
		st = cl_request(h[0].e.sock, "{\"cmd\": \"status\"}");
		bool spent = status_num(st, "spent_usd") > 0;
		free(st);
		if (spent)
			break;
		cr_assert(cl_now() < lim, "host 0 spent nothing");
		struct timespec s = { 0, 5 * CL_MS };
		nanosleep(&s, NULL); /* polling a condition, bounded */
	}
	cl_stop(h[0].quotad, SIGKILL);
	wait_workers(w, 6);
	for (int i = 1; i < 3; i++) {
		st = cl_request(h[i].e.sock, "{\"cmd\": \"status\"}");
		const char *g = st ? strstr(st, "\"global\"") : NULL;
		fprintf(stderr, "host %d: %s\n", i, g ? g : "(no status)");
		free(st);
	}
	size_t n = 0, per[3] = { 0 };
	for (int i = 0; i < 6; i++) {
		struct log l = { 0 };
		log_add_file(&l, path[i]);
		per[i / 2] += l.n;
		n += l.n;
		free(l.t);
	}
	clock_gettime(CLOCK_REALTIME, &rt);
	bool same_day = (long)(rt.tv_sec / 86400) == day0;
	double cap = (double)USD_DAY * 1e9 / USD_REQ_NUSD;
	fprintf(stderr, "spend: %zu requests = $%.3f of a $%d budget (by host %zu %zu %zu)%s\n", n,
		(double)n * USD_REQ_NUSD / 1e9, USD_DAY, per[0], per[1], per[2],
		same_day ? "" : " - a UTC day ended during the run");
	if (same_day) {
		cr_assert(n <= cap, "%zu requests spent $%.3f, over the $%d budget", n, (double)n / 1000, USD_DAY);
		/* Unspent: host 0's credit when it died (at most B/N), and less
		 * than a request per host. */
		cr_assert(n >= cap - cap / 3 - 3, "only %zu of %.0f requests' budget used", n, cap);
	} else {
		/* The day rolled over: each host may spend its local cap B/(4N)
		 * at the new day's start before its first grant, as debt
		 * (docs/ARCHITECTURE.md). */
		cr_assert(n <= 2 * cap + 3 * cap / 12, "%zu requests across a day boundary", n);
	}
}

/* Slots through a Redis outage: a host keeps the slots it holds for half
 * the lease (it still admits), then admits no new request; Redis restarted
 * empty, with one of the 3 expected hosts silent, grants nothing for a lease
 * after its start (the hosts' reports rebuild what they hold), then slots
 * are granted again; never more than M in flight, before, during or after. */
#define SO_MAX 4
#define SO_LEASE_S 4

Test(global, inflight_slots_outage, .timeout = 120)
{
	struct cl_env re;
	char rsock[160];
	struct host h[2];
	pid_t w[4];
	char path[4][200];
	pid_t rpid = slot_fleet(&re, rsock, sizeof(rsock), h, 2, SO_MAX, 3, SO_LEASE_S, 2, cl_now() + 100 * CL_S, w,
				path, "o");
	until_held(&h[0], 1, 1, SO_LEASE_S + 10, "start");
	until_held(&h[1], 1, 1, SO_LEASE_S + 10, "start");
	struct timespec one = { 1, 0 };
	nanosleep(&one, NULL); /* running on slots: a schedule */
	cl_stop(rpid, SIGKILL);
	int64_t killed = cl_now();
	int64_t expired[2];
	for (int i = 0; i < 2; i++) {
		free(status_until(&h[i], "outage-lease_expired", NULL));
		expired[i] = cl_now(); /* the host stopped admitting before this */
	}
	nanosleep(&one, NULL); /* the outage goes on: a schedule */
	int64_t restarted = cl_now();
	redis_start(re.dir, rsock, sizeof(rsock));
	until_held(&h[0], 1, 1, SO_LEASE_S + 10, "after the restart");
	until_held(&h[1], 1, 1, SO_LEASE_S + 10, "after the restart");
	int64_t back = cl_now();
	nanosleep(&one, NULL);
	for (int i = 0; i < 4; i++)
		cl_stop(w[i], SIGKILL);
	int64_t end = cl_now();
	struct slot_log l = { 0 };
	for (int i = 0; i < 4; i++)
		slot_log_add(&l, path[i], end);
	int64_t peak = slot_peak(&l);
	size_t kept = 0, after_expiry = 0, resumed = 0;
	for (size_t i = 0; i < l.n; i++) {
		const struct slot_ev *e = &l.e[i];
		if (e->d < 0)
			continue;
		kept += e->asked > killed && e->t < expired[0] && e->t < expired[1];
		/* Asked after its host had stopped admitting, before Redis was back. */
		after_expiry += e->asked > (expired[0] > expired[1] ? expired[0] : expired[1]) && e->t < restarted;
		resumed += e->asked > back;
	}
	fprintf(stderr, "slots outage: peak %lld in flight (max %d); admitted in the outage on kept slots %zu, "
		"after the half lease %zu, after the restart's grace %zu; expired %.2f s and %.2f s after the "
		"kill, slots again %.2f s after the restart (lease %d s)\n", (long long)peak, SO_MAX, kept,
		after_expiry, resumed, (double)(expired[0] - killed) / 1e9, (double)(expired[1] - killed) / 1e9,
		(double)(back - restarted) / 1e9, SO_LEASE_S);
	cr_assert(peak <= SO_MAX, "%lld in flight at once, max_inflight %d", (long long)peak, SO_MAX);
	cr_assert(kept > 0, "no admission on the slots kept in the outage");
	cr_assert_eq(after_expiry, 0, "%zu admitted after half the lease without Redis", after_expiry);
	cr_assert(resumed > 0, "no admission after the restart");
	/* An empty Redis with an expected host silent grants nothing before a
	 * lease after its start. */
	cr_assert(back - restarted >= SO_LEASE_S * CL_S - CL_S, "slots granted %.2f s after an empty restart",
		  (double)(back - restarted) / 1e9);
	free(l.e);
}

/* ------------------------------------------------- slots: dead quotad, grace */

/* Redis' own uptime in seconds (INFO server), -1 if unknown. */
static long redis_uptime(redisContext *c)
{
	redisReply *r = redisCommand(c, "INFO server");
	bool text = r && r->type == REDIS_REPLY_STRING;
	const char *p = text ? strstr(r->str, "uptime_in_seconds:") : NULL;
	long up = p ? atol(p + strlen("uptime_in_seconds:")) : -1;
	freeReplyObject(r);
	return up;
}

/* Whether the slots hash of "g" has @field = @want. */
static bool slots_field_is(redisContext *c, const char *field, const char *want)
{
	redisReply *r = redisCommand(c, "HGET quotad:{g}:inflight %s", field);
	bool is = r && r->type == REDIS_REPLY_STRING && strcmp(r->str, want) == 0;
	freeReplyObject(r);
	return is;
}

/* The logs of slot workers @path[0 .. n-1] (SIGKILLed at @end) into @l. */
static void slot_logs(struct slot_log *l, char (*path)[200], int n, int64_t end)
{
	for (int i = 0; i < n; i++)
		slot_log_add(l, path[i], end);
}

/* Host 0's QUOTAD SIGKILLed while its workers go on (global max_inflight 6,
 * 3 hosts, lease 4 s). Its workers keep the cap quotad left them, and stop
 * admitting by themselves half the lease after quotad sent its last call
 * Redis answered (inflight_until, reserve.c): no reserve call of theirs that
 * began half a lease after the kill admits anything. Redis reaps the host
 * a lease after its last call and the two others take all 6 slots; the
 * fleet, the dead quotad's workers included, never has more than 6 in
 * flight. */
#define D_LEASE_S 4

Test(global, inflight_slots_dead_quotad, .timeout = 120)
{
	struct cl_env re;
	char rsock[160];
	struct host h[3];
	pid_t w[9];
	char path[9][200];
	slot_fleet(&re, rsock, sizeof(rsock), h, 3, S_MAX, 3, D_LEASE_S, 3, cl_now() + 100 * CL_S, w, path, "d");
	for (int i = 0; i < 3; i++)
		until_held(&h[i], 1, 1, D_LEASE_S + 10, "start");
	struct timespec one = { 1, 0 };
	nanosleep(&one, NULL); /* running on slots: a schedule */
	cl_stop(h[0].quotad, SIGKILL);
	int64_t killed = cl_now();
	redisContext *c = redis_ctx(rsock);
	until_reaped(c, "h0", killed + (D_LEASE_S + 10) * CL_S);
	int64_t reaped = cl_now();
	redisFree(c);
	until_held(&h[1], 2, S_MAX, 10, "the survivors");
	int64_t all = cl_now();
	nanosleep(&one, NULL); /* the survivors run on all the slots: a schedule */
	for (int i = 0; i < 9; i++)
		cl_stop(w[i], SIGKILL);
	int64_t end = cl_now();
	struct slot_log dead = { 0 }, l = { 0 };
	slot_logs(&dead, path, 3, end);
	slot_logs(&l, path, 9, end);
	int64_t stop = killed + D_LEASE_S * CL_S / 2, last = 0;
	size_t after_kill = 0, late = 0, survivors = 0;
	for (size_t i = 0; i < dead.n; i++) {
		const struct slot_ev *e = &dead.e[i];
		if (e->d < 0)
			continue;
		after_kill += e->asked > killed;
		late += e->asked >= stop;
		last = e->t > last ? e->t : last;
	}
	for (size_t i = 0; i < l.n; i++)
		survivors += l.e[i].d > 0 && l.e[i].asked > all;
	int64_t peak = slot_peak(&l);
	fprintf(stderr, "dead quotad: its workers admitted %zu after the kill, the last %.2f s after it "
		"(bound: half the lease, %.1f s), %zu asked later; reaped %.2f s after the kill; survivors held "
		"all %d slots %.2f s after it and admitted %zu then; peak %lld in flight (max %d), %zu admitted\n",
		after_kill, (double)(last - killed) / 1e9, D_LEASE_S / 2.0, late, (double)(reaped - killed) / 1e9,
		S_MAX, (double)(all - killed) / 1e9, survivors, (long long)peak, S_MAX, l.admitted);
	cr_assert(after_kill > 0, "host 0's workers admitted nothing after the kill: the case was not run");
	cr_assert_eq(late, 0, "%zu admitted on host 0 though asked half a lease after its quotad died", late);
	cr_assert(survivors > 0, "the survivors admitted nothing on all the slots");
	cr_assert(peak <= S_MAX, "%lld in flight at once, max_inflight %d", (long long)peak, S_MAX);
	free(dead.e);
	free(l.e);
}

/* An empty Redis' grace ends once expected_hosts hosts have reported what
 * they hold (lease 20 s, M 4, 2 hosts expected 2, 3 workers each): a fresh
 * Redis grants slots within a few refresh periods; one restarted empty
 * while the hosts hold slots granted by the old one ends its grace as soon
 * (its grace field is 0 while it has been up for less than the lease) and
 * grants: the workers of the host holding more stop, its idle slots go
 * back, and the other host gets more than it held. Never more than 4 in
 * flight. The lease after the start is waited for when an expected host is
 * silent (inflight_slots_outage). */
#define GR_MAX 4
#define GR_LEASE_S 20

/* Redis (@c) ended its grace by the hosts' reports: its grace field reads 0
 * while it has been up for less than the lease (the lease would end it at
 * an uptime of the lease less a second of rounding). */
static void grace_ended_early(redisContext *c, const char *what)
{
	int64_t lim = cl_now() + (GR_LEASE_S + 10) * CL_S;
	while (!slots_field_is(c, "grace", "0")) {
		cr_assert(cl_now() < lim, "%s: the grace never ended", what);
		struct timespec s = { 0, 20 * CL_MS };
		nanosleep(&s, NULL); /* polling a condition, bounded */
	}
	long up = redis_uptime(c);
	fprintf(stderr, "%s: grace over at an uptime of %ld s (lease %d s)\n", what, up, GR_LEASE_S);
	cr_assert(up >= 0 && up < GR_LEASE_S - 1, "%s: grace over at an uptime of %ld s: by the lease", what, up);
}

Test(global, inflight_slots_grace, .timeout = 120)
{
	struct cl_env re;
	char rsock[160];
	struct host h[2];
	pid_t w[6];
	char path[6][200];
	int64_t t0 = cl_now();
	pid_t rpid = slot_fleet(&re, rsock, sizeof(rsock), h, 2, GR_MAX, 2, GR_LEASE_S, 3, cl_now() + 100 * CL_S, w,
				path, "r");
	until_held(&h[0], 1, 1, GR_LEASE_S + 10, "fresh Redis");
	until_held(&h[1], 1, 1, GR_LEASE_S + 10, "fresh Redis");
	fprintf(stderr, "fresh Redis: both hosts hold slots %.2f s after it was started\n",
		(double)(cl_now() - t0) / 1e9);
	redisContext *c = redis_ctx(rsock);
	grace_ended_early(c, "fresh Redis");
	redisFree(c);
	/* Redis restarted empty while both hosts hold slots of the old one;
	 * meanwhile the workers of the host holding more stop. */
	double held[2] = { slots_held(&h[0]), slots_held(&h[1]) };
	int rich = held[0] >= held[1] ? 0 : 1, poor = 1 - rich;
	cl_stop(rpid, SIGKILL);
	for (int i = 0; i < 2; i++)
		free(status_until(&h[i], "outage-slots_kept", NULL));
	for (int i = 0; i < 3; i++)
		cl_stop(w[3 * rich + i], SIGKILL);
	int64_t rich_end = cl_now(); /* their slots were reclaimed by then */
	int64_t restarted = cl_now();
	redis_start(re.dir, rsock, sizeof(rsock));
	c = redis_ctx(rsock);
	grace_ended_early(c, "Redis restarted empty");
	until_held(&h[poor], 1, held[poor] + 1, GR_LEASE_S + 10, "after the restart");
	long up = redis_uptime(c);
	redisFree(c);
	fprintf(stderr, "Redis restarted empty: host %d holds %.0f slots, not %.0f, %.2f s after the restart "
		"(uptime %ld s)\n", poor, held[poor] + 1, held[poor], (double)(cl_now() - restarted) / 1e9, up);
	cr_assert(up >= 0 && up < GR_LEASE_S - 1, "granted at an uptime of %ld s: after the lease", up);
	for (int i = 0; i < 3; i++)
		cl_stop(w[3 * poor + i], SIGKILL);
	struct slot_log l = { 0 };
	slot_logs(&l, path + 3 * rich, 3, rich_end);
	slot_logs(&l, path + 3 * poor, 3, cl_now());
	int64_t peak = slot_peak(&l);
	fprintf(stderr, "grace: peak %lld in flight (max %d), %zu admitted\n", (long long)peak, GR_MAX, l.admitted);
	cr_assert(peak <= GR_MAX, "%lld in flight at once, max_inflight %d", (long long)peak, GR_MAX);
	free(l.e);
}

/* ------------------------------------------------- slots: the fair split */

/* ns that worker log @path shows a request in flight within [@a, @b); one
 * never released (the worker was killed) ends at @end. */
static int64_t slot_busy(const char *path, int64_t a, int64_t b, int64_t end)
{
	FILE *f = fopen(path, "r");
	cr_assert(f, "slot log %s missing", path);
	struct slot_ev e;
	int64_t from = -1, busy = 0;
	for (;;) {
		bool more = fread(&e, sizeof(e), 1, f) == 1;
		if (!more && from < 0)
			break;
		if (!more)
			e = (struct slot_ev){ end, -1, 0 };
		if (e.d > 0) {
			from = e.t;
			continue;
		}
		int64_t x = from > a ? from : a, y = e.t < b ? e.t : b;
		busy += y > x ? y - x : 0;
		from = -1;
	}
	fclose(f);
	return busy;
}

/* When worker log @path shows its first admission. */
static int64_t slot_first(const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert(f, "slot log %s missing", path);
	struct slot_ev e = { 0 };
	cr_assert(fread(&e, sizeof(e), 1, f) == 1, "%s: no admission", path);
	fclose(f);
	return e.t;
}

/* The mean requests in flight in the logs @path[0 .. n-1] within [@a, @b). */
static double slot_mean(char (*path)[200], int n, int64_t a, int64_t b, int64_t end)
{
	int64_t busy = 0;
	for (int i = 0; i < n; i++)
		busy += slot_busy(path[i], a, b, end);
	return (double)busy / (double)(b - a);
}

#define F_HOSTS 3
#define F_WORKERS 18

/* A fair-split run on global max_inflight @max (lease S_LEASE_S, 3 hosts
 * expected): host 0 alone, with @per[0] workers whose requests last 20-50
 * ms, until it holds all @max (its mean in flight over the next second in
 * *@alone); then hosts 1 and 2 join with @per[1], @per[2] workers; after
 * GLOBAL_SOAK (4 s) the mean in flight of each host over the second half of
 * that in @mean. Asserts the fleet never had more than @max in flight. */
static void fair_run(int max, const int *per, const char *tag, double *alone, double *mean)
{
	struct cl_env re;
	char rsock[160], q[256];
	struct host h[F_HOSTS];
	pid_t w[F_WORKERS];
	char path[F_WORKERS][200];
	int first[F_HOSTS + 1] = { 0 };
	for (int i = 0; i < F_HOSTS; i++)
		first[i + 1] = first[i] + per[i];
	cr_assert(first[F_HOSTS] <= F_WORKERS);
	snprintf(q, sizeof(q), "\"g\": {\"max_inflight\": %d, \"scope\": \"global\", \"expected_hosts\": %d, "
		 "\"inflight_lease_s\": %d}", max, F_HOSTS, S_LEASE_S);
	cl_env(&re, "redis");
	redis_start(re.dir, rsock, sizeof(rsock));
	int64_t forever = cl_now() + 100 * CL_S;
	int64_t at[F_HOSTS + 1];
	for (int i = 0; i < F_HOSTS; i++) {
		host_start(&h[i], i, rsock, q);
		for (int k = first[i]; k < first[i + 1]; k++) {
			snprintf(path[k], sizeof(path[k]), "%s/%s%d.log", h[i].e.dir, tag, k);
			w[k] = slot_worker(h[i].e.seg, path[k], forever, 20 * CL_MS, 30 * CL_MS);
		}
		if (i == 0) {
			/* Alone (a fresh Redis' grace ends a lease after its
			 * start, the other expected hosts being silent). */
			until_held(&h[0], 1, max, S_LEASE_S + 10, "host 0 alone");
			at[0] = cl_now();
			struct timespec one = { 1, 0 };
			nanosleep(&one, NULL); /* host 0 runs alone: a schedule */
			at[1] = cl_now();
		}
	}
	struct timespec run = { soak_s(4), 0 };
	nanosleep(&run, NULL); /* the three hosts share the slots: a schedule */
	double held[F_HOSTS], fair[F_HOSTS];
	for (int i = 0; i < F_HOSTS; i++) {
		char *st = cl_request(h[i].e.sock, "{\"cmd\": \"status\"}");
		held[i] = status_num(st, "slots_held");
		fair[i] = status_num(st, "fair_cap");
		free(st);
	}
	/* Each worker's open request ends when it is killed. */
	int64_t end = cl_now(), from = end - (end - at[1]) / 2, killed[F_WORKERS];
	for (int k = 0; k < first[F_HOSTS]; k++) {
		killed[k] = cl_now();
		cl_stop(w[k], SIGKILL);
	}
	*alone = slot_mean(path, per[0], at[0], at[1], end);
	for (int i = 0; i < F_HOSTS; i++) {
		mean[i] = slot_mean(path + first[i], per[i], from, end, end);
		struct slot_log hl = { 0 };
		for (int k = first[i]; k < first[i + 1]; k++)
			slot_log_add(&hl, path[k], killed[k]);
		fprintf(stderr, "%s host %d (%d workers): %.2f in flight on average over the last %.1f s, at most "
			"%lld; holds %.0f, fair cap %.0f\n", tag, i, per[i], mean[i], (double)(end - from) / 1e9,
			(long long)slot_peak_since(&hl, from), held[i], fair[i]);
		free(hl.e);
	}
	struct slot_log l = { 0 };
	for (int k = 0; k < first[F_HOSTS]; k++)
		slot_log_add(&l, path[k], killed[k]);
	int64_t peak = slot_peak(&l);
	fprintf(stderr, "%s: host 0 alone %.2f in flight on average; first admissions of hosts 1 and 2 %.2f s and "
		"%.2f s after they were started; fleet peak %lld (max %d), %zu admitted\n", tag, *alone,
		(double)(slot_first(path[first[1]]) - at[1]) / 1e9, (double)(slot_first(path[first[2]]) - at[1]) / 1e9,
		(long long)peak, max, l.admitted);
	cr_assert(peak <= max, "%lld in flight at once, max_inflight %d", (long long)peak, max);
	free(l.e);
}

/* Three hosts with equal saturating demand (6 workers each) on max_inflight
 * 6: host 0, alone first, gets all 6; once the others join, each host has
 * its fair 2 in flight (at least 0.7 x 2 on average, asserted), though host
 * 0's workers never leave a slot idle. */
Test(global, inflight_slots_fair, .timeout = 120)
{
	int per[F_HOSTS] = { 6, 6, 6 };
	double alone, mean[F_HOSTS];
	fair_run(S_MAX, per, "fair", &alone, mean);
	cr_assert(alone >= 0.7 * S_MAX, "host 0 alone: %.2f in flight of %d", alone, S_MAX);
	for (int i = 0; i < F_HOSTS; i++)
		cr_assert(mean[i] >= 0.7 * S_MAX / F_HOSTS, "host %d: %.2f in flight, fair %d", i, mean[i],
			  S_MAX / F_HOSTS);
}

/* One heavy host (3 workers) and two light ones (1 worker each: a demand of
 * 1, below the fair 4/3) on max_inflight 4, the heavy one alone first: it
 * gets all 4; then the light ones get their demand (at least 0.7 of a slot
 * in flight on average, asserted) and the heavy one the rest, 2. */
Test(global, inflight_slots_heavy, .timeout = 120)
{
	int per[F_HOSTS] = { 3, 1, 1 };
	double alone, mean[F_HOSTS];
	fair_run(4, per, "heavy", &alone, mean);
	cr_assert(alone >= 0.7 * 3, "host 0 alone: %.2f in flight, 3 workers", alone);
	cr_assert(mean[0] >= 0.7 * 2, "the heavy host: %.2f in flight, the rest is 2", mean[0]);
	for (int i = 1; i < F_HOSTS; i++)
		cr_assert(mean[i] >= 0.7, "light host %d: %.2f in flight, its demand 1", i, mean[i]);
}
