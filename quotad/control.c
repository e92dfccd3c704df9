/* SPDX-License-Identifier: MIT */
/*
 * control.c - the control socket: a unix stream socket, one JSON request per
 * line, one JSON reply per line ({"ok": true, ...} or {"ok": false,
 * "error": "..."}), served by the io_uring loop (accept, recv and send are
 * all asynchronous; a client that stalls costs one connection entry, never
 * the loop's time).
 *
 * WHO MAY DO WHAT (SO_PEERCRED, taken at connect): anyone who can connect
 * (the socket is mode 0660) may read - status, clients, metrics; changing
 * something - reload, backoff - needs root or quotad's own uid.
 *
 * LIMITS, each refused with a JSON error: a request line longer than
 * --max-line (the connection is closed after the error), more than
 * --max-connections at once (the connection idle the longest is closed to
 * make room, so that a flood of idle connections cannot lock an operator
 * out), silence longer than --idle-timeout (also for half a line). One
 * request is answered at a time per connection: a client that sends many
 * without reading the replies only fills its own socket buffer.
 *
 * Commands: {"cmd": "status"}, {"cmd": "clients"}, {"cmd": "metrics"} (the
 * reply's "text" is the Prometheus text exposition), {"cmd": "backoff",
 * "quota": NAME, "seconds": S}, {"cmd": "set", "quota": NAME, "key": KEY,
 * "value": V} (one limit changed on top of the config source, until the next
 * reload), {"cmd": "reload"}.
 */
#define _GNU_SOURCE /* struct ucred */
#include <errno.h>
#include <math.h>
#include <time.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gcra.h"
#include "quotad.h"

static const char *kind_names[QUOTA_RATE_KINDS] = {
	"rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd",
};
static const char *reason_names[QUOTA_REJECT_REASONS] = {
	"rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd",
	"inflight", "spend", "too_big", "paused",
};

static struct sockaddr_un listen_addr;
static bool socket_bound;
static dev_t socket_dev;
static ino_t socket_ino;

/* ---- replies -------------------------------------------------------- */

static char *reply_json(cJSON *root)
{
	char *s = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!s)
		return NULL;
	size_t n = strlen(s);
	char *line = realloc(s, n + 2);
	if (!line) {
		free(s);
		return NULL;
	}
	line[n] = '\n';
	line[n + 1] = '\0';
	return line;
}

__attribute__((format(printf, 1, 2)))
static char *reply_error(const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cJSON *root = cJSON_CreateObject();
	cJSON_AddFalseToObject(root, "ok");
	cJSON_AddStringToObject(root, "error", msg);
	return reply_json(root);
}

static double usd(uint64_t nusd)
{
	return (double)nusd / 1e9;
}

static uint32_t live_clients(struct daemon *d)
{
	uint32_t n = 0;
	for (uint32_t s = 0; s < d->g.client_capacity; s++)
		if (QS_CLIENT_STATUS(atomic_load_explicit(&qs_client_at(&d->g, s)->state,
							  memory_order_relaxed)) == QS_CLIENT_LIVE)
			n++;
	return n;
}

static uint32_t active_conns(struct daemon *d)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < d->nconns; i++)
		if (d->conns[i].fd >= 0 && !d->conns[i].closing)
			n++;
	return n;
}

static char *cmd_status(struct daemon *d)
{
	cJSON *root = cJSON_CreateObject();
	cJSON_AddTrueToObject(root, "ok");
	cJSON *dj = cJSON_AddObjectToObject(root, "daemon");
	cJSON_AddNumberToObject(dj, "pid", getpid());
	cJSON_AddStringToObject(dj, "segment", d->segment + 1);
	cJSON_AddStringToObject(dj, "config", d->config_path ? d->config_path : "<embedded default>");
	cJSON_AddBoolToObject(dj, "adopted", d->adopted);
	cJSON_AddNumberToObject(dj, "uptime_s", (double)(qd_mono() - d->started_mono) / 1e9);
	cJSON_AddNumberToObject(dj, "generation",
				(double)atomic_load_explicit(&d->h->generation, memory_order_relaxed));
	cJSON_AddNumberToObject(dj, "clients", live_clients(d));
	cJSON_AddNumberToObject(dj, "client_capacity", d->g.client_capacity);
	cJSON_AddNumberToObject(dj, "quota_capacity", d->g.quota_capacity);
	cJSON_AddNumberToObject(dj, "connections", active_conns(d));
	cJSON *rj = cJSON_AddObjectToObject(dj, "reclaim");
	cJSON_AddNumberToObject(rj, "slots", (double)d->st.reclaimed_slots);
	cJSON_AddNumberToObject(rj, "inflight", (double)d->st.reclaimed_inflight);
	cJSON_AddNumberToObject(rj, "audits", (double)d->st.audits);
	cJSON_AddNumberToObject(rj, "repaired", (double)d->st.repaired);
	cJSON_AddNumberToObject(dj, "segment_damage", (double)d->st.damage);
	cJSON_AddNumberToObject(rj, "anomalies", (double)d->st.anomalies);
	cJSON_AddNumberToObject(rj, "pid_reused", (double)d->st.pid_reused);
	cJSON *cj = cJSON_AddObjectToObject(dj, "control");
	cJSON_AddNumberToObject(cj, "requests", (double)d->st.requests);
	cJSON_AddNumberToObject(cj, "bad_requests", (double)d->st.bad_requests);
	cJSON_AddNumberToObject(cj, "evicted", (double)d->st.conns_evicted);
	cJSON_AddNumberToObject(cj, "refused", (double)d->st.conns_refused);
	cJSON *lj = cJSON_AddObjectToObject(dj, "ledger");
	cJSON_AddNumberToObject(lj, "writes", (double)d->st.ledger_writes);
	cJSON_AddNumberToObject(lj, "errors", (double)d->st.ledger_errors);
	cJSON_AddNumberToObject(dj, "reloads_ok", (double)d->st.reloads_ok);
	cJSON_AddNumberToObject(dj, "reloads_failed", (double)d->st.reloads_failed);
	cJSON *arr = cJSON_AddArrayToObject(root, "quotas");
	int n = quota_count(d->obs);
	for (int id = 0; id < n; id++) {
		struct quota_info in;
		if (quota_info(d->obs, id, &in, sizeof(in)) < 0 || in.removed)
			continue;
		cJSON *q = cJSON_CreateObject();
		cJSON_AddItemToArray(arr, q);
		cJSON_AddStringToObject(q, "name", in.name);
		cJSON_AddNumberToObject(q, "id", id);
		cJSON_AddNumberToObject(q, "inflight", (double)in.inflight);
		cJSON_AddNumberToObject(q, "max_inflight", (double)in.max_inflight);
		cJSON_AddNumberToObject(q, "admitted", (double)in.admitted);
		cJSON_AddNumberToObject(q, "reclaimed", (double)in.reclaimed);
		cJSON_AddNumberToObject(q, "spend_day_usd", usd(in.spent_day_nusd));
		cJSON_AddNumberToObject(q, "spend_month_usd", usd(in.spent_month_nusd));
		cJSON_AddNumberToObject(q, "paused_s", (double)in.paused_ns / 1e9);
	}
	qd_global_status(d, root);
	return reply_json(root);
}

