/* SPDX-License-Identifier: MIT */
/*
 * test_reload.c - hot reload (SIGHUP and `quotactl reload`) on a live
 * segment, on the manual clock so that every figure is exact: a bad config
 * is refused and the old one keeps running; changed limits apply without
 * refilling what was spent; kinds added start full, kinds kept keep their
 * state even when they move position; quotas are added and removed; a
 * reload that needs more entries than the segment has is refused; and
 * reserve never sees a torn config while reloads run under it.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ctllib.h"

static int sh(const struct cl_env *e, const char *what)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' %s >/dev/null 2>>'%s/quotactl.err'",
		 getenv("QUOTACTL"), e->sock, what, e->dir);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static uint64_t avail(quota_client *c, const char *name, int kind)
{
	struct quota_info in;
	int id = quota_find(c, name);
	cr_assert_geq(id, 0, "quota %s: %s", name, quota_strerror(id));
	cr_assert_eq(quota_info(c, id, &in, sizeof(in)), 0);
	cr_assert_neq(in.rate[kind].limit, 0, "quota %s has no limit of kind %d", name, kind);
	return in.rate[kind].available;
}

static uint64_t limit_of(quota_client *c, const char *name, int kind)
{
	struct quota_info in;
	cr_assert_eq(quota_info(c, quota_find(c, name), &in, sizeof(in)), 0);
	return in.rate[kind].limit;
}

#define A "{\"clock\": \"manual\", \"max_quotas\": 3, \"quotas\": {" \
	"\"q\": {\"rpm\": 60, \"tpm\": 6000}, \"old\": {\"rpm\": 10}}}"
#define B "{\"clock\": \"manual\", \"max_quotas\": 3, \"quotas\": {" \
	"\"q\": {\"rpm\": 120, \"tpm\": 6000, \"itpm\": 1000}, \"new\": {\"rpm\": 5}}}"
#define C "{\"clock\": \"manual\", \"max_quotas\": 3, \"quotas\": {" \
	"\"q\": {\"tpm\": 6000, \"itpm\": 1000}, \"new\": {\"rpm\": 5}}}"
#define D "{\"clock\": \"manual\", \"max_quotas\": 3, \"quotas\": {" \
	"\"q\": {\"tpm\": 6000}, \"new\": {\"rpm\": 5}, \"more\": {\"rpm\": 1}}}"

Test(reload, limits_change_without_refill)
{
	struct cl_env e;
	cl_env(&e, "ld");
	const char *cfg = cl_file(&e, "q.json", A);
	pid_t qd = cl_quotad(&e, cfg, NULL);
	quota_client *c = cl_open(e.seg);
	int id = quota_find(c, "q");
	struct quota_ticket t;
	struct quota_cost cost = { 1, 10, 10 };
	for (int i = 0; i < 60; i++) /* the whole rpm burst, 1200 tokens */
		cr_assert_eq(quota_reserve(c, id, &cost, 0, &t), 0, "reservation %d", i);
	cr_assert_eq(avail(c, "q", QUOTA_RPM), 0);
	cr_assert_eq(avail(c, "q", QUOTA_TPM), 4800);

	/* A bad config: refused, through both paths, the old one stays. */
	cl_file(&e, "q.json", "{\"clock\": \"manual\", \"quotas\": {\"q\": {\"rpm\": -1}}}");
	cr_assert_eq(sh(&e, "reload"), 1);
	char grep[512];
	snprintf(grep, sizeof(grep), "grep -q 'quotas.q.rpm' '%s/quotactl.err'", e.dir);
	cr_assert_eq(system(grep), 0, "the refusal names the key");
	kill(qd, SIGHUP);
	for (int64_t t0 = cl_now();;) {
		char *r = cl_request(e.sock, "{\"cmd\":\"status\"}");
		double failed = r ? cl_json_num(r, "daemon.reloads_failed") : -1;
		free(r);
		if (failed == 2)
			break;
		cr_assert_lt(cl_now() - t0, 5 * CL_S, "SIGHUP with a bad config not handled");
	}
	cr_assert_eq(limit_of(c, "q", QUOTA_RPM), 60);
	cr_assert_geq(quota_find(c, "old"), 0);

	/* rpm doubled: what was spent stays spent (a refill would show 120). */
	cl_file(&e, "q.json", B);
	cr_assert_eq(sh(&e, "reload"), 0);
	cr_assert_eq(limit_of(c, "q", QUOTA_RPM), 120);
	cr_assert_eq(avail(c, "q", QUOTA_RPM), 0, "spent budget refilled by the reload");
	cr_assert_eq(avail(c, "q", QUOTA_TPM), 4800);
	cr_assert_eq(avail(c, "q", QUOTA_ITPM), 1000, "a new kind starts full");
	cr_assert_eq(quota_find(c, "old"), -ENOENT, "removed");
	int nid = quota_find(c, "new");
	cr_assert_geq(nid, 0, "added");
	cr_assert_eq(quota_reserve(c, nid, &cost, 0, &t), 0);
	cr_assert_eq(quota_clock_set(c, 30 * CL_S), 0);
	/* 30 s of a 60 s backlog paid at 2 per s: 60 available. */
	cr_assert_eq(avail(c, "q", QUOTA_RPM), 60);

	/* rpm removed: tpm and itpm keep their state although itpm moves. */
	uint64_t tpm = avail(c, "q", QUOTA_TPM);
	cr_assert_eq(quota_reserve(c, id, &(struct quota_cost){ 1, 300, 0 }, 0, &t), 0);
	uint64_t itpm = avail(c, "q", QUOTA_ITPM);
	tpm = avail(c, "q", QUOTA_TPM);
	cr_assert_eq(itpm, 700);
	cl_file(&e, "q.json", C);
	cr_assert_eq(sh(&e, "reload"), 0);
	cr_assert_eq(limit_of(c, "q", QUOTA_RPM), 0);
	cr_assert_eq(avail(c, "q", QUOTA_ITPM), itpm);
	cr_assert_eq(avail(c, "q", QUOTA_TPM), tpm);

	/* Capacity is fixed: a third new name does not fit. */
	cl_file(&e, "q.json", D);
	cr_assert_eq(sh(&e, "reload"), 1);
	snprintf(grep, sizeof(grep), "grep -q 'max_quotas is fixed' '%s/quotactl.err'", e.dir);
	cr_assert_eq(system(grep), 0, "the refusal says why");
	cr_assert_eq(avail(c, "q", QUOTA_ITPM), itpm, "nothing changed");
	cr_assert_eq(limit_of(c, "q", QUOTA_TPM), 6000);
	quota_close(c);
}

