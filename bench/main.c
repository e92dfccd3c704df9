/* SPDX-License-Identifier: MIT */
/*
 * main.c - quota-bench: runs every scenario of the benchmark (issue 5) on
 * libquota, the mutex and Redis baselines, the lock-free reference and the
 * physical floor, in one run; prints a table (or --json), the targets with
 * their measured ratios, the machine it ran on, and a throughput plot
 * (--png, through gnuplot). --smoke instead checks correctness only, in a
 * few seconds, for the test suite.
 *
 * Process layout: main() is a supervisor. It makes the run's temporary
 * directory, forks the bench proper into its own process group and waits;
 * whatever way the bench ends (even SIGKILL), the supervisor then kills
 * that group (workers, redis-server) and removes the directory and every
 * /dev/shm object named after the run's prefix.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "harness.h"
#include "libquota_mem.h"
#include "report.h"

/* ---- Scenarios ------------------------------------------------------------ */

#define HUGE_RPM 1000000000ULL      /* never binds: 16.7 M requests/s */
#define HUGE_TPM 1000000000000ULL   /* 3.3 G tokens/s */

static const struct qb_quota_spec spec1 = { .rpm = HUGE_RPM };
static const struct qb_quota_spec spec2 = { .rpm = HUGE_RPM, .tpm = HUGE_TPM };
static const struct qb_quota_spec spec4 = {
	.rpm = HUGE_RPM, .tpm = HUGE_TPM, .itpm = HUGE_TPM, .otpm = HUGE_TPM };
/* Exhausted after its first request: 1 request per day. */
static const struct qb_quota_spec spec_reject = { .rpd = 1, .tpm = HUGE_TPM };
/* Deterministic: the day's token budget binds after exactly 100 reservations
 * of 300 tokens (and refills one every 14.4 min, far beyond a smoke run). */
static const struct qb_quota_spec spec_exact = { .rpd = 1000, .tpd = 30000 };

#define IMPL_FLOOR (1u << 0)
#define IMPL_LQ (1u << 1)
#define IMPL_MUTEX (1u << 2)
#define IMPL_REDIS (1u << 3)
#define IMPL_REF (1u << 4)
#define IMPL_CMP (IMPL_LQ | IMPL_MUTEX | IMPL_REDIS | IMPL_REF)

static const struct qb_scenario scenarios[] = {
	{ "floor", "physical floor: clock + CAS, private line", QB_OP_RESERVE, 1, 0, &spec1, IMPL_FLOOR },
	{ "floor-2p", "physical floor, 2 processes, a line each", QB_OP_RESERVE, 2, 1, &spec1, IMPL_FLOOR },
	{ "floor-hot-2", "hot floor: clock + CAS on one shared line, 2 processes", QB_OP_RESERVE, 2, 0, &spec1, IMPL_FLOOR },
	{ "floor-hot-16", "hot floor: clock + CAS on one shared line, 16 processes", QB_OP_RESERVE, 16, 0, &spec1, IMPL_FLOOR },
	{ "reserve-1l", "1 process reserve, 1 limit (rpm)", QB_OP_RESERVE, 1, 0, &spec1, IMPL_CMP },
	{ "reserve", "1 process reserve, 2 limits (rpm+tpm)", QB_OP_RESERVE, 1, 0, &spec2, IMPL_CMP },
	{ "reserve-4l", "1 process reserve, 4 limits", QB_OP_RESERVE, 1, 0, &spec4, IMPL_CMP },
	{ "hot-1", "reserve+commit, 1 process", QB_OP_RESERVE_COMMIT, 1, 0, &spec2, IMPL_CMP },
	{ "hot-2", "reserve+commit, hot quota, 2 processes", QB_OP_RESERVE_COMMIT, 2, 0, &spec2, IMPL_CMP },
	{ "hot-4", "reserve+commit, hot quota, 4 processes", QB_OP_RESERVE_COMMIT, 4, 0, &spec2, IMPL_CMP },
	{ "hot-8", "reserve+commit, hot quota, 8 processes", QB_OP_RESERVE_COMMIT, 8, 0, &spec2, IMPL_CMP },
	{ "hot-16", "reserve+commit, hot quota, 16 processes", QB_OP_RESERVE_COMMIT, 16, 0, &spec2, IMPL_CMP },
	{ "hot-reserve-2", "reserve, hot quota, 2 processes", QB_OP_RESERVE, 2, 0, &spec2, IMPL_CMP },
	{ "reject-2", "reserve, exhausted quota, 2 processes", QB_OP_REJECT, 2, 0, &spec_reject, IMPL_CMP },
	{ "distinct-2", "reserve+commit, own quota each, 2 processes", QB_OP_RESERVE_COMMIT, 2, 1, &spec2, IMPL_CMP },
	{ "distinct-4", "reserve+commit, own quota each, 4 processes", QB_OP_RESERVE_COMMIT, 4, 1, &spec2, IMPL_CMP },
};
#define NSCEN (int)(sizeof(scenarios) / sizeof(scenarios[0]))

