/* SPDX-License-Identifier: MIT */
/*
 * top-data.c - what `quotactl top` shows, and the rates it derives. At each
 * refresh it attaches to the segment read-only (no client slot, like
 * `quotactl status`), snapshots every quota through the public API, and asks
 * quotad over the control socket for its own state and, while the clients
 * pane is shown, the attached processes. Rates are counter differences
 * divided by CLOCK_MONOTONIC time, per second over the last refresh; and
 * per minute over the last minute. Counters that go
 * backwards (a segment created afresh under the same name) or a quota id
 * that changed name restart that quota's history.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "ctlsock.h"
#include "internal.h"
#include "top-int.h"

#define SOCKET_TIMEOUT_MS 500 /* a hung quotad must not freeze the view */
#define MINUTE_NS (60LL * 1000000000LL)

static const char *kind_names[QUOTA_RATE_KINDS] = {
	"rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd",
};
static const char *reason_names[QUOTA_REJECT_REASONS] = {
	"rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd",
	"in-flight", "spend", "too big", "paused",
};

const char *top_kind_name(int kind)
{
	return kind >= 0 && kind < QUOTA_RATE_KINDS ? kind_names[kind] : "?";
}

const char *top_reason_name(int reason)
{
	return reason >= 0 && reason < QUOTA_REJECT_REASONS ? reason_names[reason] : "?";
}

int64_t top_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * The one call of quota_info() in quotactl top: copy what it shows into its
 * own snapshot, so that a change of struct quota_info (a size argument, new
 * fields, larger arrays) is adapted here and nowhere else. Returns 0, 1 for
 * a removed quota, or a negative errno.
 */
static int top_read_quota(quota_client *c, int id, struct top_snapshot *s)
{
	struct quota_info in;
	int r = quota_info(c, id, &in, sizeof(in));
	if (r < 0)
		return r;
	if (in.removed)
		return 1;
	memset(s, 0, sizeof(*s));
	memcpy(s->name, in.name, sizeof(s->name));
	s->name[sizeof(s->name) - 1] = 0;
	for (int k = 0; k < QUOTA_RATE_KINDS; k++) {
		s->rate[k].limit = in.rate[k].limit;
		s->rate[k].capacity = in.rate[k].capacity;
		s->rate[k].available = in.rate[k].available;
		s->rate[k].period_ns = in.rate[k].period_ns;
	}
	s->inflight = in.inflight;
	s->max_inflight = in.max_inflight;
	s->spent_day_nusd = in.spent_day_nusd;
	s->budget_day_nusd = in.budget_day_nusd;
	s->spent_month_nusd = in.spent_month_nusd;
	s->budget_month_nusd = in.budget_month_nusd;
	s->paused_ns = in.paused_ns;
	s->has_waits = false; /* struct quota_info of layout 1 has no wait times */
	s->c.admitted = in.admitted;
	s->c.input_tokens = in.admitted_input_tokens;
	s->c.output_tokens = in.admitted_output_tokens;
	for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
		s->c.rejected[k] = in.rejected[k];
	s->c.reclaimed = in.reclaimed;
	return 0;
}

/* What limit kind @kind counts, from the counters (the library's
 * qc_units_of()). */
static uint64_t units(int kind, const struct top_counters *c)
{
	return qc_units_of((uint32_t)kind, c->admitted, c->input_tokens, c->output_tokens);
}

static bool went_back(const struct top_counters *now, const struct top_counters *then)
{
	if (now->admitted < then->admitted || now->input_tokens < then->input_tokens ||
	    now->output_tokens < then->output_tokens || now->reclaimed < then->reclaimed)
		return true;
	for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
		if (now->rejected[k] < then->rejected[k])
			return true;
	return false;
}

static void forget_history(struct top_quota *q)
{
	q->prev_t = 0;
	q->hist_n = q->hist_head = 0;
	q->have_rates = false;
}

