/* SPDX-License-Identifier: MIT */
/*
 * top-int.h - what the three parts of `quotactl top` share: the model that
 * top-data.c fills from the segment and the control socket and derives
 * rates from, the lines top-view.c lays it out into, and the options.
 */
#ifndef QUOTA_TOOLS_TOP_INT_H
#define QUOTA_TOOLS_TOP_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "quota.h"

#define TOP_HISTORY 64 /* samples at least 1 s apart: per-minute rates */

/* Counters of a quota that only grow while its segment lives. */
struct top_counters {
	uint64_t admitted, input_tokens, output_tokens;
	uint64_t rejected[QUOTA_REJECT_REASONS];
	uint64_t reclaimed;
};

/* What one refresh reads of a quota: filled by top_read_quota() (top-data.c),
 * the one place that calls quota_info(). */
struct top_snapshot {
	char name[QUOTA_NAME_MAX + 1];
	struct {
		uint64_t limit, capacity, available;
		int64_t period_ns;
	} rate[QUOTA_RATE_KINDS];
	uint64_t inflight, max_inflight;
	uint64_t spent_day_nusd, budget_day_nusd, spent_month_nusd, budget_month_nusd;
	int64_t paused_ns;
	bool has_waits; /* the segment records wait times (layout 1 does not) */
	int64_t wait_p50_ns, wait_p99_ns;
	struct top_counters c;
};

/* One quota id: its last snapshot and the rates derived from its history. */
struct top_quota {
	bool present; /* read at the last refresh and not removed */
	struct top_snapshot s;

	/* Derived at each refresh, in each limit's units. */
	double adm_s[QUOTA_RATE_KINDS];   /* per second, over the last refresh */
	double adm_min[QUOTA_RATE_KINDS]; /* per minute, over the last minute */
	double min_span_s;                /* ... or over this many seconds, if < 60 */
	double rej_s[QUOTA_REJECT_REASONS];
	bool have_rates; /* false until two samples exist */
	double use;      /* the most used limit (or in-flight), 0..1 */

	/* History: the previous refresh, and a ring of older samples. */
	int64_t prev_t;
	struct top_counters prev;
	int64_t hist_t[TOP_HISTORY];
	struct top_counters hist[TOP_HISTORY];
	int hist_n, hist_head; /* hist_head: the next slot to write */
};

struct top_client {
	int slot, pid;
	char state[16];
	char comm[24];
	uint64_t held, admitted, rejected;
	double adm_s;
	bool have_rate;
	char quotas[160]; /* names of the quotas it used, comma-separated */
};

struct top_daemon {
	bool reachable;
	char why[200]; /* when not reachable */
	int pid;
	double uptime_s;
	int clients;
	uint64_t reclaimed_slots;
};

enum top_sort { SORT_NAME, SORT_USE, SORT_REFUSED, SORT_ADMITTED, SORT_QUOTA_MODES };
enum top_csort { CSORT_ADMITTED, CSORT_HELD, CSORT_PID, SORT_CLIENT_MODES };

struct top {
	/* options */
	const char *segment;
	char socket_path[108];
	double delay_s;
	bool show_clients;
	enum top_sort sort;
	enum top_csort csort;
	bool color;

	/* model */
	int seg_err;   /* 0, or why the segment could not be read */
	int nquota;    /* quota ids 0 .. nquota-1 */
	struct top_quota *q;
	struct top_daemon d;
	int nclient, client_cap;
	struct top_client *cl;
	int clients_err;
	char clients_why[200];
	bool clients_loaded;
	/* admitted per slot at the previous clients refresh, for rates */
	int prev_cap;
	struct top_prev_client { int pid; uint64_t admitted; int64_t t; } *prev_cl;
	int64_t last_refresh_ns;
};

/* top-data.c */
int top_refresh(struct top *t);          /* segment + quotad status (+ clients if shown) */
void top_refresh_clients(struct top *t); /* the clients pane only */
void top_free(struct top *t);
const char *top_kind_name(int kind);
const char *top_reason_name(int reason);
int64_t top_mono_ns(void);

/* top-view.c: text laid out in lines of one width, each character with a
 * class that the terminal turns into a colour or attribute. */
enum top_class { C_NORMAL, C_HEAD, C_TITLE, C_OK, C_WARN, C_BAD, C_DIM, C_KEY, C_CLASSES };

struct top_lines {
	int width, n, cap;
	char *text;    /* n lines of width bytes (no NUL) */
	uint8_t *cls;  /* the class of each byte */
	int col;       /* where the next text of the current line goes */
};

void top_lines_init(struct top_lines *l, int width);
void top_lines_free(struct top_lines *l);
void top_lines_print(const struct top_lines *l, FILE *f); /* plain text, trailing blanks trimmed */

/* Lay the model out: the header, the quotas and the clients pane. */
void top_view_header(const struct top *t, struct top_lines *out);
void top_view_quotas(const struct top *t, struct top_lines *out);
void top_view_clients(const struct top *t, struct top_lines *out, int max_rows);
void top_view_keys(const struct top *t, struct top_lines *out);

#endif
