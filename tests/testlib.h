/* SPDX-License-Identifier: MIT */
/*
 * testlib.h - helpers shared by the Criterion tests: unique segment names,
 * segments created from JSON and removed at exit (also when a test fails),
 * and a few assertions on errno-style returns.
 */
#ifndef QUOTA_TESTLIB_H
#define QUOTA_TESTLIB_H

#include <stddef.h>
#include <stdint.h>

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

#endif
