/* SPDX-License-Identifier: MIT */
/*
 * harness.h - run one scenario once on one implementation with forked
 * workers started on a barrier (harness.c says how it times).
 */
#ifndef QBENCH_HARNESS_H
#define QBENCH_HARNESS_H

#include "bench.h"

#define QB_MAX_PROCS 64

struct qb_run_params {
	enum qb_op op;
	int procs;
	int distinct;         /* worker i uses quota i, else all use quota 0 */
	int64_t duration_ns;  /* > 0: timed run; 0: until max_ops */
	uint64_t max_ops;     /* per worker */
	uint64_t sample_mask; /* time operations whose index & mask == mask */
};

struct qb_run_result {
	struct qb_counts c; /* summed over workers */
	struct qb_hist h;   /* sampled latencies, ns */
	int64_t wall_ns;    /* first start to last end */
	double ops_per_s;   /* aggregate */
	int err;            /* first error a worker saw, 0 if none */
};

/* Once per process, before any run. */
int qb_harness_init(void);
/* Returns 0 or the first negative error; @out is filled either way. */
int qb_harness_run(const struct qb_impl *im, const struct qb_run_params *p, struct qb_run_result *out);

#endif /* QBENCH_HARNESS_H */
