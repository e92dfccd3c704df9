/* SPDX-License-Identifier: MIT */
/*
 * slots.c - a global max_inflight: the host's side of the slots Redis
 * leases (grant.lua, slots()). quotad holds the workers to the slots
 * granted through its hold on the in-flight count, returns idle ones and
 * stops admitting half a lease after Redis last answered (struct qg_slots,
 * global_int.h; the bound in docs/ARCHITECTURE.md, Theorem S).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "global_int.h"

/* The workers' cap on slot limit @g: quotad holds max - cap of the count;
 * and their lease: no admission from sl.until on (reserve.c). */
void qg_slots_hold(struct daemon *d, struct qg_limit *g)
{
	struct qs_quota *q = qs_quota_at(&d->g, g->id);
	if (atomic_load_explicit(&q->inflight_until, memory_order_relaxed) != g->sl.until)
		atomic_store_explicit(&q->inflight_until, g->sl.until, memory_order_relaxed);
	uint64_t hold = g->sl.max - g->sl.cap;
	if (atomic_load_explicit(&q->inflight_hold, memory_order_relaxed) != hold) {
		g->sl.in_use = qc_inflight_hold_set(q, hold);
	} else {
		uint32_t cnt = QS_INFLIGHT_COUNT(atomic_load_explicit(&q->inflight, memory_order_relaxed));
		g->sl.in_use = cnt > hold ? cnt - hold : 0;
	}
	if (g->sl.in_use > g->sl.peak)
		g->sl.peak = g->sl.in_use;
}

/* A slot limit's call: idle slots beyond the demand are returned first (cap
 * lowered), then held = max(cap, in use) is reported with what it wants. */
void qg_call_slots(struct daemon *d, uint32_t i, int64_t now)
{
	struct qd_global *G = d->glob;
	struct qg_limit *g = &G->lim[i];
	struct qg_slots *sl = &g->sl;
	if (!qg_can_call(G))
		return;
	/* Demand: the peak since the last call, with a quarter and a slot of
	 * room; a host whose workers fill its cap cannot show its demand and
	 * claims all of M (water-filling splits it, as for rates); one with
	 * none asks for one. */
	struct qs_quota *q = qs_quota_at(&d->g, g->id);
	bool starved = (sl->cap && sl->peak >= sl->cap) ||
		       atomic_load_explicit(&q->inflight_waiters, memory_order_relaxed) > 0;
	uint64_t demand = starved ? sl->max : sl->peak + sl->peak / 4 + 1;
	if (demand > sl->max)
		demand = sl->max;
	if (G->stopping || sl->expired)
		demand = 0;
	if (sl->cap > demand && !starved) {
		sl->cap = demand > sl->in_use ? demand : sl->in_use;
		qg_slots_hold(d, g);
	}
	uint64_t held = sl->cap > sl->in_use ? sl->cap : sl->in_use;
	uint64_t want = demand > held ? demand - held : 0;
	sl->sent_held = held;
	sl->peak = sl->in_use;
	char a[6][48];
	snprintf(a[0], sizeof(a[0]), "%llu", (unsigned long long)sl->max);
	snprintf(a[1], sizeof(a[1]), "%llu", (unsigned long long)(sl->lease_ns / 1000));
	snprintf(a[2], sizeof(a[2]), "%llu", (unsigned long long)held);
	snprintf(a[3], sizeof(a[3]), "%llu", (unsigned long long)want);
	snprintf(a[4], sizeof(a[4]), "%llu", (unsigned long long)demand);
	/* Ends an empty Redis' grace once this many hosts have reported. */
	snprintf(a[5], sizeof(a[5]), "%u", g->expected_hosts);
	qg_send_call(d, i, now, "quotad_slots", 6, a);
}

/* A confirmed answer of a slot limit: v = {granted, live hosts, free,
 * held + granted (Redis' o), fair cap, reaped, grace ms}. The workers' cap
 * moves (at the next tick's hold) to what Redis counts, or to the fair cap
 * if that is lower: even below the slots in use, which then stay reported
 * until they end, and the host admits no new request until its workers hold
 * fewer than the fair cap (ARCHITECTURE, the fair split). */