static const char *status_name(uint64_t w)
{
	switch (QS_CLIENT_STATUS(w)) {
	case QS_CLIENT_FREE: return "free";
	case QS_CLIENT_CLAIMING: return "claiming";
	case QS_CLIENT_LIVE: return "live";
	case QS_CLIENT_RECLAIMING: return "reclaiming";
	default: return "corrupt";
	}
}

/* What the last phase flip of quota @id showed for process @pid, @start. */
static uint64_t held_open_of(const struct daemon *d, int32_t pid, uint64_t start, uint32_t id)
{
	const struct qc_held_entry *e = qc_held_find(&d->held, id, pid, start);
	return e ? e->open : 0;
}

static char *cmd_clients(struct daemon *d)
{
	cJSON *root = cJSON_CreateObject();
	cJSON_AddTrueToObject(root, "ok");
	cJSON *arr = cJSON_AddArrayToObject(root, "clients");
	uint32_t count = qs_quota_count(&d->g);
	for (uint32_t s = 0; s < d->g.client_capacity; s++) {
		struct qs_client *cs = qs_client_at(&d->g, s);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_acquire);
		if (QS_CLIENT_STATUS(w) == QS_CLIENT_FREE)
			continue;
		cJSON *cj = cJSON_CreateObject();
		cJSON_AddItemToArray(arr, cj);
		cJSON_AddNumberToObject(cj, "slot", s);
		cJSON_AddNumberToObject(cj, "pid", QS_CLIENT_PID(w));
		cJSON_AddStringToObject(cj, "state", status_name(w));
		cJSON_AddNumberToObject(cj, "generation", (double)QS_CLIENT_GEN(w));
		cJSON_AddNumberToObject(cj, "starttime",
					(double)atomic_load_explicit(&cs->starttime, memory_order_relaxed));
		cJSON_AddBoolToObject(cj, "watched", s < d->nwatch && d->watch[s].pidfd >= 0);
		cJSON *rows = cJSON_AddArrayToObject(cj, "quotas");
		int64_t held_total = 0;
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++) {
			struct qs_row *row = &cs->rows[r];
			uint32_t id1 = atomic_load_explicit(&row->quota1, memory_order_acquire);
			if (id1 == 0 || id1 > count)
				continue;
			uint64_t rej = 0;
			for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
				rej += atomic_load_explicit(&row->rejected[k], memory_order_relaxed);
			int32_t held = atomic_load_explicit(&row->held, memory_order_relaxed);
			held_total += held;
			cJSON *rj = cJSON_CreateObject();
			cJSON_AddItemToArray(rows, rj);
			cJSON_AddStringToObject(rj, "quota", d->pub[id1 - 1].cfg.name);
			cJSON_AddNumberToObject(rj, "inflight", held);
			cJSON_AddNumberToObject(rj, "admitted",
						(double)atomic_load_explicit(&row->admitted, memory_order_relaxed));
			cJSON_AddNumberToObject(rj, "rejected", (double)rej);
			cJSON_AddNumberToObject(rj, "alarm_held",
						atomic_load_explicit(&row->alarm_held, memory_order_relaxed));
			cJSON_AddNumberToObject(rj, "alarm_over_estimate",
						atomic_load_explicit(&row->alarm_over, memory_order_relaxed));
			cJSON_AddNumberToObject(rj, "open",
						atomic_load_explicit(&row->open[0], memory_order_relaxed) +
						atomic_load_explicit(&row->open[1], memory_order_relaxed));
			cJSON_AddNumberToObject(rj, "held_open", (double)held_open_of(d, QS_CLIENT_PID(w),
				atomic_load_explicit(&cs->starttime, memory_order_relaxed), id1 - 1));
		}
		cJSON_AddNumberToObject(cj, "inflight", (double)held_total);
	}
	return reply_json(root);
}

/* ---- metrics: Prometheus text exposition format 0.0.4 --------------- */

struct buf {
	char *p;
	size_t len, cap;
	bool failed;
};

