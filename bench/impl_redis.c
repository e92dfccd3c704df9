/* SPDX-License-Identifier: MIT */
/*
 * impl_redis.c - baseline 2: GCRA in a local Redis, the way redis-cell,
 * LiteLLM or Envoy's rate limiter would do it on one host. Redis 7.0 has no
 * GCRA command, so a Lua script (EVALSHA) does gcra_ref.h's arithmetic
 * atomically on the server, with the server's clock (TIME); the client only
 * sends the scenario's per-limit constants. Commit is a second script that
 * applies the refund. The bench starts its own redis-server on a unix socket
 * in its temporary directory (no TCP port, no persistence) and stops it;
 * the server gets SIGKILL from the kernel if the bench dies first
 * (PR_SET_PDEATHSIG), and main.c's supervisor removes the directory.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gcra_ref.h"

/* ARGV[1]: the server's second the run's clock starts at (keeps ns values
 * far below 2^53, exact in Lua's doubles); ARGV[2i], ARGV[2i+1]: inc and tau
 * of KEYS[i]. Returns 1 admitted, 0 refused (nothing written). */
static const char reserve_lua[] =
	"local t = redis.call('TIME')\n"
	"local now = (tonumber(t[1]) - tonumber(ARGV[1])) * 1000000000 + tonumber(t[2]) * 1000\n"
	"local nt = {}\n"
	"for i = 1, #KEYS do\n"
	"  local tat = tonumber(redis.call('GET', KEYS[i])) or 0\n"
	"  if tat < now then tat = now end\n"
	"  local n = tat + tonumber(ARGV[2 * i])\n"
	"  if n - now > tonumber(ARGV[2 * i + 1]) then return 0 end\n"
	"  nt[i] = n\n"
	"end\n"
	"for i = 1, #KEYS do redis.call('SET', KEYS[i], string.format('%d', nt[i])) end\n"
	"return 1\n";

/* ARGV[i]: ns added to KEYS[i] (negative: a refund). */
static const char commit_lua[] =
	"for i = 1, #KEYS do\n"
	"  local d = tonumber(ARGV[i])\n"
	"  if d ~= 0 then redis.call('INCRBY', KEYS[i], ARGV[i]) end\n"
	"end\n"
	"return 1\n";

static pid_t server_pid;
static char sock_path[320];
static char reserve_sha[64], commit_sha[64];
static char base_sec[32];
static char version[32];
static struct qb_gcra gcra;

#define MAX_ARGS (3 + QB_GCRA_MAX + 1 + 2 * QB_GCRA_MAX)

/* One prepared command: its arguments never change within a scenario. */
struct command_args {
	char buf[MAX_ARGS][72];
	const char *argv[MAX_ARGS];
	size_t len[MAX_ARGS];
	int argc;
};

struct redis_state {
	redisContext *rc;
	struct command_args res, com;
};

static redisContext *connect_server(void)
{
	struct timeval tv = { 10, 0 };
	redisContext *rc = redisConnectUnixWithTimeout(sock_path, tv);
	if (rc && rc->err) {
		redisFree(rc);
		return NULL;
	}
	return rc;
}

/* Run a command expecting a status, string or integer reply; copy a string
 * reply into @out. Returns 0 or -EIO. */
static int command(redisContext *rc, char *out, size_t outlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(rc, fmt, ap);
	va_end(ap);
	int ret = -EIO;
	if (r && r->type != REDIS_REPLY_ERROR) {
		ret = 0;
		if (out && r->type == REDIS_REPLY_STRING)
			snprintf(out, outlen, "%s", r->str);
		else if (out && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
			 r->element[0]->type == REDIS_REPLY_STRING)
			snprintf(out, outlen, "%s", r->element[0]->str);
	} else if (r) {
		qb_warn("redis: %s", r->str);
	}
	freeReplyObject(r);
	return ret;
}