static const struct qb_impl *impls[] = {
	&qb_impl_floor, &qb_impl_libquota, &qb_impl_mutex, &qb_impl_redis, &qb_impl_refcas,
};
#define NIMPL (int)(sizeof(impls) / sizeof(impls[0]))

/* ---- Options -------------------------------------------------------------- */

static struct {
	int runs;
	int duration_ms;
	int smoke;
	int json;
	const char *json_file;
	const char *png;
	unsigned impl_mask;
	const char *only; /* comma-separated scenario ids, NULL: all */
} opt = { 5, 500, 0, 0, NULL, NULL, ~0u, NULL };

/* Is scenario @id selected by --scenarios? */
static int selected(const char *id)
{
	if (!opt.only)
		return 1;
	size_t n = strlen(id);
	for (const char *p = opt.only; (p = strstr(p, id)); p += n)
		if ((p == opt.only || p[-1] == ',') && (p[n] == 0 || p[n] == ','))
			return 1;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: quota-bench [OPTIONS]\n"
		"Benchmark libquota against a robust-mutex shm table and a Redis GCRA script.\n\n"
		"  --runs N          runs per scenario (default 5, at least 1)\n"
		"  --duration-ms MS  length of one run (default 500)\n"
		"  --json            print JSON on stdout instead of the table\n"
		"  --json-file FILE  also write the JSON to FILE\n"
		"  --png FILE        plot throughput vs processes to FILE (gnuplot)\n"
		"  --impls LIST      comma-separated subset: floor,libquota,mutex,redis,refcas\n"
		"  --scenarios LIST  comma-separated scenario ids (default: all; see the table)\n"
		"  --smoke           correctness checks only (a few seconds); exit 1 on failure\n"
		"  --help            this text\n\n"
		"On a terminal, the full run shows its round, scenario and implementation on\n"
		"stderr (not when $CI is set).\n"
		"Environment: QBENCH_REDIS_SERVER (default redis-server), QBENCH_GNUPLOT (gnuplot), CI.\n");
}

static int parse_impls(const char *list)
{
	unsigned mask = 0;
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", list);
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int found = 0;
		for (int i = 0; i < NIMPL; i++)
			if (impls[i]->name && !strcmp(impls[i]->name, t)) {
				mask |= 1u << i;
				found = 1;
			}
		if (!found && !strcmp(t, "libquota"))
			qb_warn("built without libquota: ignoring it");
		else if (!found)
			return -1;
	}
	opt.impl_mask = mask;
	return 0;
}

/* ---- Running -------------------------------------------------------------- */

static int set_up[NIMPL];

static void teardown_all(void)
{
	for (int i = 0; i < NIMPL; i++)
		if (set_up[i]) {
			impls[i]->teardown();
			set_up[i] = 0;
		}
}

static int ensure_setup(int i)
{
	if (set_up[i])
		return 0;
	int r = impls[i]->setup();
	if (r == 0)
		set_up[i] = 1;
	return r;
}

static uint64_t sample_mask_for(const struct qb_impl *im)
{
	/* Redis operations take tens of microseconds: time every one. */
	return im == &qb_impl_redis ? 0 : 63;
}

/* One run of scenario @sc on implementation @ii, on fresh quotas, added to
 * @res (whose sc and im are set). */