__attribute__((format(printf, 2, 3)))
static void bprintf(struct buf *b, const char *fmt, ...)
{
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = true;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
	bprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Quota names are [A-Za-z0-9._:@/+-]: nothing to escape in a label. */
static void per_limit(struct buf *b, const struct quota_info *in, const bool *ok, int n,
		      const char *name, const char *help, int what)
{
	family(b, name, "gauge", help);
	for (int id = 0; id < n; id++)
		for (int k = 0; ok[id] && k < QUOTA_RATE_KINDS; k++) {
			const struct quota_limit_info *l = &in[id].rate[k];
			if (l->limit)
				bprintf(b, "%s{quota=\"%s\",limit=\"%s\"} %llu\n", name, in[id].name,
					kind_names[k], (unsigned long long)(what == 0 ? l->limit :
									    what == 1 ? l->capacity : l->available));
		}
}

static void per_quota(struct buf *b, const struct quota_info *in, const bool *ok, int n,
		      const char *name, const char *type, const char *help, size_t field)
{
	family(b, name, type, help);
	for (int id = 0; id < n; id++)
		if (ok[id]) {
			uint64_t v;
			memcpy(&v, (const char *)&in[id] + field, sizeof(v));
			bprintf(b, "%s{quota=\"%s\"} %llu\n", name, in[id].name, (unsigned long long)v);
		}
}

/* A learned p50 and p99 per quota (label percentile: "quantile" belongs to
 * summaries): an edge in tokens or, @ratio, in 1/QS_RATIO_ONE (shown as the
 * ratio below which the bucket lies). */
static void per_quantile(struct buf *b, const struct quota_info *in, const bool *ok, int n,
			 const char *name, const char *help, bool ratio)
{
	family(b, name, "gauge", help);
	for (int id = 0; id < n; id++) {
		if (!ok[id])
			continue;
		const uint64_t v[2] = { ratio ? in[id].learned_ratio_p50 : in[id].learned_input_p50,
					ratio ? in[id].learned_ratio_p99 : in[id].learned_input_p99 };
		for (int i = 0; i < 2; i++) {
			if (v[i] == UINT64_MAX)
				bprintf(b, "%s{quota=\"%s\",percentile=\"%s\"} +Inf\n", name, in[id].name,
					i ? "99" : "50");
			else if (ratio)
				bprintf(b, "%s{quota=\"%s\",percentile=\"%s\"} %.6g\n", name, in[id].name,
					i ? "99" : "50", v[i] ? (double)(v[i] + 1) / QS_RATIO_ONE : 0.0);
			else
				bprintf(b, "%s{quota=\"%s\",percentile=\"%s\"} %llu\n", name, in[id].name,
					i ? "99" : "50", (unsigned long long)v[i]);
		}
	}
}

/* metrics, part 1: the daemon's own series. */
static void metrics_daemon(struct daemon *d, struct buf *b)
{
	family(b, "quotad_up", "gauge", "1 while quotad serves the segment.");
	bprintf(b, "quotad_up{segment=\"%s\"} 1\n", d->segment + 1);
	family(b, "quotad_clients", "gauge", "Processes attached to the segment.");
	bprintf(b, "quotad_clients %u\n", live_clients(d));
	family(b, "quotad_client_capacity", "gauge", "Client slots of the segment (fixed at creation).");
	bprintf(b, "quotad_client_capacity %u\n", d->g.client_capacity);
	family(b, "quotad_reclaimed_clients_total", "counter", "Client slots of dead processes reclaimed.");
	bprintf(b, "quotad_reclaimed_clients_total %llu\n", (unsigned long long)d->st.reclaimed_slots);
	family(b, "quotad_audits_total", "counter",
	       "In-flight count audits installed (after a client died mid-update, and periodic).");
	bprintf(b, "quotad_audits_total %llu\n", (unsigned long long)d->st.audits);
	family(b, "quotad_inflight_repaired_total", "counter",
	       "In-flight slots of drift that audits corrected (should stay 0).");
	bprintf(b, "quotad_inflight_repaired_total %llu\n", (unsigned long long)d->st.repaired);
	family(b, "quotad_segment_damage_total", "counter",
	       "Damaged parts of the segment found and repaired (should stay 0).");
	bprintf(b, "quotad_segment_damage_total %llu\n", (unsigned long long)d->st.damage);
	family(b, "quotad_client_notifies_total", "counter",
	       "Client slot claims announced on the notify socket.");
	bprintf(b, "quotad_client_notifies_total %llu\n", (unsigned long long)d->st.notifies);
	family(b, "quotad_reclaim_anomalies_total", "counter",
	       "In-flight give-backs clamped at zero (should stay 0).");
	bprintf(b, "quotad_reclaim_anomalies_total %llu\n", (unsigned long long)d->st.anomalies);
	family(b, "quotad_reloads_total", "counter", "Configuration reloads by result.");
	bprintf(b, "quotad_reloads_total{result=\"ok\"} %llu\nquotad_reloads_total{result=\"failed\"} %llu\n",
		(unsigned long long)d->st.reloads_ok, (unsigned long long)d->st.reloads_failed);

	family(b, "quotad_control_requests_total", "counter", "Control socket requests, by result.");
	bprintf(b, "quotad_control_requests_total{result=\"ok\"} %llu\n"
		"quotad_control_requests_total{result=\"error\"} %llu\n",
		(unsigned long long)(d->st.requests - d->st.bad_requests), (unsigned long long)d->st.bad_requests);
}

/* metrics, part 2: per quota and per limit, from @n snapshots (@ok: shown). */
static void metrics_quotas(struct buf *b, const struct quota_info *in, const bool *ok, int n)
{
	per_limit(b, in, ok, n, "quota_limit", "Configured limit, in units per period.", 0);
	per_limit(b, in, ok, n, "quota_limit_capacity", "Largest cost admissible at once (burst), in units.", 1);
	per_limit(b, in, ok, n, "quota_limit_available", "Cost admissible now without waiting, in units.", 2);
	per_quota(b, in, ok, n, "quota_admitted_total", "counter", "Reservations admitted.",
		  offsetof(struct quota_info, admitted));
	family(b, "quota_admitted_tokens_total", "counter", "Tokens of admitted reservations, as settled.");
	for (int id = 0; id < n; id++)
		if (ok[id])
			bprintf(b, "quota_admitted_tokens_total{quota=\"%s\",direction=\"input\"} %llu\n"
				"quota_admitted_tokens_total{quota=\"%s\",direction=\"output\"} %llu\n",
				in[id].name, (unsigned long long)in[id].admitted_input_tokens, in[id].name,
				(unsigned long long)in[id].admitted_output_tokens);
	family(b, "quota_rejected_total", "counter", "Reservations refused, by the limit or reason.");
	for (int id = 0; id < n; id++)
		for (int k = 0; ok[id] && k < QUOTA_REJECT_REASONS; k++)
			bprintf(b, "quota_rejected_total{quota=\"%s\",reason=\"%s\"} %llu\n", in[id].name,
				reason_names[k], (unsigned long long)in[id].rejected[k]);
	per_quota(b, in, ok, n, "quota_inflight", "gauge", "Requests in flight.",
		  offsetof(struct quota_info, inflight));
	per_quota(b, in, ok, n, "quota_inflight_max", "gauge", "Configured in-flight limit (0: none).",
		  offsetof(struct quota_info, max_inflight));
	per_quota(b, in, ok, n, "quota_reclaimed_total", "counter",
		  "In-flight slots given back for dead clients.", offsetof(struct quota_info, reclaimed));
	per_quota(b, in, ok, n, "quota_inflight_repaired_total", "counter",
		  "In-flight slots of drift corrected by quotad's audits.", offsetof(struct quota_info, repaired));
	per_quota(b, in, ok, n, "quota_learned_output_tokens", "gauge",
		  "Suggested output reservation: p99 of actual output tokens (learn, auto_estimate; 0: not yet).",
		  offsetof(struct quota_info, learned_output));
	per_quota(b, in, ok, n, "quota_alarm_held_total", "counter",
		  "Tickets settled after being held longer than the alarm's time.",
		  offsetof(struct quota_info, alarm_held));
	per_quota(b, in, ok, n, "quota_alarm_over_estimate_total", "counter",
		  "Commits whose output was above the alarm's multiple of the estimate.",
		  offsetof(struct quota_info, alarm_over));
	per_quantile(b, in, ok, n, "quota_learned_input_tokens",
		     "Prompt tokens of commits, p50 and p99 (bucket upper edge; learn; 0: not yet).", false);
	per_quantile(b, in, ok, n, "quota_learned_output_ratio",
		     "Actual / estimated output tokens of commits, p50 and p99 (bucket upper edge; learn; 0: not yet).",
		     true);
	per_quota(b, in, ok, n, "quota_held_open", "gauge",
		  "Tickets open longer than the alarm's held time, as of quotad's last phase flip.",
		  offsetof(struct quota_info, held_open));
	per_quota(b, in, ok, n, "quota_config_generation", "gauge",
		  "Generation of the configuration record in force.", offsetof(struct quota_info, generation));
	family(b, "quota_spend_usd", "gauge", "Spend in the current UTC day or month, in USD.");
	for (int id = 0; id < n; id++)
		if (ok[id])
			bprintf(b, "quota_spend_usd{quota=\"%s\",period=\"day\"} %.9f\n"
				"quota_spend_usd{quota=\"%s\",period=\"month\"} %.9f\n", in[id].name,
				usd(in[id].spent_day_nusd), in[id].name, usd(in[id].spent_month_nusd));
	family(b, "quota_budget_usd", "gauge", "Spend budget per UTC day or month, in USD (0: none).");
	for (int id = 0; id < n; id++)
		if (ok[id])
			bprintf(b, "quota_budget_usd{quota=\"%s\",period=\"day\"} %.9f\n"
				"quota_budget_usd{quota=\"%s\",period=\"month\"} %.9f\n", in[id].name,
				usd(in[id].budget_day_nusd), in[id].name, usd(in[id].budget_month_nusd));
	family(b, "quota_paused_seconds", "gauge", "Time left of a provider backoff.");
	for (int id = 0; id < n; id++)
		if (ok[id])
			bprintf(b, "quota_paused_seconds{quota=\"%s\"} %.3f\n", in[id].name,
				(double)in[id].paused_ns / 1e9);
}

/* metrics, part 3: per live client process with alarms. */

/* A process's command name as a label value, "?" if gone: printable ASCII
 * only (comm is any 15 bytes, and a label must be UTF-8), escaped. */
static void comm_of(int pid, char *out, size_t len)
{
	char path[32], raw[32] = "?";
	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	FILE *f = fopen(path, "re");
	if (f) {
		if (!fgets(raw, sizeof(raw), f))
			strcpy(raw, "?");
		fclose(f);
	}
	raw[strcspn(raw, "\n")] = '\0';
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)raw; *p && o + 3 < len; p++) {
		if (*p == '\\' || *p == '"')
			out[o++] = '\\';
		out[o++] = *p >= 0x20 && *p < 0x7f ? (char)*p : '_';
	}
	out[o] = '\0';
}

