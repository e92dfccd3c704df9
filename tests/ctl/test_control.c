/* SPDX-License-Identifier: MIT */
/*
 * test_control.c - the control socket and quotactl: a peer with another uid
 * (nobody, through setuid in a forked child) can read but not change
 * anything; an oversized line, malformed JSON, half a line and a stall, and
 * 500 idle connections each get an error or a drop while status still
 * answers within 100 ms; `quotactl metrics` passes `promtool check metrics`;
 * quotactl's commands and exit codes.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ctllib.h"

#define NOBODY 65534

static int dial(const char *sock)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Read until EOF or @ms: what arrived (static buffer), *@eof if closed. */
static const char *drain(int fd, int ms, bool *eof)
{
	static char buf[4096];
	size_t got = 0;
	*eof = false;
	int64_t end = cl_now() + ms * CL_MS;
	while (got + 1 < sizeof(buf)) {
		int left = (int)((end - cl_now()) / CL_MS);
		struct pollfd p = { fd, POLLIN, 0 };
		if (left <= 0 || poll(&p, 1, left) != 1)
			break;
		ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
		if (n <= 0) {
			*eof = true;
			break;
		}
		got += (size_t)n;
	}
	buf[got] = '\0';
	return buf;
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

/* The median of 5 status round trips (the requirement is 100 ms; one
 * sample on a busy shared CPU can be a scheduling delay, five cannot all
 * be), and none above 500 ms. */
static int64_t timed_status(const char *sock)
{
	int64_t dt[5];
	for (int i = 0; i < 5; i++) {
		int64_t t = cl_now();
		char *r = cl_request(sock, "{\"cmd\":\"status\"}");
		dt[i] = cl_now() - t;
		cr_assert(r && strstr(r, "\"ok\":true"), "status: %s", r ? r : "(no reply)");
		cr_assert_lt(dt[i], 500 * CL_MS, "a status round trip took %.3f ms", dt[i] / 1e6);
		free(r);
	}
	qsort(dt, 5, sizeof(dt[0]), cmp64);
	return dt[2];
}

Test(control, another_uid_reads_but_cannot_change)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run a peer as nobody");
	struct cl_env e;
	cl_env(&e, "cu");
	cl_quotad(&e, NULL, NULL);
	char *before = cl_request(e.sock, "{\"cmd\":\"status\"}");
	cr_assert(before);
	pid_t pid = cl_fork();
	if (pid == 0) {
		/* uid nobody; keep group root, which the 0660 socket needs. */
		if (setgroups(0, NULL) < 0 || setgid(0) < 0 || setuid(NOBODY) < 0)
			_exit(10);
		char *r = cl_request(e.sock, "{\"cmd\":\"reload\"}");
		if (!r || !strstr(r, "permission denied"))
			_exit(11);
		free(r);
		r = cl_request(e.sock, "{\"cmd\":\"backoff\",\"quota\":\"llama-4-scout\",\"seconds\":60}");
		if (!r || !strstr(r, "permission denied"))
			_exit(12);
		free(r);
		r = cl_request(e.sock, "{\"cmd\":\"set\",\"quota\":\"llama-4-scout\",\"key\":\"rpm\",\"value\":5}");
		if (!r || !strstr(r, "permission denied"))
			_exit(15);
		free(r);
		r = cl_request(e.sock, "{\"cmd\":\"status\"}");
		if (!r || !strstr(r, "\"ok\":true"))
			_exit(13);
		free(r);
		r = cl_request(e.sock, "{\"cmd\":\"metrics\"}");
		if (!r || !strstr(r, "\"ok\":true"))
			_exit(14);
		_exit(0);
	}
	int status = cl_stop(pid, 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "nobody's checks failed at step %d",
		  WEXITSTATUS(status));
	/* Without the group, nobody cannot even connect. */
	pid = cl_fork();
	if (pid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
			_exit(10);
		_exit(dial(e.sock) < 0 && errno == EACCES ? 0 : 1);
	}
	status = cl_stop(pid, 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "connect as nobody:nobody must fail");
	char *after = cl_request(e.sock, "{\"cmd\":\"status\"}");
	cr_assert(after);
	cr_assert_eq(cl_json_num(after, "daemon.generation"), cl_json_num(before, "daemon.generation"),
		     "no reload happened");
	cr_assert_eq(cl_json_num(after, "daemon.reloads_ok"), 0);
	cr_assert(strstr(after, "\"paused_s\":0"), "no backoff happened: %s", after);
	free(before);
	free(after);
}