static void run_once(const struct qb_scenario *sc, int ii, struct qb_result *res, int64_t duration_ns)
{
	const struct qb_impl *im = impls[ii];
	int r = ensure_setup(ii);
	if (r == 0)
		r = im->prepare(sc->spec, sc->distinct ? sc->procs : 1);
	if (r < 0) {
		res->err = r;
		qb_warn("%s/%s: setup failed: %s", im->name, sc->id, strerror(-r));
		return;
	}
	struct qb_run_params p = {
		.op = sc->op,
		.procs = sc->procs,
		.distinct = sc->distinct,
		.duration_ns = duration_ns,
		.max_ops = UINT64_MAX,
		.sample_mask = sample_mask_for(im),
	};
	struct qb_run_result *rr = malloc(sizeof(*rr));
	if (!rr) {
		res->err = -ENOMEM;
		im->finish();
		return;
	}
	r = qb_harness_run(im, &p, rr);
	if (res->runs < QB_MAX_RUNS)
		res->ops_per_s[res->runs++] = rr->ops_per_s;
	res->c.ops += rr->c.ops;
	res->c.admitted += rr->c.admitted;
	res->c.rejected += rr->c.rejected;
	res->c.retries += rr->c.retries;
	res->c.errors += rr->c.errors;
	res->wall_ns += rr->wall_ns;
	qb_hist_merge(&res->h, &rr->h);
	free(rr);
	if (r < 0) {
		res->err = r;
		qb_warn("%s/%s: run %d failed: %s", im->name, sc->id, res->runs, strerror(-r));
	}
	im->finish();
}

/* ---- Smoke: correctness only ---------------------------------------------- */

static int smoke_fail;

#define CHECK(cond, ...)                                   \
	do {                                               \
		if (!(cond)) {                             \
			qb_warn("smoke: FAIL: " __VA_ARGS__); \
			smoke_fail = 1;                    \
		}                                          \
	} while (0)

/* Two processes, @per_proc attempts each, on the deterministic quota. */
static int smoke_exact(int ii, enum qb_op op, uint64_t per_proc, struct qb_counts *c)
{
	const struct qb_impl *im = impls[ii];
	int r = ensure_setup(ii);
	if (r == 0)
		r = im->prepare(&spec_exact, 1);
	if (r < 0)
		return r;
	struct qb_run_params p = { .op = op, .procs = 2, .distinct = 0, .duration_ns = 0,
				   .max_ops = per_proc, .sample_mask = 63 };
	struct qb_run_result *rr = malloc(sizeof(*rr));
	if (!rr)
		return -ENOMEM;
	r = qb_harness_run(im, &p, rr);
	*c = rr->c;
	free(rr);
	im->finish();
	return r;
}

static int run_smoke(void)
{
	uint64_t agreed = 0;
	for (int i = 0; i < NIMPL; i++) {
		const struct qb_impl *im = impls[i];
		if (!im->name || im == &qb_impl_floor || !(opt.impl_mask & (1u << i)))
			continue;
		struct qb_counts c;
		/* Reserve only: exactly 100 fit in the day's 30,000 tokens, for
		 * every implementation, however the two processes interleave. */
		int r = smoke_exact(i, QB_OP_RESERVE, 400, &c);
		CHECK(r == 0, "%s: exact scenario failed: %s", im->name, strerror(-r));
		CHECK(c.admitted == 100, "%s: admitted %llu of 800 reservations, expected exactly 100",
		      im->name, (unsigned long long)c.admitted);
		CHECK(c.admitted + c.rejected == 800, "%s: %llu outcomes for 800 attempts", im->name,
		      (unsigned long long)(c.admitted + c.rejected));
		if (!agreed)
			agreed = c.admitted;
		CHECK(c.admitted == agreed, "%s disagrees: %llu admitted vs %llu", im->name,
		      (unsigned long long)c.admitted, (unsigned long long)agreed);
		/* Reserve + commit refunding 50 of 300 tokens: never more than the
		 * 30,000 tokens' worth of 250-token calls, never fewer than without
		 * refunds. */
		r = smoke_exact(i, QB_OP_RESERVE_COMMIT, 400, &c);
		CHECK(r == 0, "%s: exact commit scenario failed: %s", im->name, strerror(-r));
		CHECK(c.admitted >= 100 && c.admitted <= 120,
		      "%s: admitted %llu with refunds, expected 100..120 (30000 tokens / 250)",
		      im->name, (unsigned long long)c.admitted);
		fprintf(stderr, "smoke: %-8s exact: 100/100 admitted without refunds, %llu with\n",
			im->name, (unsigned long long)c.admitted);
	}

	/* Every scenario briefly, to keep the bench from rotting: no errors,
	 * and the exhausted quota admits at most its one request. */
	static struct qb_result res;
	for (int s = 0; s < NSCEN; s++) {
		const struct qb_scenario *sc = &scenarios[s];
		if (sc->procs > 4)
			continue;
		for (int i = 0; i < NIMPL; i++) {
			if (!impls[i]->name || !(sc->impls & (1u << i)) || !(opt.impl_mask & (1u << i)))
				continue;
			memset(&res, 0, sizeof(res));
			res.sc = sc;
			res.im = impls[i];
			run_once(sc, i, &res, 20000000);
			qb_result_summarize(&res);
			CHECK(res.err == 0 && res.c.errors == 0, "%s/%s: error %d", impls[i]->name, sc->id,
			      res.err);
			CHECK(res.c.ops > 0, "%s/%s: no operation completed", impls[i]->name, sc->id);
			if (sc->op == QB_OP_REJECT)
				CHECK(res.c.admitted <= 1, "%s/%s: over-admission: %llu admitted of 1/day",
				      impls[i]->name, sc->id, (unsigned long long)res.c.admitted);
			else
				CHECK(res.c.rejected == 0, "%s/%s: %llu rejected on a huge quota",
				      impls[i]->name, sc->id, (unsigned long long)res.c.rejected);
		}
	}
	if (qb_impl_libquota.name && (opt.impl_mask & IMPL_LQ)) {
		struct qb_libquota_mem m;
		int r = qb_libquota_memory(&m);
		CHECK(r == 0 && m.segment_bytes > 0, "libquota memory measurement failed: %d", r);
	}
	teardown_all();
	fprintf(stderr, "smoke: %s\n", smoke_fail ? "FAILED" : "ok");
	return smoke_fail;
}

