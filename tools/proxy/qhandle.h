/* SPDX-License-Identifier: MIT */
/*
 * qhandle.h - quota-proxy's only door to libquota's handle: one handle,
 * used by the process's event loop thread (one client slot), and the
 * sized calls of the v2 ABI (quota_feedback_init(), quota_info()).
 */
#ifndef QUOTA_PROXY_QHANDLE_H
#define QUOTA_PROXY_QHANDLE_H

#include "quota.h"

/* Open the handle on @segment (NULL: $QUOTA_SEGMENT, else "quota"). 0 or a
 * negative errno from quota_open(). */
int qh_init(const char *segment);

/* The handle (NULL with *@err set before qh_init()). */
quota_client *qh_get(int *err);

/* Done with the handle for this request (nothing to do since v2). */
void qh_put(quota_client *c);

/* Close the handle (no request may be using it). */
void qh_close_all(void);

/* quota_feedback_init(@fb). */
void qh_feedback_init(struct quota_feedback *fb);

/* quota_info(@c, @quota, @info). */
int qh_info(quota_client *c, int quota, struct quota_info *info);

#endif
