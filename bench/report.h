/* SPDX-License-Identifier: MIT */
/*
 * report.h - results of a full bench run and what is made of them: the
 * statistics per scenario, the targets as ratios, the machine
 * description, and the three outputs (table, JSON, PNG plot).
 */
#ifndef QBENCH_REPORT_H
#define QBENCH_REPORT_H

#include <stdio.h>

#include "bench.h"
#include "libquota_mem.h"

#define QB_MAX_RUNS 50
#define QB_MAX_RESULTS 96
#define QB_MAX_TARGETS 16

struct qb_scenario {
	const char *id;
	const char *title;
	enum qb_op op;
	int procs;
	int distinct; /* one quota per process */
	const struct qb_quota_spec *spec;
	unsigned impls; /* bit i: impls[i] of main.c */
};

struct qb_result {
	const struct qb_scenario *sc;
	const struct qb_impl *im;
	int runs;
	double ops_per_s[QB_MAX_RUNS];
	double median, min;    /* of ops_per_s */
	struct qb_counts c;    /* summed over runs */
	int64_t wall_ns;       /* summed over runs */
	struct qb_hist h;      /* all runs' samples */
	uint64_t p50, p99, p999, p9999, samples;
	double retries_per_op; /* < 0: not measurable */
	int err;
};

struct qb_machine {
	char cpu[128];
	int cpus;
	char kernel[200];
	char clocksource[64];
	char date[40];
	char loadavg[64];     /* at start */
	char loadavg_end[64]; /* at the end */
	char compiler[96];
	char redis_version[32];
	uint64_t timer_p50_ns; /* a timed empty operation: the sampling's own cost */
};

struct qb_target {
	const char *name;
	const char *goal;  /* e.g. ">= 0.75" */
	double value;      /* the measured ratio; NAN if not measurable */
	double threshold;  /* value >= threshold means reached */
	char detail[200];
};

struct qb_report {
	struct qb_machine machine;
	int runs, duration_ms;
	int nresults;
	struct qb_result results[QB_MAX_RESULTS];
	int ntargets;
	struct qb_target targets[QB_MAX_TARGETS];
	struct qb_libquota_mem mem;
	int mem_err;
	uint64_t mutex_table_bytes; /* the mutex baseline's table for 10,000 quotas */
};

void qb_machine_describe(struct qb_machine *m);
/* Record the load average at the end of the run. */
void qb_machine_load(struct qb_machine *m);
void qb_result_summarize(struct qb_result *r);
void qb_compute_targets(struct qb_report *rep);
void qb_print_machine(FILE *f, const struct qb_machine *m);
void qb_print_table(FILE *f, const struct qb_report *rep);
void qb_print_json(FILE *f, const struct qb_report *rep);
/* Write a PNG of hot-quota throughput vs processes with gnuplot. */
int qb_plot(const struct qb_report *rep, const char *png);

#endif /* QBENCH_REPORT_H */
