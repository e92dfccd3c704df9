/* SPDX-License-Identifier: MIT */
/*
 * bench.h - what the parts of quota-bench share: the interface every
 * implementation under test provides (libquota, the mutex and Redis
 * baselines, the lock-free reference and the physical floor), the latency
 * histogram, and a few helpers. main.c drives scenarios through this
 * interface; each impl_*.c knows one implementation and nothing else.
 */
#ifndef QBENCH_H
#define QBENCH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* ---- Time --------------------------------------------------------------- */

static inline int64_t qb_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- Latency histogram -------------------------------------------------- */

/*
 * Log-linear buckets: values below 2^QB_HIST_SUB_BITS ns are exact; above,
 * each power of two is split into 2^QB_HIST_SUB_BITS buckets, so a bucket is
 * at most 1/16 (6.25 %) of its value wide. Percentiles report the bucket's
 * midpoint. Up to 2^44 ns (about 4.9 hours) fits; longer goes to the last.
 */
#define QB_HIST_SUB_BITS 4
#define QB_HIST_SUB (1u << QB_HIST_SUB_BITS)
#define QB_HIST_MAX_BIT 44
#define QB_HIST_BUCKETS ((QB_HIST_MAX_BIT - QB_HIST_SUB_BITS + 1) * QB_HIST_SUB)

struct qb_hist {
	uint64_t count[QB_HIST_BUCKETS];
};

void qb_hist_add(struct qb_hist *h, uint64_t ns);
void qb_hist_merge(struct qb_hist *into, const struct qb_hist *from);
uint64_t qb_hist_total(const struct qb_hist *h);
/* The value at quantile @q (0..1) in ns, 0 if the histogram is empty. */
uint64_t qb_hist_quantile(const struct qb_hist *h, double q);

/* ---- What one operation does ---------------------------------------------- */

enum qb_op {
	QB_OP_RESERVE,        /* reserve, never settled (admit path) */
	QB_OP_RESERVE_COMMIT, /* reserve then commit with actual usage */
	QB_OP_REJECT,         /* reserve against an exhausted quota */
};

/* The quota a scenario runs on: rates per minute or per day, 0 = none. */
struct qb_quota_spec {
	uint64_t rpm, tpm, itpm, otpm; /* per minute */
	uint64_t rpd, tpd;             /* per day */
};

/* What one reservation asks for and what its commit reports. */
struct qb_cost {
	uint64_t requests, input_tokens, output_tokens;
};

/* Cost of every reservation in every scenario, and the commit's usage (less
 * output than asked for, so commit has a refund to make). */
extern const struct qb_cost qb_reserve_cost;
extern const struct qb_cost qb_commit_cost;

/* Counters one process keeps while it runs. */
struct qb_counts {
	uint64_t ops;      /* operations completed */
	uint64_t admitted; /* reservations admitted */
	uint64_t rejected; /* reservations refused (-EAGAIN or equivalent) */
	uint64_t retries;  /* CAS retries / contended lock acquisitions */
	uint64_t errors;   /* anything unexpected */
};

/*
 * An implementation under test. Life cycle, all in the bench's main process
 * unless said: setup() once; per scenario, prepare() creates @nquotas quotas
 * of @spec (named by index) in fresh state; then each forked worker calls
 * attach() (in the child), op() in its loop and detach(); finish() after the
 * scenario; teardown() once at the end, also after a failure.
 */
struct qb_impl {
	const char *name;
	const char *what; /* one line for the table's legend */
	int has_retries;  /* op() counts retries meaningfully */
	int (*setup)(void);
	int (*prepare)(const struct qb_quota_spec *spec, int nquotas);
	int (*attach)(int quota_index, void **state);
	/* 1 admitted, 0 rejected, negative on error. */
	int (*op)(void *state, enum qb_op op, struct qb_counts *c);
	void (*detach)(void *state);
	void (*finish)(void);
	void (*teardown)(void);
};

extern const struct qb_impl qb_impl_floor;
extern const struct qb_impl qb_impl_refcas;
extern const struct qb_impl qb_impl_mutex;
extern const struct qb_impl qb_impl_redis;
extern const struct qb_impl qb_impl_libquota; /* name NULL when not built */

/* The version the Redis baseline's server reported, or "unknown". */
const char *qb_redis_version(void);

/* ---- Shared helpers ------------------------------------------------------- */

/* A unique prefix for this run's shm objects and temp files ("qbench-PID"),
 * set by main() before anything else. */
extern char qb_run_prefix[64];
/* This run's private temporary directory (mkdtemp), or "" before setup. */
extern char qb_tmpdir[256];

/* Print a diagnostic to stderr, prefixed by "quota-bench: ". */
void qb_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Resident set size of the calling process in bytes, from /proc/self/statm;
 * 0 if unreadable. */
uint64_t qb_rss_bytes(void);
/* The part of it that is not shared with other processes (resident minus
 * shared, which counts file-backed and shm pages), in bytes. */
uint64_t qb_private_rss_bytes(void);

#endif /* QBENCH_H */