/* ---- The full run ----------------------------------------------------------- */

/* Progress of the full run, on a terminal only: one line of stderr rewritten
 * in place saying which round, scenario and implementation is running.
 * Nothing when stderr is a file or a pipe, or $CI is set. */
static int progress_on;

static void progress(int round, int done, int total, const struct qb_scenario *sc, const char *impl)
{
	if (!progress_on)
		return;
	char line[160];
	snprintf(line, sizeof(line), "round %d of %d, run %d of %d: %s on %s", round, opt.runs, done + 1,
		 total, sc->id, impl);
	fprintf(stderr, "\r%-79.79s", line);
	fflush(stderr);
}

static void progress_end(void)
{
	if (progress_on)
		fprintf(stderr, "\r%79s\r", "");
}

static int run_bench(void)
{
	static struct qb_report rep;
	qb_machine_describe(&rep.machine);
	rep.runs = opt.runs;
	rep.duration_ms = opt.duration_ms;
	if (!opt.json)
		qb_print_machine(stdout, &rep.machine), fflush(stdout);
	int idx[NSCEN][NIMPL];
	for (int s = 0; s < NSCEN; s++) {
		for (int i = 0; i < NIMPL; i++) {
			idx[s][i] = -1;
			if (!impls[i]->name || !(scenarios[s].impls & (1u << i)) ||
			    !(opt.impl_mask & (1u << i)) || !selected(scenarios[s].id) ||
			    rep.nresults == QB_MAX_RESULTS)
				continue;
			idx[s][i] = rep.nresults;
			rep.results[rep.nresults].sc = &scenarios[s];
			rep.results[rep.nresults++].im = impls[i];
		}
	}
	/* Rounds: run k of every scenario and implementation before run k + 1
	 * of any, so that a burst of noise from the rest of the machine lands
	 * on all of them alike instead of on one scenario's every run. */
	progress_on = isatty(STDERR_FILENO) && !getenv("CI");
	int done = 0, total = rep.nresults * opt.runs;
	for (int k = 0; k < opt.runs; k++) {
		for (int s = 0; s < NSCEN; s++)
			for (int i = 0; i < NIMPL; i++) {
				struct qb_result *res = idx[s][i] < 0 ? NULL : &rep.results[idx[s][i]];
				if (!res)
					continue;
				progress(k + 1, done++, total, &scenarios[s], impls[i]->name);
				if (!res->err)
					run_once(&scenarios[s], i, res,
						 (int64_t)opt.duration_ms * 1000000);
			}
	}
	progress_end();
	for (int r = 0; r < rep.nresults; r++)
		qb_result_summarize(&rep.results[r]);
	qb_machine_load(&rep.machine);
	if (qb_impl_libquota.name && (opt.impl_mask & IMPL_LQ))
		rep.mem_err = qb_libquota_memory(&rep.mem);
	else
		rep.mem_err = -ENOSYS;
	rep.mutex_table_bytes = 10000ULL * 128;
	strncpy(rep.machine.redis_version, qb_redis_version(), sizeof(rep.machine.redis_version) - 1);
	teardown_all();

	qb_compute_targets(&rep);
	if (opt.json)
		qb_print_json(stdout, &rep);
	else
		qb_print_table(stdout, &rep);
	int ret = 0;
	if (opt.json_file) {
		FILE *f = fopen(opt.json_file, "we");
		if (!f) {
			qb_warn("%s: %s", opt.json_file, strerror(errno));
			ret = 1;
		} else {
			qb_print_json(f, &rep);
			fclose(f);
		}
	}
	if (opt.png && qb_plot(&rep, opt.png) < 0)
		ret = 1;
	for (int i = 0; i < rep.nresults; i++)
		if (rep.results[i].err)
			ret = 1;
	return ret;
}

