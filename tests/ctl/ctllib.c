/* SPDX-License-Identifier: MIT */
/* ctllib.c - see ctllib.h. */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>

#include "ctllib.h"

#define CL_MAX 64

static pid_t owner;
static pid_t pids[CL_MAX];
static int npids;
static struct cl_env envs[8];
static int nenvs;
static unsigned counter;

int64_t cl_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * CL_S + ts.tv_nsec;
}

void cl_cleanup(void)
{
	if (getpid() != owner)
		return;
	for (int i = 0; i < npids; i++) {
		if (pids[i] > 0) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
		}
	}
	npids = 0;
	for (int i = 0; i < nenvs; i++) {
		char path[512];
		snprintf(path, sizeof(path), "/%.*s", (int)sizeof(envs[i].seg), envs[i].seg);
		shm_unlink(path);
		snprintf(path, sizeof(path), "rm -rf '%.*s'", (int)sizeof(envs[i].dir), envs[i].dir);
		if (system(path) != 0)
			fprintf(stderr, "ctllib: could not remove %s\n", envs[i].dir);
	}
	nenvs = 0;
}

static void own(void)
{
	if (owner != getpid()) {
		owner = getpid();
		npids = nenvs = 0;
		atexit(cl_cleanup);
	}
}

static void track(pid_t pid)
{
	if (npids < CL_MAX)
		pids[npids++] = pid;
}

void cl_env(struct cl_env *e, const char *tag)
{
	own();
	cr_assert(nenvs < 8, "too many environments in one test");
	snprintf(e->seg, sizeof(e->seg), "qctl-%s-%d-%u", tag, (int)getpid(), counter++);
	snprintf(e->dir, sizeof(e->dir), "/tmp/qctl-%s-XXXXXX", tag);
	cr_assert(mkdtemp(e->dir), "mkdtemp: %s", strerror(errno));
	chmod(e->dir, 0755); /* others (nobody) reach the socket by its group */
	snprintf(e->sock, sizeof(e->sock), "%s/q.sock", e->dir);
	snprintf(e->log, sizeof(e->log), "%s/quotad.log", e->dir);
	envs[nenvs++] = *e;
}

const char *cl_file(const struct cl_env *e, const char *name, const char *json)
{
	static char path[8][160];
	static int next;
	char *p = path[next++ % 8];
	snprintf(p, sizeof(path[0]), "%s/%s", e->dir, name);
	FILE *f = fopen(p, "w");
	cr_assert(f, "%s: %s", p, strerror(errno));
	fputs(json, f);
	fclose(f);
	return p;
}

pid_t cl_fork(void)
{
	own();
	pid_t parent = getpid();
	pid_t pid = fork();
	cr_assert(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		return 0;
	}
	track(pid);
	return pid;
}

pid_t cl_quotad_spawn(const struct cl_env *e, const char *config, const char *const *extra, int *ret_fd)
{
	const char *bin = getenv("QUOTAD");
	cr_assert(bin, "$QUOTAD is not set (run through meson test)");
	int p[2];
	cr_assert(pipe2(p, O_CLOEXEC) == 0);
	pid_t pid = cl_fork();
	if (pid == 0) {
		char fdarg[16];
		int fd = dup(p[1]); /* without O_CLOEXEC: quotad inherits it */
		snprintf(fdarg, sizeof(fdarg), "%d", fd);
		int log = open(e->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (log >= 0)
			dup2(log, 2);
		char *argv[32] = { strdup(bin), strdup("--segment"), strdup(e->seg), strdup("--socket"),
				   strdup(e->sock), strdup("--ready-fd"), fdarg };
		int n = 7;
		if (config) {
			argv[n++] = strdup("-c");
			argv[n++] = strdup(config);
		}
		for (int i = 0; extra && extra[i] && n < 31; i++)
			argv[n++] = strdup(extra[i]);
		argv[n] = NULL;
		execv(bin, argv);
		_exit(127);
	}
	close(p[1]);
	*ret_fd = p[0];
	return pid;
}

bool cl_ready(int fd)
{
	char buf[16] = { 0 };
	struct pollfd pf = { fd, POLLIN, 0 };
	ssize_t got = 0;
	if (poll(&pf, 1, 10000) == 1)
		got = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return got == 6 && strcmp(buf, "ready\n") == 0;
}

pid_t cl_quotad_try(const struct cl_env *e, const char *config, const char *const *extra,
		    bool *ready, int *status)
{
	int fd;
	pid_t pid = cl_quotad_spawn(e, config, extra, &fd);
	*ready = cl_ready(fd);
	*status = 0;
	if (!*ready)
		waitpid(pid, status, 0);
	return pid;
}

pid_t cl_quotad(const struct cl_env *e, const char *config, ...)
{
	const char *extra[16];
	int n = 0;
	va_list ap;
	va_start(ap, config);
	const char *a;
	while ((a = va_arg(ap, const char *)) && n < 15)
		extra[n++] = a;
	va_end(ap);
	extra[n] = NULL;
	bool ready;
	int status;
	pid_t pid = cl_quotad_try(e, config, extra, &ready, &status);
	if (!ready) {
		char cmd[256];
		snprintf(cmd, sizeof(cmd), "cat '%s' >&2", e->log);
		if (system(cmd) != 0)
			fprintf(stderr, "(no log)\n");
	}
	cr_assert(ready, "quotad did not get ready (status %d)", status);
	return pid;
}

int cl_stop(pid_t pid, int sig)
{
	int status = -1;
	kill(pid, sig);
	waitpid(pid, &status, 0);
	for (int i = 0; i < npids; i++)
		if (pids[i] == pid)
			pids[i] = 0;
	return status;
}

char *cl_request(const char *sock, const char *line)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	size_t len = strlen(line);
	if (send(fd, line, len, MSG_NOSIGNAL) != (ssize_t)len || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
		close(fd);
		return NULL;
	}
	size_t cap = 1 << 20, got = 0;
	char *buf = malloc(cap);
	while (buf && got + 1 < cap) {
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, 5000) != 1)
			break;
		ssize_t n = recv(fd, buf + got, cap - got - 1, 0);
		if (n <= 0)
			break;
		got += (size_t)n;
		if (memchr(buf, '\n', got))
			break;
	}
	close(fd);
	if (buf && (got == 0 || !memchr(buf, '\n', got))) {
		free(buf);
		return NULL;
	}
	if (buf)
		buf[got] = '\0';
	return buf;
}

double cl_json_num(const char *reply, const char *path)
{
	cJSON *root = cJSON_Parse(reply);
	const cJSON *v = root;
	char key[64];
	while (v && *path) {
		size_t n = strcspn(path, ".");
		snprintf(key, sizeof(key), "%.*s", (int)n, path);
		v = cJSON_GetObjectItemCaseSensitive(v, key);
		path += n + (path[n] == '.');
	}
	double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
	cJSON_Delete(root);
	return d;
}

quota_client *cl_open(const char *seg)
{
	quota_client *c = NULL;
	int r = quota_open(seg, &c);
	cr_assert_eq(r, 0, "quota_open(%s): %s", seg, quota_strerror(r));
	return c;
}

int cl_sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
