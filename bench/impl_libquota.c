/* SPDX-License-Identifier: MIT */
/*
 * impl_libquota.c - the product under test, through its public API only
 * (quota_open, quota_find, quota_reserve, quota_commit), linked against the
 * shared libquota exactly as a worker is. Each scenario gets a fresh segment
 * with "clock": "monotonic", made by qbench-mkseg (mkseg.c: quotad's own
 * config parser and segment setup, the code path of `quotad -c`); the bench
 * unlinks it afterwards. Also measures the memory figures: a segment sized
 * for 10,000 quotas and 1,024 clients, and the resident memory quota_open()
 * adds to a worker.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "libquota_mem.h"

#ifdef QBENCH_HAVE_LIBQUOTA
#include "quota.h"
#ifdef QBENCH_LQ_CAS_RETRIES
/* The hook: a process-local count of failed compare-exchanges that the
 * library keeps in its (private) client handle. meson.build enables this
 * only when struct quota_client has the field. */
#include "internal.h"
#define LQ_HAS_RETRIES 1
#else
#define LQ_HAS_RETRIES 0
#endif

#ifndef QBENCH_MKSEG
#define QBENCH_MKSEG "qbench-mkseg"
#endif

static char seg[96];

struct lq_state {
	quota_client *c;
	int id;
	uint64_t retries0; /* the handle's CAS retry count at attach */
	struct quota_ticket t;
};

static int lq_setup(void)
{
	return 0;
}

/* Append a quota's JSON object for @spec to @b. */
static int quota_json(char *b, size_t len, const char *name, const struct qb_quota_spec *s)
{
	int n = snprintf(b, len, "\"%s\":{\"burst\":1.0,\"refund\":\"actual\"", name);
	static const char *keys[] = { "rpm", "tpm", "itpm", "otpm", "rpd", "tpd" };
	const uint64_t v[] = { s->rpm, s->tpm, s->itpm, s->otpm, s->rpd, s->tpd };
	for (int i = 0; i < 6; i++)
		if (v[i] && n > 0 && (size_t)n < len)
			n += snprintf(b + n, len - (size_t)n, ",\"%s\":%llu", keys[i],
				      (unsigned long long)v[i]);
	if (n > 0 && (size_t)n < len)
		n += snprintf(b + n, len - (size_t)n, "}");
	return n > 0 && (size_t)n < len ? n : -ENOSPC;
}