/* ---- Supervisor ------------------------------------------------------------- */

static pid_t bench_pid;

static void forward(int sig)
{
	(void)sig;
	if (bench_pid > 0)
		kill(-bench_pid, SIGKILL);
}

/* Remove what a run may have left: its /dev/shm objects and temp dir.
 * Returns how many things were there. */
static int clean_up(void)
{
	int left = 0;
	DIR *d = opendir("/dev/shm");
	size_t plen = strlen(qb_run_prefix);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d)))
			if (!strncmp(e->d_name, qb_run_prefix, plen) && e->d_name[plen] == '-') {
				char name[300];
				snprintf(name, sizeof(name), "/%s", e->d_name);
				if (shm_unlink(name) == 0) {
					qb_warn("removed leftover /dev/shm%s", name);
					left++;
				}
			}
		closedir(d);
	}
	d = opendir(qb_tmpdir);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
				char path[600];
				snprintf(path, sizeof(path), "%s/%s", qb_tmpdir, e->d_name);
				unlink(path);
			}
		closedir(d);
		rmdir(qb_tmpdir);
	}
	return left;
}

/* Options into opt; -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "runs", required_argument, NULL, 'r' },
		{ "duration-ms", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ "json-file", required_argument, NULL, 'J' },
		{ "png", required_argument, NULL, 'p' },
		{ "impls", required_argument, NULL, 'i' },
		{ "scenarios", required_argument, NULL, 'S' },
		{ "smoke", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'r':
			opt.runs = atoi(optarg);
			break;
		case 'd':
			opt.duration_ms = atoi(optarg);
			break;
		case 'j':
			opt.json = 1;
			break;
		case 'J':
			opt.json_file = optarg;
			break;
		case 'p':
			opt.png = optarg;
			break;
		case 'i':
			if (parse_impls(optarg) < 0) {
				qb_warn("--impls: unknown implementation in '%s'", optarg);
				return 2;
			}
			break;
		case 'S':
			opt.only = optarg;
			break;
		case 's':
			opt.smoke = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || opt.runs < 1 || opt.runs > QB_MAX_RUNS || opt.duration_ms < 1) {
		usage(stderr);
		return 2;
	}
	return -1;
}

/* The forked child: the bench proper, in its own process group. */
static void __attribute__((noreturn)) bench_child(void)
{
	setpgid(0, 0);
	signal(SIGPIPE, SIG_IGN); /* a dead helper or server is an error, not a death */
	int r = qb_harness_init();
	if (r < 0) {
		qb_warn("harness: %s", strerror(-r));
		_exit(1);
	}
	r = opt.smoke ? run_smoke() : run_bench();
	teardown_all();
	fflush(NULL);
	_exit(r ? 1 : 0);
}

/* The supervisor's half: wait for the bench however it ends, then kill its
 * group and remove what it left. Returns the exit status. */
static int supervise(void)
{
	setpgid(bench_pid, bench_pid); /* either of us may get there first */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = forward;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	int status = 0;
	while (waitpid(bench_pid, &status, 0) < 0 && errno == EINTR)
		;
	kill(-bench_pid, SIGKILL); /* stragglers: workers, redis-server */
	bench_pid = 0;
	int left = clean_up();
	int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	if (!WIFEXITED(status))
		qb_warn("bench process died (signal %d)", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	if (opt.smoke && left) {
		qb_warn("smoke: FAIL: %d shm object(s) left behind by the bench", left);
		ok = 0;
	}
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	int ret = parse_args(argc, argv);
	if (ret >= 0)
		return ret;

	snprintf(qb_run_prefix, sizeof(qb_run_prefix), "qbench-%d", (int)getpid());
	const char *tmp = getenv("TMPDIR");
	snprintf(qb_tmpdir, sizeof(qb_tmpdir), "%s/qbench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(qb_tmpdir)) {
		qb_warn("mkdtemp %s: %s", qb_tmpdir, strerror(errno));
		return 1;
	}

	fflush(NULL);
	bench_pid = fork();
	if (bench_pid < 0) {
		qb_warn("fork: %s", strerror(errno));
		clean_up();
		return 1;
	}
	if (bench_pid == 0)
		bench_child();
	return supervise();
}