/* One process's alarms on one quota (its slots' rows summed). */
struct client_alarms {
	int32_t pid;
	uint64_t start;
	uint32_t quota;
	uint64_t held, over;
};

/* The live processes' alarm counts per quota, non-zero ones only: @*ret
 * (malloc'ed), their number. */
static uint32_t client_alarms(struct daemon *d, struct client_alarms **ret)
{
	uint32_t n = 0, cap = 0, count = qs_quota_count(&d->g);
	struct client_alarms *a = NULL;
	for (uint32_t s = 0; s < d->g.client_capacity; s++) {
		struct qs_client *cs = qs_client_at(&d->g, s);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_acquire);
		if (QS_CLIENT_STATUS(w) != QS_CLIENT_LIVE)
			continue;
		uint64_t start = atomic_load_explicit(&cs->starttime, memory_order_relaxed);
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++) {
			const struct qs_row *row = &cs->rows[r];
			uint32_t id1 = atomic_load_explicit(&row->quota1, memory_order_acquire);
			uint32_t held = atomic_load_explicit(&row->alarm_held, memory_order_relaxed);
			uint32_t over = atomic_load_explicit(&row->alarm_over, memory_order_relaxed);
			if (id1 == 0 || id1 > count || !(held | over))
				continue;
			uint32_t k = 0;
			while (k < n && (a[k].pid != QS_CLIENT_PID(w) || a[k].start != start || a[k].quota != id1 - 1))
				k++;
			if (k == n) {
				if (n == cap) {
					struct client_alarms *m = realloc(a, (cap = cap * 2 + 16) * sizeof(*a));
					if (!m)
						break;
					a = m;
				}
				a[n++] = (struct client_alarms){ QS_CLIENT_PID(w), start, id1 - 1, 0, 0 };
			}
			a[k].held += held;
			a[k].over += over;
		}
	}
	*ret = a;
	return n;
}