Test(reload, reserve_never_sees_a_torn_config, .timeout = 60)
{
	struct cl_env e;
	cl_env(&e, "lt");
	const char *x = "{\"quotas\": {\"q\": {\"rpm\": 6000000, \"tpm\": 600000000, \"max_inflight\": 8}}}";
	const char *y = "{\"quotas\": {\"q\": {\"itpm\": 600000000, \"tpm\": 60000000, \"rpm\": 600000, "
			"\"max_inflight\": 4, \"context_window\": 100000}}}";
	const char *cfg = cl_file(&e, "q.json", x);
	cl_quotad(&e, cfg, NULL);
	int p[2];
	cr_assert(pipe(p) == 0);
	pid_t kid = cl_fork();
	if (kid == 0) {
		close(p[0]);
		quota_client *c;
		if (quota_open(e.seg, &c) < 0)
			_exit(1);
		int id = quota_find(c, "q");
		if (write(p[1], "r", 1) != 1)
			_exit(1);
		for (;;) {
			struct quota_ticket t;
			int r = quota_reserve(c, id, &(struct quota_cost){ 1, 100, 100 }, 0, &t);
			if (r == 0)
				r = quota_commit(c, &t, &(struct quota_cost){ 1, 50, 50 });
			if (r != 0 && r != -EAGAIN)
				_exit(2);
		}
	}
	close(p[1]);
	char b;
	cr_assert_eq(read(p[0], &b, 1), 1);
	for (int i = 0; i < 200; i++) {
		cl_file(&e, "q.json", i & 1 ? x : y);
		char *r = cl_request(e.sock, "{\"cmd\":\"reload\"}");
		cr_assert(r && strstr(r, "\"ok\":true"), "reload %d: %s", i, r ? r : "(no reply)");
		free(r);
		int st;
		cr_assert_eq(waitpid(kid, &st, WNOHANG), 0, "the reserving process died (%s %d)",
			     WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	}
	int status = cl_stop(kid, SIGKILL);
	cr_assert(WIFSIGNALED(status), "the reserving process saw an error (exit %d)", WEXITSTATUS(status));
	close(p[0]);
}
