/* SPDX-License-Identifier: MIT */
/*
 * global_lat.c - the hot path on a global quota against a host-scope one
 * (issue 11): single-thread reserve + commit of one request, alternating
 * batches between two quotas with the same (huge) limits on one segment,
 * one of them global (quotad holding its TAT and crediting Redis grants).
 * Prints the median and p99 ns per reserve + commit of each. A program that
 * prints figures, not a test (run by global-bench.sh).
 *
 * Usage: qbench-global-lat SEGMENT [BATCHES]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quota.h"
#include "../tools/opt.h"

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("Usage: qbench-global-lat SEGMENT [BATCHES]\n"
		       "Reserve + commit on the quotas \"host\" and \"global\" of SEGMENT, in\n"
		       "alternating batches (default 400, 10 to 1000000); prints the median and\n"
		       "p99 ns of each. bench/global-bench.sh sets it up. See quota-bench(1).\n");
		return 0;
	}
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: qbench-global-lat SEGMENT [BATCHES] (--help for more)\n");
		return 2;
	}
	int batches = argc > 2 ? (int)tool_opt_uint("qbench-global-lat", "BATCHES", argv[2], 10, 1000000) : 400;
	quota_client *c;
	int r = quota_open(argv[1], &c);
	if (r < 0) {
		fprintf(stderr, "quota_open: %s\n", quota_strerror(r));
		return 1;
	}
	const char *names[2] = { "host", "global" };
	int id[2] = { quota_find(c, "host"), quota_find(c, "global") };
	if (id[0] < 0 || id[1] < 0) {
		fprintf(stderr, "quotas \"host\" and \"global\" needed\n");
		return 1;
	}
	enum { PER = 2000 };
	double *ns[2] = { calloc((size_t)batches, sizeof(double)), calloc((size_t)batches, sizeof(double)) };
	long refused[2] = { 0, 0 };
	struct quota_cost one = { .requests = 1 };
	for (int b = 0; b < batches; b++) {
		for (int k = 0; k < 2; k++) {
			int q = (b & 1) ? 1 - k : k; /* alternate the order */
			int64_t t0 = now_ns();
			for (int i = 0; i < PER; i++) {
				struct quota_ticket t;
				if (quota_reserve(c, id[q], &one, 0, &t) == 0)
					quota_commit(c, &t, &one);
				else
					refused[q]++;
			}
			ns[q][b] = (double)(now_ns() - t0) / PER;
		}
	}
	for (int q = 0; q < 2; q++) {
		qsort(ns[q], (size_t)batches, sizeof(double), cmp);
		printf("%-7s reserve+commit: median %.1f ns, p99 %.1f ns (batches of %d, %d batches, %ld refused)\n",
		       names[q], ns[q][batches / 2], ns[q][batches * 99 / 100], PER, batches, refused[q]);
	}
	quota_close(c);
	return 0;
}
