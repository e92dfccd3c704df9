/* SPDX-License-Identifier: MIT */
/*
 * global.h - global quotas through Redis (global.c): the hold on the local
 * TATs, grants, outage policies; status and metrics.
 */
#ifndef QUOTAD_GLOBAL_H
#define QUOTAD_GLOBAL_H

#include <cjson/cJSON.h>

struct daemon;
struct qd_config;

/* Serve the global quotas of @cfg (at start and after every reload that
 * applied); a limit that stays keeps its ledger. */
int qd_global_apply(struct daemon *d, const struct qd_config *cfg);
struct qs_config;
/* Before global quota id @id's record @next is published (replacing @old,
 * NULL if new): hold its in-flight count so that the workers can hold no
 * more than the slots granted under either record, and block its budgets
 * until quotad meters them. */
void qd_global_guard(struct daemon *d, uint32_t id, const struct qs_config *old, const struct qs_config *next);
/* Every tick: meter and hold, talk to Redis without waiting. */
void qd_global_tick(struct daemon *d);
/* At stop: hold back, give the grants back (bounded wait). */
void qd_global_stop(struct daemon *d);
/* "global" in the status reply. */
void qd_global_status(struct daemon *d, cJSON *root);
/* Prometheus text of the global limits (malloc'ed), NULL if none. */
char *qd_global_metrics(struct daemon *d);

#endif /* QUOTAD_GLOBAL_H */