/* Does a live slot belong to process @pid started at @start? */
static bool process_live(struct daemon *d, int32_t pid, uint64_t start)
{
	for (uint32_t s = 0; s < d->g.client_capacity; s++) {
		struct qs_client *cs = qs_client_at(&d->g, s);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_acquire);
		if (QS_CLIENT_STATUS(w) == QS_CLIENT_LIVE && QS_CLIENT_PID(w) == pid &&
		    atomic_load_explicit(&cs->starttime, memory_order_relaxed) == start)
			return true;
	}
	return false;
}

static void metrics_clients(struct daemon *d, struct buf *b)
{
	char comm[64];
	struct client_alarms *a;
	uint32_t n = client_alarms(d, &a);
	family(b, "quota_client_alarms_total", "counter",
	       "Alarms of a live client process on a quota (held: settled after the held time; over_estimate).");
	for (uint32_t i = 0; i < n; i++) {
		comm_of(a[i].pid, comm, sizeof(comm));
		const char *q = d->pub[a[i].quota].cfg.name;
		bprintf(b, "quota_client_alarms_total{quota=\"%s\",pid=\"%d\",comm=\"%s\",alarm=\"held\"} %llu\n"
			"quota_client_alarms_total{quota=\"%s\",pid=\"%d\",comm=\"%s\",alarm=\"over_estimate\"} %llu\n",
			q, a[i].pid, comm, (unsigned long long)a[i].held, q, a[i].pid, comm,
			(unsigned long long)a[i].over);
	}
	free(a);
	family(b, "quota_client_held_open", "gauge",
	       "Tickets of a live client process open longer than the quota's held time, as of the last phase flip.");
	for (uint32_t i = 0; i < d->held.n; i++) {
		const struct qc_held_entry *e = &d->held.e[i];
		if (!e->open || e->quota >= qs_quota_count(&d->g) || !process_live(d, e->pid, e->start))
			continue;
		comm_of(e->pid, comm, sizeof(comm));
		bprintf(b, "quota_client_held_open{quota=\"%s\",pid=\"%d\",comm=\"%s\"} %llu\n",
			d->pub[e->quota].cfg.name, e->pid, comm, (unsigned long long)e->open);
	}
}

static char *cmd_metrics(struct daemon *d)
{
	struct buf b = { 0 };
	int n = quota_count(d->obs);
	struct quota_info *in = calloc(n > 0 ? (size_t)n : 1, sizeof(*in));
	bool *ok = calloc(n > 0 ? (size_t)n : 1, sizeof(*ok));
	if (!in || !ok) {
		free(in);
		free(ok);
		return reply_error("out of memory");
	}
	for (int id = 0; id < n; id++)
		ok[id] = quota_info(d->obs, id, &in[id], sizeof(in[id])) == 0 && !in[id].removed;
	metrics_daemon(d, &b);
	metrics_quotas(&b, in, ok, n);
	metrics_clients(d, &b);
	free(in);
	free(ok);
	char *gm = qd_global_metrics(d);
	if (gm)
		bprintf(&b, "%s", gm);
	free(gm);
	if (b.failed) {
		free(b.p);
		return reply_error("out of memory");
	}
	cJSON *root = cJSON_CreateObject();
	cJSON_AddTrueToObject(root, "ok");
	cJSON_AddStringToObject(root, "text", b.p ? b.p : "");
	free(b.p);
	return reply_json(root);
}

static char *cmd_backoff(struct daemon *d, const cJSON *req)
{
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(req, "quota");
	const cJSON *secs = cJSON_GetObjectItemCaseSensitive(req, "seconds");
	if (!cJSON_IsString(name))
		return reply_error("backoff: \"quota\" must be a quota name");
	if (!cJSON_IsNumber(secs) || !(secs->valuedouble > 0) || secs->valuedouble > 86400)
		return reply_error("backoff: \"seconds\" must be a number in (0, 86400]");
	int id = qs_index_find(&d->g, name->valuestring);
	if (id < 0)
		return reply_error("backoff: no quota named \"%.64s\"", name->valuestring);
	struct qs_quota *q = qs_quota_at(&d->g, (uint32_t)id);
	const char *qname = d->pub[id].cfg.name;
	int64_t ns = (int64_t)(secs->valuedouble * 1e9);
	qg_atomic_max(&q->paused_until, qd_now(d) + ns);
	qd_log("info", "backoff: quota %s paused for %.3f s", qname, secs->valuedouble);
	cJSON *root = cJSON_CreateObject();
	cJSON_AddTrueToObject(root, "ok");
	cJSON_AddStringToObject(root, "quota", qname);
	cJSON_AddNumberToObject(root, "paused_s", secs->valuedouble);
	return reply_json(root);
}

static char *cmd_reload(struct daemon *d)
{
	char err[600];
	if (qd_reload(d, err, sizeof(err)) < 0) {
		qd_log("error", "reload refused, the running config stays: %s", err);
		return reply_error("reload refused, the running config stays: %s", err);
	}
	cJSON *root = cJSON_CreateObject();
	cJSON_AddTrueToObject(root, "ok");
	cJSON_AddNumberToObject(root, "generation",
				(double)atomic_load_explicit(&d->h->generation, memory_order_relaxed));
	return reply_json(root);
}

