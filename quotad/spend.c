/* SPDX-License-Identifier: MIT */
/*
 * spend.c - a global budget_usd: the host's side of the final nano-USD
 * grants Redis gives out of a UTC day's or month's budget (grant.lua,
 * spend()). The spend word is a meter that quotad holds at what the host
 * may spend before its next tick (struct qg_spend, global_int.h; the bound
 * in docs/ARCHITECTURE.md, "Global spend budgets").
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "global_int.h"

/* The host's current period of spend limit @g (what its workers use). */
static uint32_t spend_period(struct daemon *d, const struct qg_limit *g)
{
	uint32_t day, month;
	int64_t off = atomic_load_explicit(&d->h->realtime_offset_ns, memory_order_relaxed);
	qc_periods_of(qd_now(d) + off, &day, &month);
	return g->kind == QG_USD_MONTH ? month : day;
}

/* What the host may spend beyond what it spent: its credit, or in a
 * static_share outage at least its live share of the period's budget less
 * what it spent in the period. */
static int64_t spend_allowance(const struct qg_limit *g)
{
	const struct qg_spend *sp = &g->sp;
	int64_t a = sp->credit;
	if (g->outage && g->policy == QD_OUTAGE_STATIC_SHARE) {
		uint64_t n = g->live_hosts > 0 ? (uint64_t)g->live_hosts : g->expected_hosts;
		int64_t share = (int64_t)(sp->budget / (n ? n : 1)) - (int64_t)sp->spent;
		a = share > a ? share : a;
	}
	return a;
}

/* Meter the spend word, then leave X = min(allowance, B_s) spendable. */
void qg_spend_hold(struct daemon *d, struct qg_limit *g)
{
	struct qg_spend *sp = &g->sp;
	struct qs_quota *q = qs_quota_at(&d->g, g->id);
	_Atomic uint64_t *w = g->kind == QG_USD_MONTH ? &q->spend_month : &q->spend_day;
	uint32_t p = spend_period(d, g);
	uint64_t cur = atomic_load_explicit(w, memory_order_relaxed);
	if (!sp->primed || p != sp->period) {
		/* A new period: the old one's credit is over (Redis counted it
		 * given); what the word holds of the new one was spent in it. */
		sp->left_amount = sp->primed ? 0 : qs_spend_in(cur, p);
		sp->period = p;
		sp->credit = 0;
		sp->spent = 0;
		sp->primed = true;
	}
	for (;;) {
		uint64_t amt = qs_spend_in(cur, p);
		int64_t moved = (int64_t)amt - (int64_t)sp->left_amount;
		sp->credit -= moved;
		sp->spent += moved > 0 ? (uint64_t)moved : 0;
		sp->tick_moved += moved;
		sp->left_amount = amt;
		int64_t a = spend_allowance(g);
		uint64_t x = a <= 0 ? 0 : (uint64_t)a > sp->share ? sp->share : (uint64_t)a;
		uint64_t next = qs_spend_pack(p, sp->share - x);
		if (next == cur || atomic_compare_exchange_strong_explicit(w, &cur, next, memory_order_relaxed,
									     memory_order_relaxed)) {
			sp->left_amount = sp->share - x;
			return;
		}
	}
}

/* The credit a spend limit asks to hold: about a minute of its spending,
 * at least the local cap B_l (so that any request the record admits can
 * fit), at most the static share B/N = 4 B_l (a dead host strands no more). */
static double spend_target(const struct qg_limit *g)
{
	double lo = (double)g->sp.share, hi = 4.0 * (double)g->sp.share;
	return fmin(hi, fmax(lo, g->rate * 60.0));
}

/* A spend limit's call: its period, what it wants (spend_target() less its
 * credit), its debt, and at stop what it gives back. */
void qg_call_spend(struct daemon *d, uint32_t i, int64_t now)
{
	struct qd_global *G = d->glob;
	struct qg_limit *g = &G->lim[i];
	struct qg_spend *sp = &g->sp;
	if (!qg_can_call(G))
		return;
	double target = spend_target(g);
	int64_t want = (int64_t)target > sp->credit ? (int64_t)target - sp->credit : 0;
	sp->sent_debt = sp->credit < 0 ? -sp->credit : 0;
	sp->sent_back = 0;
	if (G->stopping) {
		want = 0;
		sp->sent_back = sp->credit > 0 ? sp->credit : 0;
	}
	sp->sent_period = sp->period;
	char a[7][48];
	snprintf(a[0], sizeof(a[0]), "%llu", (unsigned long long)sp->budget);
	snprintf(a[1], sizeof(a[1]), "%d", g->kind == QG_USD_MONTH);
	snprintf(a[2], sizeof(a[2]), "%u", sp->period);
	snprintf(a[3], sizeof(a[3]), "%lld", (long long)want);
	snprintf(a[4], sizeof(a[4]), "%lld", (long long)sp->sent_debt);
	snprintf(a[5], sizeof(a[5]), "%lld", (long long)sp->sent_back);
	snprintf(a[6], sizeof(a[6]), "%lld", (long long)(QG_LEASE_NS / 1000));
	qg_send_call(d, i, now, "quotad_spend", 7, a);
}