/* Fold the snapshot just read (in q->s) taken at @now into the rates. */
static void derive(struct top_quota *q, int64_t now)
{
	const struct top_counters *c = &q->s.c;
	if (q->prev_t && now > q->prev_t) {
		double dt = (double)(now - q->prev_t) / 1e9;
		for (int k = 0; k < QUOTA_RATE_KINDS; k++)
			q->adm_s[k] = (double)(units(k, c) - units(k, &q->prev)) / dt;
		for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
			q->rej_s[k] = (double)(c->rejected[k] - q->prev.rejected[k]) / dt;
		/* Per minute: the rate since the oldest sample of the last
		 * minute (the ring holds samples at least a second apart) - what
		 * was admitted in the last minute, as a provider counts against
		 * a per-minute limit; while top has watched for less than that,
		 * the rate since its first sample. */
		int64_t t0 = q->prev_t;
		const struct top_counters *c0 = &q->prev;
		for (int i = 0; i < q->hist_n; i++) {
			int j = (q->hist_head - q->hist_n + i + TOP_HISTORY) % TOP_HISTORY;
			if (now - q->hist_t[j] <= MINUTE_NS) {
				if (q->hist_t[j] < t0) {
					t0 = q->hist_t[j];
					c0 = &q->hist[j];
				}
				break;
			}
		}
		q->min_span_s = (double)(now - t0) / 1e9;
		for (int k = 0; k < QUOTA_RATE_KINDS; k++)
			q->adm_min[k] = (double)(units(k, c) - units(k, c0)) / q->min_span_s * 60;
		q->have_rates = true;
	}
	int last = (q->hist_head + TOP_HISTORY - 1) % TOP_HISTORY;
	if (q->hist_n == 0 || now - q->hist_t[last] >= 1000000000LL) {
		q->hist_t[q->hist_head] = now;
		q->hist[q->hist_head] = *c;
		q->hist_head = (q->hist_head + 1) % TOP_HISTORY;
		if (q->hist_n < TOP_HISTORY)
			q->hist_n++;
	}
	q->prev = *c;
	q->prev_t = now;

	q->use = 0;
	for (int k = 0; k < QUOTA_RATE_KINDS; k++) {
		uint64_t cap = q->s.rate[k].capacity, av = q->s.rate[k].available;
		if (q->s.rate[k].limit && cap) {
			double u = (double)(cap - (av < cap ? av : cap)) / (double)cap;
			if (u > q->use)
				q->use = u;
		}
	}
	if (q->s.max_inflight) {
		double u = (double)q->s.inflight / (double)q->s.max_inflight;
		if (u > q->use)
			q->use = u > 1 ? 1 : u;
	}
}

static int read_segment(struct top *t, int64_t now)
{
	quota_client *c;
	int r = qc_open_observer(t->segment, &c); /* read-only: no client slot */
	if (r < 0)
		return r;
	int n = quota_count(c);
	if (n < 0) {
		quota_close(c);
		return n;
	}
	if (n > t->nquota) {
		struct top_quota *nq = realloc(t->q, (size_t)n * sizeof(*nq));
		if (!nq) {
			quota_close(c);
			return -ENOMEM;
		}
		memset(nq + t->nquota, 0, (size_t)(n - t->nquota) * sizeof(*nq));
		t->q = nq;
	}
	for (int id = n; id < t->nquota; id++)
		t->q[id].present = false; /* a smaller segment under the same name */
	t->nquota = n;
	for (int id = 0; id < n; id++) {
		struct top_quota *q = &t->q[id];
		struct top_snapshot s;
		r = top_read_quota(c, id, &s);
		if (r != 0) {
			q->present = false;
			forget_history(q);
			continue;
		}
		if (!q->present || strcmp(q->s.name, s.name) || went_back(&s.c, &q->prev))
			forget_history(q);
		q->s = s;
		q->present = true;
		derive(q, now);
	}
	quota_close(c);
	return 0;
}

static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void read_daemon(struct top *t)
{
	struct top_daemon *d = &t->d;
	memset(d, 0, sizeof(*d));
	if (!t->socket_path[0]) {
		snprintf(d->why, sizeof(d->why), "no control socket (give --socket or set $QUOTA_SOCKET)");
		return;
	}
	cJSON *r;
	if (ctl_request(t->socket_path, "{\"cmd\":\"status\"}", SOCKET_TIMEOUT_MS, &r, d->why,
			sizeof(d->why)) < 0)
		return;
	const cJSON *dj = cJSON_GetObjectItemCaseSensitive(r, "daemon");
	d->reachable = true;
	d->pid = (int)num(dj, "pid");
	d->uptime_s = num(dj, "uptime_s");
	d->clients = (int)num(dj, "clients");
	d->reclaimed_slots = (uint64_t)num(cJSON_GetObjectItemCaseSensitive(dj, "reclaim"), "slots");
	cJSON_Delete(r);
}

static void read_comm(int pid, char *buf, size_t len)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	FILE *f = fopen(path, "re");
	buf[0] = 0;
	if (f) {
		if (fgets(buf, (int)len, f))
			buf[strcspn(buf, "\n")] = 0;
		fclose(f);
	}
	if (!buf[0])
		snprintf(buf, len, "?");
}