/* Apply one `set` change to a parsed config: 0, or -EINVAL with @err. */
static int apply_override(struct qd_config *cfg, const struct qd_override *ov, char *err, size_t errlen)
{
	static const char *const rate_keys[QUOTA_RATE_KINDS] = {
		"rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd",
	};
	struct qd_quota *q = NULL;
	for (uint32_t i = 0; i < cfg->nquotas; i++)
		if (strcmp(cfg->quotas[i].name, ov->quota) == 0)
			q = &cfg->quotas[i];
	double v = ov->value;
	bool integral = v == floor(v);
	if (!q) {
		snprintf(err, errlen, "no quota named \"%.64s\" in the configuration", ov->quota);
		return -EINVAL;
	}
	for (int k = 0; k < QUOTA_RATE_KINDS; k++) {
		if (strcmp(ov->key, rate_keys[k]) != 0)
			continue;
		struct qs_limit_cfg l;
		int64_t period = (k & 1) ? QC_DAY_NS : QC_MINUTE_NS;
		if (!integral || (v > 0 && qg_limit_init(&l, (uint32_t)k, (uint64_t)v, period, q->burst_ppm) < 0)) {
			snprintf(err, errlen, "%s must be an integer from 0 (none) to %llu", rate_keys[k], 1ULL << 40);
			return -EINVAL;
		}
		q->rate[k] = (uint64_t)v;
		return 0;
	}
	if (strcmp(ov->key, "max_inflight") == 0) {
		if (!integral || v > 1e6) {
			snprintf(err, errlen, "max_inflight must be an integer from 0 (none) to 1000000");
			return -EINVAL;
		}
		q->max_inflight = (uint64_t)v;
	} else if (strcmp(ov->key, "context_window") == 0) {
		if (!integral || v > (double)(1ULL << 40)) {
			snprintf(err, errlen, "context_window must be an integer from 0 (none) to %llu", 1ULL << 40);
			return -EINVAL;
		}
		q->context_window = (uint64_t)v;
	} else if (strcmp(ov->key, "budget_day_usd") == 0 || strcmp(ov->key, "budget_month_usd") == 0) {
		if (v > 4e6) {
			snprintf(err, errlen, "budgets go from 0 (none) to 4000000 USD");
			return -EINVAL;
		}
		*(ov->key[7] == 'd' ? &q->budget_day_nusd : &q->budget_month_nusd) = (uint64_t)llround(v * 1e9);
	} else {
		snprintf(err, errlen, "unknown key \"%.23s\" (rpm rpd tpm tpd itpm itpd otpm otpd max_inflight "
			 "context_window budget_day_usd budget_month_usd)", ov->key);
		return -EINVAL;
	}
	return 0;
}

/* {"cmd": "set", "quota": NAME, "key": KEY, "value": V}: change one limit of
 * the running configuration. The changes made by `set` are kept on top of the
 * config source (file or embedded default) and applied as a reload -
 * validated first, spent budget kept; the next reload returns to what the
 * source says. */
static char *cmd_set(struct daemon *d, const cJSON *req)
{
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(req, "quota");
	const cJSON *key = cJSON_GetObjectItemCaseSensitive(req, "key");
	const cJSON *val = cJSON_GetObjectItemCaseSensitive(req, "value");
	if (!cJSON_IsString(name) || !cJSON_IsString(key) || !cJSON_IsNumber(val))
		return reply_error("set: needs \"quota\" (a name), \"key\" (a limit) and \"value\" (a number)");
	if (!isfinite(val->valuedouble) || val->valuedouble < 0)
		return reply_error("set: \"value\" must be a non-negative number");
	if (strlen(name->valuestring) > QUOTA_NAME_MAX || strlen(key->valuestring) >= sizeof(d->overrides[0].key))
		return reply_error("set: quota name or key too long");
	struct qd_override ov = { .value = val->valuedouble };
	strcpy(ov.quota, name->valuestring);
	strcpy(ov.key, key->valuestring);
	uint32_t slot = d->noverrides;
	for (uint32_t i = 0; i < d->noverrides; i++)
		if (strcmp(d->overrides[i].quota, ov.quota) == 0 && strcmp(d->overrides[i].key, ov.key) == 0)
			slot = i;
	if (slot == QD_OVERRIDES_MAX)
		return reply_error("set: %d changes are pending already: reload first", QD_OVERRIDES_MAX);

	char err[600];
	struct qd_config cfg;
	int r = d->config_path ? qd_config_load(d->config_path, &cfg, err, sizeof(err)) :
				 qd_config_parse(qd_default_config, strlen(qd_default_config),
						 "<embedded default>", &cfg, err, sizeof(err));
	if (r < 0)
		return reply_error("set refused: the configuration source does not load: %s", err);
	for (uint32_t i = 0; i < d->noverrides && r == 0; i++)
		if (i != slot)
			r = apply_override(&cfg, &d->overrides[i], err, sizeof(err));
	if (r == 0)
		r = apply_override(&cfg, &ov, err, sizeof(err));
	char *reply;
	if (r < 0) {
		reply = reply_error("set: %s", err);
	} else if (qd_reload_apply(d, &cfg, err, sizeof(err)) < 0) {
		d->st.reloads_failed++;
		reply = reply_error("set refused, the running config stays: %s", err);
	} else {
		d->st.reloads_ok++;
		d->overrides[slot] = ov;
		if (slot == d->noverrides)
			d->noverrides++;
		qd_log("info", "set: quota %s %s = %g (until the next reload)", ov.quota, ov.key, ov.value);
		cJSON *root = cJSON_CreateObject();
		cJSON_AddTrueToObject(root, "ok");
		cJSON_AddStringToObject(root, "quota", ov.quota);
		cJSON_AddStringToObject(root, "key", ov.key);
		cJSON_AddNumberToObject(root, "value", ov.value);
		reply = reply_json(root);
	}
	qd_config_free(&cfg);
	return reply;
}

