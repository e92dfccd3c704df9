/* SPDX-License-Identifier: MIT */
/*
 * v2lib.h - small helpers shared by the core v2 tests (issue 8): the
 * monotonic clock, a seeded generator, order statistics of timings, the
 * scheduler's run-queue delay (so that a test can tell a call that hung from
 * one whose process was merely waiting for a CPU), and quotad's metrics.
 */
#ifndef QUOTA_V2LIB_H
#define QUOTA_V2LIB_H

#include <stddef.h>
#include <stdint.h>

#define V2_S 1000000000LL
#define V2_MS 1000000LL
#define V2_US 1000LL

/* CLOCK_MONOTONIC in ns. */
int64_t v2_now(void);

/* xorshift64*: deterministic for a seed (never 0). */
uint64_t v2_rand(uint64_t *state);

/* Sort @ns[0..n-1] and print "what: n=.. median .. p95 .. max .. ms". */
void v2_print_timings(const char *what, int64_t *ns, size_t n);

/* Nanoseconds the calling thread has spent runnable but waiting for a CPU
 * (/proc/thread-self/schedstat), or -1 if the kernel does not tell. */
int64_t v2_runq_ns(void);

/* The value of metric @name (a line "NAME VALUE" of the Prometheus text of
 * `{"cmd": "metrics"}`) from quotad's control socket @sock, or -1. */
double v2_metric(const char *sock, const char *name);

/* An integer from the environment, or @def. */
long v2_env_long(const char *name, long def);

/* Busy-wait @ns (a random instant for a signal, not a synchronisation). */
void v2_spin(int64_t ns);

#endif
