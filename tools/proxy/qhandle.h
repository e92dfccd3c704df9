/* SPDX-License-Identifier: MIT */
/*
 * qhandle.h - quota-proxy's only door to libquota's handles, and the one
 * place for the calls whose signatures core v2 changes:
 *  - a quota_client is not yet safe to share between threads, so requests
 *    borrow one from a small pool for their whole life (reserve .. commit)
 *    and give it back; with v2's shareable handle qh_get() returns the one
 *    handle and qh_put() does nothing;
 *  - quota_feedback_init() and quota_info() gain a size argument in v2:
 *    qh_feedback_init() and qh_info() are their only callers.
 */
#ifndef QUOTA_PROXY_QHANDLE_H
#define QUOTA_PROXY_QHANDLE_H

#include "quota.h"

/* Open the first handle on @segment (NULL: $QUOTA_SEGMENT, else "quota")
 * and allow up to @max at once. 0 or a negative errno from quota_open(). */
int qh_init(const char *segment, unsigned max);

/* Borrow a handle, waiting while all @max are lent; NULL if opening a new
 * one failed (the reason in *@err). */
quota_client *qh_get(int *err);

/* Give a borrowed handle back. */
void qh_put(quota_client *c);

/* Close every handle (none may be lent). */
void qh_close_all(void);

/* quota_feedback_init(@fb). */
void qh_feedback_init(struct quota_feedback *fb);

/* quota_info(@c, @quota, @info). */
int qh_info(quota_client *c, int quota, struct quota_info *info);

#endif