char *qd_control_handle(struct daemon *d, const char *line, size_t len, bool privileged)
{
	d->st.requests++;
	const char *end = NULL;
	cJSON *req = cJSON_ParseWithLengthOpts(line, len, &end, false);
	if (!req || !cJSON_IsObject(req)) {
		cJSON_Delete(req);
		d->st.bad_requests++;
		return reply_error("malformed request: expected a JSON object such as {\"cmd\": \"status\"}");
	}
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(req, "cmd");
	char *reply;
	if (!cJSON_IsString(cmd)) {
		reply = reply_error("malformed request: \"cmd\" must be a string");
	} else if (strcmp(cmd->valuestring, "status") == 0) {
		reply = cmd_status(d);
	} else if (strcmp(cmd->valuestring, "clients") == 0) {
		reply = cmd_clients(d);
	} else if (strcmp(cmd->valuestring, "metrics") == 0) {
		reply = cmd_metrics(d);
	} else if (strcmp(cmd->valuestring, "backoff") == 0 || strcmp(cmd->valuestring, "reload") == 0 ||
		   strcmp(cmd->valuestring, "set") == 0) {
		if (!privileged)
			reply = reply_error("permission denied: %s needs root or uid %u", cmd->valuestring,
					    (unsigned)geteuid());
		else if (cmd->valuestring[0] == 'b')
			reply = cmd_backoff(d, req);
		else if (cmd->valuestring[0] == 's')
			reply = cmd_set(d, req);
		else
			reply = cmd_reload(d);
	} else {
		reply = reply_error("unknown command \"%.32s\" (status, clients, metrics, backoff, set, reload)",
				    cmd->valuestring);
	}
	if (reply && strncmp(reply, "{\"ok\":false", 11) == 0)
		d->st.bad_requests++;
	cJSON_Delete(req);
	return reply;
}

/* ---- connections ---------------------------------------------------- */

static void arm_accept(struct daemon *d)
{
	struct io_uring_sqe *sqe = qd_sqe(d);
	io_uring_prep_accept(sqe, d->lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_ACCEPT, 0, 0));
	d->accept_armed = true;
}

/* Best effort, never blocking: for refusals outside the reply flow. */
static void send_now(int fd, const char *msg)
{
	char *r = reply_error("%s", msg);
	if (r) {
		ssize_t n = send(fd, r, strlen(r), MSG_DONTWAIT | MSG_NOSIGNAL);
		(void)n;
		free(r);
	}
}

static void conn_release(struct qd_conn *c)
{
	if (c->recv_armed || c->send_armed)
		return; /* their completions come back after the shutdown */
	close(c->fd);
	c->fd = -1;
	c->gen++;
	c->closing = false;
	free(c->in);
	free(c->out);
	c->in = c->out = NULL;
	c->inlen = c->outlen = c->outoff = 0;
}

static void conn_close(struct qd_conn *c)
{
	if (!c->closing) {
		c->closing = true;
		shutdown(c->fd, SHUT_RDWR);
	}
	conn_release(c);
}

static void arm_recv(struct daemon *d, uint32_t i)
{
	struct qd_conn *c = &d->conns[i];
	struct io_uring_sqe *sqe = qd_sqe(d);
	io_uring_prep_recv(sqe, c->fd, c->in + c->inlen, d->max_line + 1 - c->inlen, 0);
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_RECV, i, c->gen));
	c->recv_armed = true;
}

static void arm_send(struct daemon *d, uint32_t i)
{
	struct qd_conn *c = &d->conns[i];
	struct io_uring_sqe *sqe = qd_sqe(d);
	io_uring_prep_send(sqe, c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_SEND, i, c->gen));
	c->send_armed = true;
}

static void queue_reply(struct daemon *d, uint32_t i, char *reply)
{
	struct qd_conn *c = &d->conns[i];
	if (!reply) {
		conn_close(c);
		return;
	}
	c->out = reply;
	c->outlen = strlen(reply);
	c->outoff = 0;
	arm_send(d, i);
}

/* Answer the next complete line, or wait for more. One reply at a time. */
static void serve(struct daemon *d, uint32_t i)
{
	struct qd_conn *c = &d->conns[i];
	if (c->closing || c->send_armed)
		return;
	char *nl = memchr(c->in, '\n', c->inlen);
	if (nl) {
		size_t len = (size_t)(nl - c->in);
		char *reply = qd_control_handle(d, c->in, len, c->privileged);
		memmove(c->in, nl + 1, c->inlen - len - 1);
		c->inlen -= len + 1;
		queue_reply(d, i, reply);
		return;
	}
	if (c->inlen > d->max_line) {
		d->st.requests++;
		d->st.bad_requests++;
		c->close_after_send = true;
		queue_reply(d, i, reply_error("request line longer than %u bytes: closing", d->max_line));
		return;
	}
	if (!c->recv_armed)
		arm_recv(d, i);
}

static void on_accept(struct daemon *d, int res)
{
	d->accept_armed = false;
	if (d->lfd < 0) {
		if (res >= 0)
			close(res);
		return;
	}
	if (res < 0) {
		if (res == -EAGAIN || res == -EINTR || res == -ECONNABORTED) {
			arm_accept(d);
		} else {
			/* Out of fds or memory: try again on the next tick rather
			 * than spin on an accept that fails at once. */
			qd_log("warning", "control socket accept: %s", strerror(-res));
		}
		return;
	}
	arm_accept(d);
	int fd = res;
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
		close(fd);
		return;
	}
	if (active_conns(d) >= d->max_conns) {
		/* Make room: close the connection silent the longest. */
		struct qd_conn *old = NULL;
		for (uint32_t i = 0; i < d->nconns; i++) {
			struct qd_conn *c = &d->conns[i];
			if (c->fd >= 0 && !c->closing && !c->send_armed &&
			    (!old || c->last_active < old->last_active))
				old = c;
		}
		if (old) {
			send_now(old->fd, "too many control connections: closing the one idle the longest");
			conn_close(old);
			d->st.conns_evicted++;
		}
	}
	uint32_t i;
	for (i = 0; i < d->nconns && d->conns[i].fd >= 0; i++)
		;
	if (i == d->nconns || active_conns(d) >= d->max_conns) {
		send_now(fd, "too many control connections: try again later");
		close(fd);
		d->st.conns_refused++;
		return;
	}
	struct qd_conn *c = &d->conns[i];
	c->in = malloc(d->max_line + 1);
	if (!c->in) {
		close(fd);
		return;
	}
	c->fd = fd;
	c->uid = cred.uid;
	c->pid = cred.pid;
	c->privileged = cred.uid == 0 || cred.uid == geteuid();
	c->recv_armed = c->send_armed = c->closing = c->close_after_send = false;
	c->inlen = 0;
	c->last_active = qd_mono();
	arm_recv(d, i);
}