void qg_apply_slots(struct qg_limit *g, const long long *v)
{
	qg_answered(g, v);
	struct qg_slots *sl = &g->sl;
	uint64_t granted = v[0] > 0 ? (uint64_t)v[0] : 0;
	if (sl->expired)
		qd_log("info", "global %s inflight: slots granted again", g->quota);
	sl->expired = false;
	/* The lease runs from when the call was sent (qg_answered()). */
	sl->until = g->last_ok + (int64_t)(sl->lease_ns / 2);
	sl->granted = sl->sent_held + granted;
	uint64_t fair = v[4] > 0 ? (uint64_t)v[4] : 0;
	sl->cap = sl->granted < fair ? sl->granted : fair;
	sl->free = v[2] > 0 ? (uint64_t)v[2] : 0;
	sl->grace_ms = v[6];
	g->granted_total += granted;
}

/* A slot limit's tick: hold the workers to cap; without an answer for half
 * the lease, cap 0; ask when the workers near the cap, report when a host
 * above its fair cap has fewer in use than Redis counts, at least every
 * refresh. */
void qg_tick_slots(struct daemon *d, struct qg_limit *g, uint32_t i, int64_t now)
{
	struct qd_global *G = d->glob;
	struct qg_slots *sl = &g->sl;
	g->last_tick = now;
	(void)qg_outage_begins(g, now);
	if (!sl->expired && now - g->last_ok > (int64_t)(sl->lease_ns / 2)) {
		sl->expired = true;
		sl->cap = 0;
		sl->granted = 0; /* no longer ours to use: Redis may reap them */
		qd_log("warning", "global %s inflight: no answer from Redis for half the lease (%.0f s): "
		       "no new request admitted until it answers", g->quota, (double)sl->lease_ns / 2e9);
	}
	qg_slots_hold(d, g);
	if (!G->c || g->pending)
		return;
	/* Near the cap: ask early (no more often than every 50 ms) if Redis
	 * last said there was more to have: free slots, or a fair cap above. */
	bool more = sl->free > 0 || (g->cap > 0 && sl->cap < (uint64_t)g->cap) || !g->calls;
	bool near = sl->in_use + sl->cap / 4 + 1 > sl->cap && more;
	/* Above the fair cap: report each slot that ends (no more often than
	 * every 50 ms), so that Redis can grant it to a host below its own. */
	uint64_t held = sl->cap > sl->in_use ? sl->cap : sl->in_use;
	bool giving = held < sl->granted;
	if (((near || giving) && now - g->last_call >= QG_REFRESH_NS / 10) || now - g->last_call >= QG_REFRESH_NS ||
	    g->outage)
		qg_call_slots(d, i, now);
}

/* The slot limit of global quota @qc (id @id) into @g; the same limit
 * before a reload keeps its ledger, a new one starts with cap 0. */
void qg_slots_limit(struct qg_limit *g, const struct qd_quota *qc, uint32_t id, struct qd_global *old,
			int64_t now)
{
	snprintf(g->quota, sizeof(g->quota), "%s", qc->name);
	g->id = id;
	g->kind = QG_SLOTS;
	g->policy = qc->outage;
	g->expected_hosts = qc->expected_hosts;
	snprintf(g->key, sizeof(g->key), "quotad:{%s}:inflight", qc->global_key);
	g->limit = qc->max_inflight;
	g->sl.max = qc->max_inflight;
	g->sl.lease_ns = qc->inflight_lease_ns;
	g->last_ok = now;
	g->last_call = now - QG_REFRESH_NS;
	struct qg_limit *o = qg_find_limit(old, id, QG_SLOTS);
	if (o && strcmp(o->key, g->key) == 0 && o->sl.max == g->sl.max && o->sl.lease_ns == g->sl.lease_ns) {
		*g = *o;
		g->policy = qc->outage;
		g->expected_hosts = qc->expected_hosts;
		g->pending = false;
	}
}

/* A slot limit's fields in the status reply. */
void qg_slots_status(const struct qg_limit *g, cJSON *o)
{
	const struct qg_slots *sl = &g->sl;
	cJSON_AddNumberToObject(o, "slots_held", (double)sl->granted);
	cJSON_AddNumberToObject(o, "slots_cap", (double)sl->cap);
	cJSON_AddNumberToObject(o, "slots_in_use", (double)sl->in_use);
	cJSON_AddNumberToObject(o, "slots_free", (double)sl->free);
	cJSON_AddNumberToObject(o, "fair_cap", (double)g->cap);
	cJSON_AddNumberToObject(o, "outstanding", (double)g->outstanding);
	cJSON_AddNumberToObject(o, "granted_total", (double)g->granted_total);
	cJSON_AddNumberToObject(o, "lease_s", (double)sl->lease_ns / 1e9);
	cJSON_AddNumberToObject(o, "grace_ms", (double)sl->grace_ms);
}