/* A confirmed answer of a spend limit: v = {granted, live hosts, left,
 * given, Redis' period, reaped}. A grant or debt for a period that is no
 * longer the host's is not credited (Redis counted it: conservative). */
void qg_apply_spend(struct qg_limit *g, const long long *v)
{
	qg_answered(g, v);
	struct qg_spend *sp = &g->sp;
	sp->given = v[3];
	sp->left = v[2];
	sp->redis_period = v[4];
	if (sp->sent_period != sp->period)
		return;
	/* Debt now counted in Redis, what was given back no longer ours. */
	sp->credit += sp->sent_debt - sp->sent_back;
	if (v[4] == (long long)sp->period && v[0] > 0) {
		sp->credit += v[0];
		g->granted_total += (uint64_t)v[0];
	}
	sp->sent_debt = sp->sent_back = 0;
}

/* A spend limit's tick: meter and hold the word; ask when the credit runs
 * below half of what it would ask for, at least every refresh. Grants are
 * final, so an outage drops nothing: fail_closed spends what it holds. */
void qg_tick_spend(struct daemon *d, struct qg_limit *g, uint32_t i, int64_t now)
{
	struct qd_global *G = d->glob;
	struct qg_spend *sp = &g->sp;
	int64_t dt = g->last_tick ? now - g->last_tick : 0;
	g->last_tick = now;
	(void)qg_outage_begins(g, now);
	qg_spend_hold(d, g);
	if (dt > 0) {
		double inst = (double)(sp->tick_moved > 0 ? sp->tick_moved : 0) * 1e9 / (double)dt;
		double a = (double)dt / 0.25e9 > 1.0 ? 1.0 : (double)dt / 0.25e9;
		g->rate += a * (inst - g->rate);
		sp->tick_moved = 0;
	}
	if (!G->c || g->pending)
		return;
	double target = spend_target(g);
	bool low = (double)sp->credit < target / 2 && sp->left != 0 && now - g->last_call >= QG_REFRESH_NS / 10;
	if (low || now - g->last_call >= QG_REFRESH_NS || g->outage)
		qg_call_spend(d, i, now);
}

/* The spend limit @kind of global quota @qc (id @id) into @g; the same
 * limit before a reload keeps its ledger. */
void qg_spend_limit(struct qg_limit *g, const struct qd_quota *qc, uint32_t id, uint32_t kind,
			struct qd_global *old, int64_t now)
{
	snprintf(g->quota, sizeof(g->quota), "%s", qc->name);
	g->id = id;
	g->kind = kind;
	g->policy = qc->outage;
	g->expected_hosts = qc->expected_hosts;
	snprintf(g->key, sizeof(g->key), "quotad:{%s}:%s", qc->global_key, qg_kind_name(kind));
	g->sp.budget = kind == QG_USD_DAY ? qc->budget_day_nusd : qc->budget_month_nusd;
	g->sp.share = qd_local_budget(qc, g->sp.budget);
	g->limit = g->sp.budget;
	g->last_ok = now;
	g->last_call = now - QG_REFRESH_NS;
	struct qg_limit *o = qg_find_limit(old, id, kind);
	if (o && strcmp(o->key, g->key) == 0 && o->sp.budget == g->sp.budget && o->sp.share == g->sp.share) {
		*g = *o;
		g->policy = qc->outage;
		g->pending = false;
	}
}

/* A spend limit's fields in the status reply (USD). */
void qg_spend_status(const struct qg_limit *g, cJSON *o)
{
	const struct qg_spend *sp = &g->sp;
	cJSON_AddNumberToObject(o, "local_cap_usd", (double)sp->share / 1e9);
	cJSON_AddNumberToObject(o, "period", (double)sp->period);
	cJSON_AddNumberToObject(o, "redis_period", (double)sp->redis_period);
	cJSON_AddNumberToObject(o, "held_usd", (double)(sp->credit > 0 ? sp->credit : 0) / 1e9);
	cJSON_AddNumberToObject(o, "debt_usd", (double)(sp->credit < 0 ? -sp->credit : 0) / 1e9);
	cJSON_AddNumberToObject(o, "spent_usd", (double)sp->spent / 1e9);
	cJSON_AddNumberToObject(o, "granted_total_usd", (double)g->granted_total / 1e9);
	cJSON_AddNumberToObject(o, "given_usd", (double)sp->given / 1e9);
	cJSON_AddNumberToObject(o, "left_usd", (double)sp->left / 1e9);
}
