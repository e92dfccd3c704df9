/* SPDX-License-Identifier: MIT */
/*
 * test_alarms.c - tickets still open and per-client alarms through the real
 * quotad, on the manual clock: tickets left open show in held_open (per
 * quota, `quotactl status`, the metrics per quota and per client process)
 * after at most two of quotad's phase flips; a killed process's open
 * tickets vanish with it; a settled ticket leaves at the next flip; the
 * per-client series are those of live processes with alarms, and `quotactl
 * metrics` passes `promtool check metrics`. Flips are waited for by their
 * count (quota_info's held_flips), never by sleeping a fixed time.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ctllib.h"

#define CONFIG "{\"clock\": \"manual\", \"quotas\": {\"q\": {\"rpm\": 100000, \"tpm\": 100000000, " \
	"\"learn\": true, \"alarms\": {\"held_s\": 1, \"over_estimate\": 2}}}}"

static struct quota_info info(quota_client *c)
{
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	return in;
}

/* Move the manual clock by held_s until quotad made one more phase flip
 * (its first check only schedules the first flip): the flip count after. */
static uint64_t next_flip(quota_client *c)
{
	uint64_t f0 = info(c).held_flips;
	for (int64_t deadline = cl_now() + 20 * CL_S; cl_now() < deadline;) {
		cr_assert_eq(quota_clock_set(c, quota_now(c) + CL_S), 0);
		/* quotad checks every 250 ms: look for a second */
		for (int i = 0; i < 200; i++) {
			uint64_t f = info(c).held_flips;
			if (f > f0)
				return f;
			nanosleep(&(struct timespec){ 0, 5 * CL_MS }, NULL);
		}
	}
	cr_assert_fail("quotad made no phase flip within 20 s");
	return 0;
}

/* The metrics as a file in the test's directory (promtool-checked). */
static const char *metrics(const struct cl_env *e)
{
	static char out[256];
	snprintf(out, sizeof(out), "%s/metrics.txt", e->dir);
	cr_assert_eq(cl_sh("'%s' --socket '%s' metrics >'%s'", getenv("QUOTACTL"), e->sock, out), 0);
	const char *promtool = getenv("PROMTOOL");
	if (promtool)
		cr_assert_eq(cl_sh("'%s' check metrics <'%s'", promtool, out), 0, "promtool check metrics failed on %s", out);
	return out;
}

static bool has(const char *file, const char *pattern)
{
	return cl_sh("grep -qE '%s' '%s'", pattern, file) == 0;
}

/* A child that reserves one ticket, says so, and waits to be killed. */
static pid_t holder(const char *seg)
{
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	pid_t pid = cl_fork();
	if (pid == 0) {
		quota_client *c;
		struct quota_ticket t;
		if (quota_open(seg, &c) < 0 || quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 10 }, 0, &t) < 0 ||
		    write(fds[1], "h", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	char ch;
	cr_assert_eq(read(fds[0], &ch, 1), 1, "the child reserved");
	close(fds[0]);
	close(fds[1]);
	return pid;
}

Test(alarms, held_open_per_quota_and_per_client, .timeout = 120)
{
	struct cl_env e;
	cl_env(&e, "al");
	pid_t qd = cl_quotad(&e, cl_file(&e, "q.json", CONFIG), NULL);
	quota_client *c = cl_open(e.seg);
	struct quota_ticket mine, t;
	/* an over-estimate commit: a per-client alarm of this process */
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 10 }, 0, &t), 0);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 10, 50 }), 0);
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 10 }, 0, &mine), 0);
	pid_t child = holder(e.seg);

	uint64_t f1 = next_flip(c);
	uint64_t f2 = next_flip(c);
	struct quota_info in = info(c);
	cr_assert_eq(in.held_open, 2, "after flips %llu, %llu: held_open %llu", (unsigned long long)f1,
		     (unsigned long long)f2, (unsigned long long)in.held_open);
	const char *m = metrics(&e);
	char pat[256];
	cr_assert(has(m, "^quota_held_open\\{quota=\"q\"\\} 2$"));
	snprintf(pat, sizeof(pat), "^quota_client_held_open\\{quota=\"q\",pid=\"%d\",comm=\"[^\"]*\"\\} 1$", (int)getpid());
	cr_assert(has(m, pat), "this process's open ticket in %s", m);
	snprintf(pat, sizeof(pat), "^quota_client_held_open\\{quota=\"q\",pid=\"%d\",comm=\"[^\"]*\"\\} 1$", (int)child);
	cr_assert(has(m, pat), "the child's open ticket in %s", m);
	snprintf(pat, sizeof(pat),
		 "^quota_client_alarms_total\\{quota=\"q\",pid=\"%d\",comm=\"[^\"]*\",alarm=\"over_estimate\"\\} 1$",
		 (int)getpid());
	cr_assert(has(m, pat), "this process's over-estimate alarm in %s", m);
	cr_assert(has(m, "^quota_learned_output_ratio\\{quota=\"q\",percentile=\"99\"\\} 0$"), "too few samples yet");
	cr_assert_eq(cl_sh("'%s' --segment '%s' status | grep -q 'tickets open longer than 1 s: 2'",
			getenv("QUOTACTL"), e.seg), 0);
	/* shown in the test's log */
	cl_sh("'%s' --segment '%s' status >&2; '%s' --socket '%s' clients >&2; "
	      "grep -E '^quota_(client_|held_open|learned_(input|output_ratio))' '%s' >&2", getenv("QUOTACTL"), e.seg,
	      getenv("QUOTACTL"), e.sock, m);

	/* the child is killed: its open ticket goes with it */
	cl_stop(child, SIGKILL);
	for (int64_t deadline = cl_now() + 10 * CL_S; cl_now() < deadline;) {
		char *r = cl_request(e.sock, "{\"cmd\":\"status\"}");
		double slots = cl_json_num(r, "daemon.reclaim.slots");
		free(r);
		if (slots >= 1)
			break;
		nanosleep(&(struct timespec){ 0, 5 * CL_MS }, NULL);
	}
	next_flip(c);
	cr_assert_eq(info(c).held_open, 1, "the killed child's ticket is gone");
	m = metrics(&e);
	snprintf(pat, sizeof(pat), "pid=\"%d\"", (int)child);
	cr_assert(!has(m, pat), "no series of a dead process");
	next_flip(c);
	cr_assert_eq(info(c).held_open, 1, "ours stays shown while open");

	/* settled: gone at the next flip */
	cr_assert_eq(quota_commit(c, &mine, &(struct quota_cost){ 1, 10, 10 }), 0);
	next_flip(c);
	cr_assert_eq(info(c).held_open, 0);
	m = metrics(&e);
	cr_assert(has(m, "^quota_held_open\\{quota=\"q\"\\} 0$"));
	cr_assert(!has(m, "^quota_client_held_open\\{"), "no client has an open ticket");
	quota_close(c);
	cl_stop(qd, SIGTERM);
}