Test(control, bad_lines_and_stalls_get_errors, .timeout = 30)
{
	struct cl_env e;
	cl_env(&e, "cb");
	cl_quotad(&e, NULL, "--max-line", "256", "--idle-timeout", "1", NULL);
	bool eof;

	int big = dial(e.sock);
	char line[400];
	memset(line, 'x', sizeof(line));
	cr_assert_eq(send(big, line, sizeof(line), MSG_NOSIGNAL), (ssize_t)sizeof(line));
	const char *r = drain(big, 5000, &eof);
	cr_assert(strstr(r, "longer than 256 bytes") && eof, "oversized line: %s (eof %d)", r, eof);
	close(big);

	int bad = dial(e.sock);
	cr_assert_eq(send(bad, "{nope\n", 6, MSG_NOSIGNAL), 6);
	r = drain(bad, 300, &eof);
	cr_assert(strstr(r, "malformed request") && !eof, "malformed JSON: %s", r);
	cr_assert_eq(send(bad, "[1]\n{\"cmd\":\"status\"}\n", 21, MSG_NOSIGNAL), 21);
	r = drain(bad, 300, &eof);
	cr_assert(strstr(r, "malformed request") && strstr(r, "\"daemon\""), "after errors, status: %s", r);
	close(bad);

	int half = dial(e.sock);
	cr_assert_eq(send(half, "{\"cmd\":\"sta", 11, MSG_NOSIGNAL), 11);
	int64_t dt = timed_status(e.sock);
	cr_assert_lt(dt, 100 * CL_MS, "status took %.3f ms next to a stalled client", dt / 1e6);
	r = drain(half, 5000, &eof);
	cr_assert(strstr(r, "incomplete request line") && eof, "stalled half line: %s", r);
	close(half);
	fprintf(stderr, "status next to a stalled half line: %.3f ms\n", dt / 1e6);
}

Test(control, idle_flood_does_not_lock_out_status, .timeout = 30)
{
	struct cl_env e;
	cl_env(&e, "cf");
	cl_quotad(&e, NULL, "--max-connections", "64", NULL);
	enum { N = 500 };
	int fds[N];
	for (int i = 0; i < N; i++) {
		fds[i] = dial(e.sock);
		cr_assert(fds[i] >= 0, "connection %d: %s", i, strerror(errno));
	}
	int64_t dt = timed_status(e.sock);
	int64_t t = cl_now();
	const char *q = getenv("QUOTACTL");
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "'%s' --segment '%s' status >/dev/null", q, e.seg);
	cr_assert_eq(system(cmd), 0);
	int64_t dq = cl_now() - t;
	int refused = 0;
	for (int i = 0; i < N; i++) {
		bool eof;
		const char *r = drain(fds[i], 20, &eof);
		if (strstr(r, "too many control connections") && eof)
			refused++;
		close(fds[i]);
	}
	fprintf(stderr, "500 idle connections: %d dropped with an error; status over the socket %.3f ms, "
		"quotactl status %.3f ms\n", refused, dt / 1e6, dq / 1e6);
	cr_assert_geq(refused, N - 64);
	cr_assert_lt(dt, 100 * CL_MS, "status over the socket took %.3f ms", dt / 1e6);
	/* quotactl status reads the segment, not the socket: it answers whatever
	 * the daemon does; its time is process start-up (reported, not judged:
	 * under ASan alone that is ~200 ms). */
}