/* Remember @cl's admitted count by slot, for the next refresh's rate. */
static void client_rate(struct top *t, struct top_client *cl, int64_t now)
{
	if (cl->slot < 0 || cl->slot >= 65536)
		return;
	if (cl->slot >= t->prev_cap) {
		int cap = cl->slot + 64;
		void *p = realloc(t->prev_cl, (size_t)cap * sizeof(*t->prev_cl));
		if (!p)
			return;
		t->prev_cl = p;
		memset(t->prev_cl + t->prev_cap, 0, (size_t)(cap - t->prev_cap) * sizeof(*t->prev_cl));
		t->prev_cap = cap;
	}
	struct top_prev_client *p = &t->prev_cl[cl->slot];
	if (p->pid == cl->pid && p->t && now > p->t && cl->admitted >= p->admitted) {
		cl->adm_s = (double)(cl->admitted - p->admitted) / ((double)(now - p->t) / 1e9);
		cl->have_rate = true;
	}
	p->pid = cl->pid;
	p->admitted = cl->admitted;
	p->t = now;
}

void top_refresh_clients(struct top *t)
{
	t->nclient = 0;
	t->clients_loaded = true;
	t->clients_err = 0;
	if (!t->socket_path[0]) {
		t->clients_err = -ENOENT;
		snprintf(t->clients_why, sizeof(t->clients_why), "no control socket");
		return;
	}
	cJSON *r;
	t->clients_err = ctl_request(t->socket_path, "{\"cmd\":\"clients\"}", SOCKET_TIMEOUT_MS, &r,
				     t->clients_why, sizeof(t->clients_why));
	if (t->clients_err < 0)
		return;
	int64_t now = top_mono_ns();
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(r, "clients");
	int n = cJSON_GetArraySize(arr);
	if (n > t->client_cap) {
		struct top_client *p = realloc(t->cl, (size_t)n * sizeof(*p));
		if (!p) {
			cJSON_Delete(r);
			t->clients_err = -ENOMEM;
			snprintf(t->clients_why, sizeof(t->clients_why), "out of memory");
			return;
		}
		t->cl = p;
		t->client_cap = n;
	}
	const cJSON *cj;
	cJSON_ArrayForEach(cj, arr) {
		if (t->nclient == n)
			break;
		struct top_client *cl = &t->cl[t->nclient++];
		memset(cl, 0, sizeof(*cl));
		cl->slot = (int)num(cj, "slot");
		cl->pid = (int)num(cj, "pid");
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(cj, "state");
		const char *state = cJSON_IsString(st) ? st->valuestring : "?";
		if (strcmp(state, "reclaiming") == 0)
			state = "reclaim"; /* the pane's column is 7 wide */
		else if (strcmp(state, "claiming") == 0)
			state = "claim";
		snprintf(cl->state, sizeof(cl->state), "%s", state);
		cl->held = (uint64_t)num(cj, "inflight");
		read_comm(cl->pid, cl->comm, sizeof(cl->comm));
		size_t used = 0;
		const cJSON *row;
		cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(cj, "quotas")) {
			cl->admitted += (uint64_t)num(row, "admitted");
			cl->rejected += (uint64_t)num(row, "rejected");
			const cJSON *name = cJSON_GetObjectItemCaseSensitive(row, "quota");
			if (cJSON_IsString(name) && used < sizeof(cl->quotas) - 1) {
				int w = snprintf(cl->quotas + used, sizeof(cl->quotas) - used, "%s%s",
						 used ? "," : "", name->valuestring);
				used = w < 0 ? used : used + (size_t)w;
				if (used >= sizeof(cl->quotas))
					used = sizeof(cl->quotas) - 1;
			}
		}
		client_rate(t, cl, now);
	}
	cJSON_Delete(r);
}

int top_refresh(struct top *t)
{
	int64_t now = top_mono_ns();
	t->seg_err = read_segment(t, now);
	if (t->seg_err < 0)
		for (int id = 0; id < t->nquota; id++)
			t->q[id].present = false;
	read_daemon(t);
	if (t->show_clients)
		top_refresh_clients(t);
	t->last_refresh_ns = now;
	return t->seg_err;
}

void top_free(struct top *t)
{
	free(t->q);
	free(t->cl);
	free(t->prev_cl);
	t->q = NULL;
	t->cl = NULL;
	t->prev_cl = NULL;
	t->nquota = t->nclient = t->client_cap = t->prev_cap = 0;
}