/* Run qbench-mkseg @name with @json on its stdin. */
static int run_mkseg(const char *name, const char *json, size_t len)
{
	const char *bin = getenv("QBENCH_MKSEG");
	if (!bin || !*bin)
		bin = QBENCH_MKSEG;
	int fds[2];
	if (pipe(fds) < 0)
		return -errno;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return -errno;
	}
	if (pid == 0) {
		dup2(fds[0], 0);
		close(fds[0]);
		close(fds[1]);
		execl(bin, bin, name, (char *)NULL);
		fprintf(stderr, "quota-bench: cannot run %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	close(fds[0]);
	const char *p = json;
	while (len > 0) {
		ssize_t w = write(fds[1], p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		p += w;
		len -= (size_t)w;
	}
	close(fds[1]);
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		qb_warn("libquota: %s could not create segment %s", bin, name);
		return -EIO;
	}
	return 0;
}

/* Make segment @name with @nquotas quotas of @spec and the given capacities
 * (0: quotad's defaults). */
static int make_segment(const char *name, const struct qb_quota_spec *spec, int nquotas,
			unsigned max_quotas, unsigned max_clients)
{
	size_t len = 256 + (size_t)nquotas * 256;
	char *json = malloc(len);
	if (!json)
		return -ENOMEM;
	int n = snprintf(json, len, "{\"clock\":\"monotonic\",");
	if (max_quotas)
		n += snprintf(json + n, len - (size_t)n, "\"max_quotas\":%u,", max_quotas);
	if (max_clients)
		n += snprintf(json + n, len - (size_t)n, "\"max_clients\":%u,", max_clients);
	n += snprintf(json + n, len - (size_t)n, "\"quotas\":{");
	for (int i = 0; i < nquotas; i++) {
		char qname[32];
		snprintf(qname, sizeof(qname), "q%d", i);
		if (i)
			json[n++] = ',';
		int m = quota_json(json + n, len - (size_t)n, qname, spec);
		if (m < 0) {
			free(json);
			return m;
		}
		n += m;
	}
	n += snprintf(json + n, len - (size_t)n, "}}");
	int r = run_mkseg(name, json, (size_t)n);
	free(json);
	return r;
}

static void unlink_segment(char *name)
{
	if (name[0]) {
		char path[128];
		snprintf(path, sizeof(path), "/%s", name);
		shm_unlink(path);
	}
	name[0] = 0;
}

static int lq_prepare(const struct qb_quota_spec *spec, int nquotas)
{
	static unsigned seq;
	snprintf(seg, sizeof(seg), "%s-lq-%u", qb_run_prefix, seq++);
	int r = make_segment(seg, spec, nquotas, 0, 0);
	if (r < 0)
		seg[0] = 0;
	return r;
}

static int lq_attach(int quota_index, void **state)
{
	struct lq_state *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	int r = quota_open(seg, &s->c);
	if (r < 0) {
		qb_warn("quota_open(%s): %s", seg, quota_strerror(r));
		free(s);
		return r;
	}
	char name[32];
	snprintf(name, sizeof(name), "q%d", quota_index);
	s->id = quota_find(s->c, name);
	if (s->id < 0) {
		r = s->id;
		quota_close(s->c);
		free(s);
		return r;
	}
#ifdef QBENCH_LQ_CAS_RETRIES
	s->retries0 = s->c->first->cas_retries;
#endif
	*state = s;
	return 0;
}

static int lq_op(void *state, enum qb_op op, struct qb_counts *c)
{
	struct lq_state *s = state;
	const struct quota_cost cost = { qb_reserve_cost.requests, qb_reserve_cost.input_tokens,
					 qb_reserve_cost.output_tokens };
	int r = quota_reserve(s->c, s->id, &cost, 0, &s->t);
	if (r == 0 && op == QB_OP_RESERVE_COMMIT) {
		const struct quota_cost used = { qb_commit_cost.requests, qb_commit_cost.input_tokens,
						 qb_commit_cost.output_tokens };
		r = quota_commit(s->c, &s->t, &used);
		r = r < 0 ? r : 0;
	}
#ifdef QBENCH_LQ_CAS_RETRIES
	c->retries = s->c->first->cas_retries - s->retries0; /* process-local, cumulative */
#else
	(void)c; /* CAS retries are not visible through the public API */
#endif
	return r == 0 ? 1 : r == -EAGAIN ? 0 : r;
}

static void lq_detach(void *state)
{
	struct lq_state *s = state;
	quota_close(s->c);
	free(s);
}

static void lq_finish(void)
{
	unlink_segment(seg);
}

int qb_libquota_memory(struct qb_libquota_mem *m)
{
	memset(m, 0, sizeof(*m));
	m->quotas = 10000;
	m->clients = 1024;
	char name[96];
	snprintf(name, sizeof(name), "%s-lq-mem", qb_run_prefix);
	const struct qb_quota_spec spec = { .rpm = 1200, .tpm = 900000 };
	int r = make_segment(name, &spec, (int)m->quotas, m->quotas, m->clients);
	if (r < 0)
		return r;
	char path[128];
	struct stat st;
	snprintf(path, sizeof(path), "/dev/shm/%s", name);
	if (stat(path, &st) == 0)
		m->segment_bytes = (uint64_t)st.st_size;

	/* A fresh process: RSS before and after quota_open(), then after its
	 * first reservation (which touches its quota's lines). */
	uint64_t *res = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (res == MAP_FAILED) {
		unlink_segment(name);
		return -errno;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		quota_client *c;
		uint64_t before = qb_rss_bytes(), before_priv = qb_private_rss_bytes();
		if (quota_open(name, &c) < 0)
			_exit(1);
		uint64_t opened = qb_rss_bytes(), opened_priv = qb_private_rss_bytes();
		int id = quota_find(c, "q9999");
		const struct quota_cost cost = { 1, 100, 200 };
		struct quota_ticket t;
		if (id < 0 || quota_reserve(c, id, &cost, 0, &t) < 0 || quota_cancel(c, &t) < 0)
			_exit(2);
		uint64_t used = qb_rss_bytes();
		quota_close(c);
		res[0] = opened - before;
		res[1] = used - before;
		res[3] = opened_priv - before_priv;
		res[2] = 1;
		_exit(0);
	}
	int status = 0;
	if (pid > 0)
		waitpid(pid, &status, 0);
	r = pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && res[2] ? 0 : -EIO;
	m->rss_open_bytes = res[0];
	m->rss_first_reserve_bytes = res[1];
	m->private_open_bytes = res[3];
	munmap(res, 4096);
	unlink_segment(name);
	return r;
}

const struct qb_impl qb_impl_libquota = {
	.name = "libquota",
	.what = "libquota public API: quota_reserve (+ quota_commit), lock-free shm",
	.has_retries = LQ_HAS_RETRIES,
	.setup = lq_setup,
	.prepare = lq_prepare,
	.attach = lq_attach,
	.op = lq_op,
	.detach = lq_detach,
	.finish = lq_finish,
	.teardown = lq_finish,
};

#else /* !QBENCH_HAVE_LIBQUOTA */

int qb_libquota_memory(struct qb_libquota_mem *m)
{
	memset(m, 0, sizeof(*m));
	return -ENOSYS;
}

const struct qb_impl qb_impl_libquota = { .name = NULL };

#endif