Test(control, quotactl_commands_and_metrics, .timeout = 30)
{
	struct cl_env e;
	cl_env(&e, "cm");
	pid_t qd = cl_quotad(&e, NULL, NULL);
	quota_client *c = cl_open(e.seg);
	int id = quota_find(c, "llama-4-scout");
	struct quota_ticket t;
	struct quota_cost cost = { 1, 100, 50 };
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(quota_reserve(c, id, &cost, 0, &t), 0);
		cr_assert_eq(quota_commit(c, &t, &cost), 0);
	}
	const char *q = getenv("QUOTACTL");
	char out[256];
	snprintf(out, sizeof(out), "%s/metrics.txt", e.dir);
	cr_assert_eq(cl_sh("'%s' --socket '%s' metrics >'%s'", q, e.sock, out), 0);
	const char *promtool = getenv("PROMTOOL");
	if (promtool)
		cr_assert_eq(cl_sh("'%s' check metrics <'%s'", promtool, out), 0, "promtool check metrics failed on %s", out);
	else
		fprintf(stderr, "promtool not found: metrics checked for content only\n");
	cr_assert_eq(cl_sh("grep -q '^quota_limit_capacity{quota=\"llama-4-scout\",limit=\"rpm\"} 1188$' '%s'", out), 0);
	cr_assert_eq(cl_sh("grep -q '^quota_admitted_total{quota=\"llama-4-scout\"} 3$' '%s'", out), 0);
	cr_assert_eq(cl_sh("grep -q '^# TYPE quota_reclaimed_total counter$' '%s'", out), 0);

	cr_assert_eq(cl_sh("'%s' --socket '%s' clients | grep -q -- ' %d '", q, e.sock, (int)getpid()), 0,
		     "clients lists this process");
	cr_assert_eq(cl_sh("'%s' --socket '%s' backoff llama-4-scout 2.5 >/dev/null", q, e.sock), 0);
	struct quota_info in;
	cr_assert_eq(quota_info(c, id, &in, sizeof(in)), 0);
	cr_assert(in.paused_ns > 2 * CL_S && in.paused_ns <= 2500 * CL_MS, "paused %lld", (long long)in.paused_ns);
	cr_assert_eq(cl_sh("'%s' --socket '%s' backoff llama-4-scout soon 2>/dev/null", q, e.sock), 2);
	cr_assert_eq(cl_sh("'%s' --socket '%s' backoff nosuch 1 2>/dev/null", q, e.sock), 1);
	/* set: one limit changed live, spent budget kept; bad input refused. */
	cr_assert_eq(quota_info(c, id, &in, sizeof(in)), 0);
	uint64_t tpm_avail = in.rate[QUOTA_TPM].available;
	cr_assert_eq(cl_sh("'%s' --socket '%s' set llama-4-scout rpm 600 >/dev/null", q, e.sock), 0);
	cr_assert_eq(cl_sh("'%s' --socket '%s' set llama-4-scout max_inflight 7 >/dev/null", q, e.sock), 0);
	cr_assert_eq(quota_info(c, id, &in, sizeof(in)), 0);
	cr_assert_eq(in.rate[QUOTA_RPM].limit, 600);
	cr_assert_eq(in.max_inflight, 7);
	cr_assert_leq(in.rate[QUOTA_TPM].available, tpm_avail + 1000, "tpm not refilled by a set");
	cr_assert_eq(cl_sh("'%s' --socket '%s' set llama-4-scout rpm 1.5 2>/dev/null", q, e.sock), 1);
	cr_assert_eq(cl_sh("'%s' --socket '%s' set llama-4-scout bogus 3 2>/dev/null", q, e.sock), 1);
	cr_assert_eq(cl_sh("'%s' --socket '%s' set nosuch rpm 3 2>/dev/null", q, e.sock), 1);
	cr_assert_eq(cl_sh("'%s' --socket '%s' set llama-4-scout rpm 2>/dev/null", q, e.sock), 2);
	cr_assert_eq(cl_sh("'%s' --socket '%s' set llama-4-scout rpm -4 2>/dev/null", q, e.sock), 2);
	cr_assert_eq(quota_info(c, id, &in, sizeof(in)), 0);
	cr_assert_eq(in.rate[QUOTA_RPM].limit, 600, "a refused set changes nothing");
	/* reload returns to the configuration source. */
	cr_assert_eq(cl_sh("'%s' --socket '%s' reload >/dev/null", q, e.sock), 0);
	cr_assert_eq(quota_info(c, id, &in, sizeof(in)), 0);
	cr_assert_eq(in.rate[QUOTA_RPM].limit, 1200);
	cr_assert_eq(in.max_inflight, 0);
	cr_assert_eq(cl_sh("'%s' --segment '%s' status --watch --interval 0.05 --count 3 | grep -c 'quotad up' | "
			"grep -qx 3", q, e.seg), 0);
	cr_assert_eq(cl_sh("'%s' --socket '%s' frobnicate 2>/dev/null", q, e.sock), 2);
	cl_stop(qd, SIGTERM);
	cr_assert_eq(cl_sh("'%s' --socket '%s' reload 2>/dev/null", q, e.sock), 1, "daemon down: 1");
	cr_assert_eq(cl_sh("'%s' --segment '%s' status | grep -q 'quotad DOWN'", q, e.seg), 0);
	quota_close(c);
}
