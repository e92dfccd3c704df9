/* SPDX-License-Identifier: MIT */
/*
 * testlib.h - helpers shared by the Criterion tests: unique segment names,
 * segments created from JSON and removed at exit (also when a test fails),
 * and a few assertions on errno-style returns.
 */
#ifndef QUOTA_TESTLIB_H
#define QUOTA_TESTLIB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "quota.h"

#define TL_S 1000000000LL
#define TL_MS 1000000LL

/* Fill @buf with a segment name unique to this process and @tag. */
void tl_name(char *buf, size_t len, const char *tag);

/* Create segment @name from @json (fails the test on error); it is removed
 * when the test process exits. */
void tl_create(const char *name, const char *json);

/* Create a manual-clock segment holding one quota named "q" whose body is
 * @quota_json (e.g. "\"rpm\": 60"); returns an open client on it. */
quota_client *tl_manual(const char *tag, const char *quota_json, char *name, size_t len);

/* Remove every segment this process created (idempotent). */
void tl_cleanup(void);

/* The quota entry behind an id, for tests that watch the shared words. */
struct qs_quota *tl_quota(quota_client *c, int id);

/* In a forked child: die with the parent, open segment @name into *@ret and
 * wait for the parent's byte on pipe @go. 0 or a negative errno. */
int tl_child_open(const char *name, int go, quota_client **ret);

/* Yield until @ok(@arg) holds: true, or false after 5 s. */
bool tl_until(bool (*ok)(void *arg), void *arg);

/* tl_until() @w holds @want. */
bool tl_until_word(_Atomic int64_t *w, int64_t want);

/* SIGKILL and reap every child in @pids[0..n-1] that is not 0, and zero
 * it (a test's .fini, so that no child outlives a failed test). */
void tl_kill_children(pid_t *pids, int n);

/* Wait for every child in @pids[0..n-1]; each must exit with status 0. */
void tl_reap(const pid_t *pids, int n);

#endif