void qd_control_event(struct daemon *d, uint64_t ud, int res)
{
	if (QD_UD_EV(ud) == QD_EV_ACCEPT) {
		on_accept(d, res);
		return;
	}
	uint32_t i = QD_UD_HI(ud);
	if (i >= d->nconns)
		return;
	struct qd_conn *c = &d->conns[i];
	if (c->fd < 0 || c->gen != QD_UD_LO(ud))
		return;
	if (QD_UD_EV(ud) == QD_EV_RECV) {
		c->recv_armed = false;
		if (c->closing || res <= 0) {
			conn_close(c); /* peer gone, error, or our shutdown */
			return;
		}
		c->inlen += (size_t)res;
		c->last_active = qd_mono();
		serve(d, i);
		return;
	}
	c->send_armed = false;
	if (c->closing || res < 0) {
		conn_close(c);
		return;
	}
	c->outoff += (size_t)res;
	c->last_active = qd_mono();
	if (c->outoff < c->outlen) {
		arm_send(d, i);
		return;
	}
	free(c->out);
	c->out = NULL;
	if (c->close_after_send) {
		conn_close(c);
		return;
	}
	serve(d, i);
}

void qd_control_tick(struct daemon *d)
{
	int64_t now = qd_mono();
	if (d->lfd >= 0 && !d->accept_armed)
		arm_accept(d);
	for (uint32_t i = 0; i < d->nconns; i++) {
		struct qd_conn *c = &d->conns[i];
		if (c->fd < 0 || c->closing || now - c->last_active <= d->idle_ns)
			continue;
		if (!c->send_armed)
			send_now(c->fd, c->inlen ? "incomplete request line and idle too long: closing" :
						   "idle too long: closing");
		conn_close(c);
	}
}

/* Is something listening on @path? */
static bool socket_in_use(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return false;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, path);
	int r = connect(fd, (struct sockaddr *)&a, sizeof(a));
	bool used = r == 0 || errno == EAGAIN || errno == EINPROGRESS;
	close(fd);
	return used;
}

/* A quotad killed with SIGKILL leaves its listening socket open for a moment
 * after it is reaped: the kernel tears its io_uring (which holds the socket
 * for a pending accept) down asynchronously. Ask again for up to a second
 * before calling the socket taken. */
static bool socket_in_use_for_good(const char *path)
{
	for (int i = 0; i < 50; i++) {
		if (!socket_in_use(path))
			return false;
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return true;
}

int qd_control_open(struct daemon *d)
{
	d->nconns = 2 * d->max_conns;
	d->conns = calloc(d->nconns, sizeof(*d->conns));
	if (!d->conns) {
		qd_log("error", "out of memory");
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < d->nconns; i++)
		d->conns[i].fd = -1;
	if (!d->socket_path[0]) {
		qd_log("warning", "no control socket: give --socket PATH or set $QUOTA_SOCKET or $XDG_RUNTIME_DIR");
		return 0;
	}
	const char *path = d->socket_path;
	const char *why = NULL;
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			why = "exists and is not a socket";
		else if (socket_in_use_for_good(path))
			why = "is in use by another process";
		else
			unlink(path); /* left behind by a quotad that died */
	}
	int fd = -1;
	if (!why) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		listen_addr = (struct sockaddr_un){ .sun_family = AF_UNIX };
		strcpy(listen_addr.sun_path, path);
		/* Born 0660: no window in which others could connect. */
		mode_t old = umask(0117);
		int r = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&listen_addr, sizeof(listen_addr));
		umask(old);
		if (r < 0 || chmod(path, 0660) < 0 || listen(fd, 128) < 0)
			why = strerror(errno);
	}
	if (why) {
		if (fd >= 0)
			close(fd);
		if (d->socket_explicit) {
			qd_log("error", "control socket %s: %s", path, why);
			return -EADDRINUSE;
		}
		qd_log("warning", "control socket %s: %s; serving without a control socket", path, why);
		d->socket_path[0] = '\0';
		return 0;
	}
	struct stat mine;
	if (lstat(path, &mine) == 0) {
		socket_bound = true;
		socket_dev = mine.st_dev;
		socket_ino = mine.st_ino;
	}
	d->lfd = fd;
	arm_accept(d);
	return 0;
}

void qd_control_close(struct daemon *d)
{
	for (uint32_t i = 0; i < d->nconns; i++) {
		struct qd_conn *c = &d->conns[i];
		if (c->fd >= 0) {
			close(c->fd);
			free(c->in);
			free(c->out);
		}
	}
	free(d->conns);
	d->conns = NULL;
	d->nconns = 0;
	if (d->lfd >= 0) {
		close(d->lfd);
		d->lfd = -1;
	}
	if (socket_bound) {
		/* Only if it is still ours (not replaced by another daemon's). */
		struct stat st;
		if (lstat(d->socket_path, &st) == 0 && st.st_dev == socket_dev && st.st_ino == socket_ino)
			unlink(d->socket_path);
		socket_bound = false;
	}
}
