/* SPDX-License-Identifier: MIT */
/*
 * common.c - the latency histogram and small helpers every part of
 * quota-bench uses (diagnostics, RSS, the run's names).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

const struct qb_cost qb_reserve_cost = { 1, 100, 200 };
const struct qb_cost qb_commit_cost = { 1, 100, 150 };

char qb_run_prefix[64];
char qb_tmpdir[256];

static unsigned bucket_of(uint64_t v)
{
	if (v < QB_HIST_SUB)
		return (unsigned)v;
	unsigned bit = 63u - (unsigned)__builtin_clzll(v); /* >= QB_HIST_SUB_BITS */
	if (bit > QB_HIST_MAX_BIT)
		return QB_HIST_BUCKETS - 1;
	unsigned sub = (unsigned)(v >> (bit - QB_HIST_SUB_BITS)) & (QB_HIST_SUB - 1);
	return (bit - QB_HIST_SUB_BITS + 1) * QB_HIST_SUB + sub;
}

/* Lowest value of bucket @b and its width. */
static void bucket_range(unsigned b, uint64_t *lo, uint64_t *width)
{
	if (b < QB_HIST_SUB) {
		*lo = b;
		*width = 1;
		return;
	}
	unsigned bit = b / QB_HIST_SUB - 1 + QB_HIST_SUB_BITS;
	uint64_t sub = b % QB_HIST_SUB;
	*width = 1ULL << (bit - QB_HIST_SUB_BITS);
	*lo = (1ULL << bit) + sub * *width;
}

void qb_hist_add(struct qb_hist *h, uint64_t ns)
{
	h->count[bucket_of(ns)]++;
}

void qb_hist_merge(struct qb_hist *into, const struct qb_hist *from)
{
	for (unsigned i = 0; i < QB_HIST_BUCKETS; i++)
		into->count[i] += from->count[i];
}

uint64_t qb_hist_total(const struct qb_hist *h)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < QB_HIST_BUCKETS; i++)
		n += h->count[i];
	return n;
}

uint64_t qb_hist_quantile(const struct qb_hist *h, double q)
{
	uint64_t total = qb_hist_total(h);
	if (total == 0)
		return 0;
	/* The smallest value with at least ceil(q * total) samples at or below. */
	uint64_t rank = (uint64_t)(q * (double)total);
	if ((double)rank < q * (double)total)
		rank++;
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < QB_HIST_BUCKETS; i++) {
		seen += h->count[i];
		if (seen >= rank) {
			uint64_t lo, width;
			bucket_range(i, &lo, &width);
			return lo + width / 2;
		}
	}
	return 0;
}

void qb_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("quota-bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* Field @which (1 resident, 2 shared) of /proc/self/statm, in bytes. */
static uint64_t statm(int which)
{
	FILE *f = fopen("/proc/self/statm", "re");
	if (!f)
		return 0;
	unsigned long v[3] = { 0, 0, 0 };
	int n = fscanf(f, "%lu %lu %lu", &v[0], &v[1], &v[2]);
	fclose(f);
	if (n != 3)
		return 0;
	return (uint64_t)v[which] * (uint64_t)sysconf(_SC_PAGESIZE);
}

uint64_t qb_rss_bytes(void)
{
	return statm(1);
}

uint64_t qb_private_rss_bytes(void)
{
	return statm(1) - statm(2);
}