static void stop_server(void)
{
	if (server_pid <= 0)
		return;
	redisContext *rc = connect_server();
	if (rc) {
		redisReply *r = redisCommand(rc, "SHUTDOWN NOSAVE");
		freeReplyObject(r);
		redisFree(rc);
	}
	/* Give it 2 s to exit on its own, then kill it. */
	for (int i = 0; i < 200; i++) {
		if (waitpid(server_pid, NULL, WNOHANG) == server_pid) {
			server_pid = 0;
			break;
		}
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	if (server_pid > 0) {
		kill(server_pid, SIGKILL);
		waitpid(server_pid, NULL, 0);
		server_pid = 0;
	}
	unlink(sock_path);
}

static int redis_setup(void)
{
	const char *bin = getenv("QBENCH_REDIS_SERVER");
	if (!bin)
		bin = "redis-server";
	char logfile[320];
	snprintf(sock_path, sizeof(sock_path), "%s/redis.sock", qb_tmpdir);
	snprintf(logfile, sizeof(logfile), "%s/redis.log", qb_tmpdir);
	pid_t parent = getpid();
	server_pid = fork();
	if (server_pid < 0)
		return -errno;
	if (server_pid == 0) {
		/* Dies with the bench, whatever kills it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		execlp(bin, bin, "--port", "0", "--unixsocket", sock_path, "--unixsocketperm", "700",
		       "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", qb_tmpdir,
		       "--logfile", logfile, (char *)NULL);
		fprintf(stderr, "quota-bench: cannot run %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	/* Wait (up to 5 s) until it accepts connections. */
	redisContext *rc = NULL;
	for (int i = 0; i < 500 && !rc; i++) {
		int status;
		if (waitpid(server_pid, &status, WNOHANG) == server_pid) {
			server_pid = 0;
			qb_warn("redis-server exited at start (see %s)", logfile);
			return -ECHILD;
		}
		rc = connect_server();
		if (!rc) {
			struct timespec ts = { 0, 10000000 };
			nanosleep(&ts, NULL);
		}
	}
	if (!rc) {
		qb_warn("redis-server did not come up on %s", sock_path);
		stop_server();
		return -ETIMEDOUT;
	}
	char tsec[32] = "";
	int r = command(rc, reserve_sha, sizeof(reserve_sha), "SCRIPT LOAD %s", reserve_lua);
	if (!r)
		r = command(rc, commit_sha, sizeof(commit_sha), "SCRIPT LOAD %s", commit_lua);
	if (!r)
		r = command(rc, tsec, sizeof(tsec), "TIME");
	if (!r) {
		snprintf(base_sec, sizeof(base_sec), "%s", tsec);
		redisReply *info = redisCommand(rc, "INFO server");
		const char *v = info && info->type == REDIS_REPLY_STRING ? info->str : NULL;
		if (v && (v = strstr(v, "redis_version:")))
			sscanf(v + 14, "%31[^\r\n]", version);
		freeReplyObject(info);
	}
	redisFree(rc);
	if (r)
		stop_server();
	return r;
}

const char *qb_redis_version(void)
{
	return version[0] ? version : "unknown";
}

static int redis_prepare(const struct qb_quota_spec *spec, int nquotas)
{
	(void)nquotas;
	int r = qb_gcra_build(spec, &gcra);
	if (r < 0)
		return r;
	redisContext *rc = connect_server();
	if (!rc)
		return -EIO;
	r = command(rc, NULL, 0, "FLUSHALL");
	redisFree(rc);
	return r;
}

static void arg(struct command_args *a, const char *str, long long v)
{
	char *b = a->buf[a->argc];
	if (str)
		snprintf(b, sizeof(a->buf[0]), "%s", str);
	else
		snprintf(b, sizeof(a->buf[0]), "%lld", v);
	a->argv[a->argc] = b;
	a->len[a->argc] = strlen(b);
	a->argc++;
}

static int redis_attach(int quota_index, void **state)
{
	struct redis_state *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->rc = connect_server();
	if (!s->rc) {
		free(s);
		return -EIO;
	}
	int n = gcra.n;
	char key[48];
	/* EVALSHA sha n key... base inc tau ... */
	arg(&s->res, "EVALSHA", 0);
	arg(&s->res, reserve_sha, 0);
	arg(&s->res, NULL, n);
	for (int i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "q%d:%d", quota_index, i);
		arg(&s->res, key, 0);
	}
	arg(&s->res, base_sec, 0);
	for (int i = 0; i < n; i++) {
		arg(&s->res, NULL, gcra.l[i].inc);
		arg(&s->res, NULL, gcra.l[i].tau);
	}
	/* EVALSHA sha n key... delta ... */
	arg(&s->com, "EVALSHA", 0);
	arg(&s->com, commit_sha, 0);
	arg(&s->com, NULL, n);
	for (int i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "q%d:%d", quota_index, i);
		arg(&s->com, key, 0);
	}
	for (int i = 0; i < n; i++)
		arg(&s->com, NULL, gcra.l[i].delta);
	*state = s;
	return 0;
}

static int call(redisContext *rc, struct command_args *a)
{
	redisReply *r = redisCommandArgv(rc, a->argc, a->argv, a->len);
	int ret = -EIO;
	if (r && r->type == REDIS_REPLY_INTEGER)
		ret = r->integer ? 1 : 0;
	else if (r && r->type == REDIS_REPLY_ERROR)
		qb_warn("redis: %s", r->str);
	freeReplyObject(r);
	return ret;
}

static int redis_op(void *state, enum qb_op op, struct qb_counts *c)
{
	(void)c;
	struct redis_state *s = state;
	int r = call(s->rc, &s->res);
	if (r != 1 || op != QB_OP_RESERVE_COMMIT)
		return r;
	r = call(s->rc, &s->com);
	return r < 0 ? r : 1;
}

static void redis_detach(void *state)
{
	struct redis_state *s = state;
	redisFree(s->rc);
	free(s);
}

static void redis_finish(void)
{
}

const struct qb_impl qb_impl_redis = {
	.name = "redis",
	.what = "GCRA Lua script (EVALSHA) via hiredis, local redis-server on a unix socket",
	.has_retries = 0,
	.setup = redis_setup,
	.prepare = redis_prepare,
	.attach = redis_attach,
	.op = redis_op,
	.detach = redis_detach,
	.finish = redis_finish,
	.teardown = stop_server,
};
