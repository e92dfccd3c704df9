/* SPDX-License-Identifier: MIT */
/*
 * global.c - global quotas: the rate limits of a quota with "scope":
 * "global" are shared by several hosts' quotads through a Redis function
 * (grant.lua) that hands out GRANTS (units) from one bucket per limit; this
 * file holds the host's side: it meters what the host's workers take, holds
 * their TAT back so that they can take no more than the grant, asks Redis
 * for more, and falls back to the quota's outage policy when Redis cannot be
 * reached. The workers' hot path is unchanged: they reserve against the
 * local segment as for any quota.
 *
 * THE HOLD (a global limit's TAT as a meter). The local record of a global
 * limit has the static share as its rate (limit / expected_hosts, config.c),
 * charging T' ns per unit and tolerance tau. At every tick (t, 20 ms apart)
 * quotad sets the TAT to
 *     TAT = t + H + tau - X,   X = min(credit, tau) >= 0, H = QG_HOLD_NS,
 * raising it (always safe) or lowering it by at most the credit it holds.
 * Until t + H the TAT stays >= the clock, so every reservation starts at the
 * TAT, not at the clock (no refill), and moves it by exactly its charge;
 * one admitted at decision time a <= t + H (and waiting w with a + w <=
 * t + H) ends its slot at <= a + w + tau, so the TAT never passes t + H +
 * tau: the host takes at most X before the next tick. The next tick reads
 * the TAT: what moved it since quotad's own store is the workers' net
 * consumption (reservations, refunds, debt), charged to the credit exactly.
 * A quotad that stops ticking (killed, stalled beyond H) stops holding: the
 * TAT falls behind the clock and the host runs at its local record's rate,
 * its static share: the dead-quotad term of the bound (docs/ARCHITECTURE.md).
 *
 * CREDIT is the grant Redis gave (in ns: g units are g*T' ns, rounded down)
 * minus the consumption metered; while Redis cannot be reached for
 * QG_OUTAGE_NS the quota is in OUTAGE: the grant is dropped (Redis reaps it
 * after the lease, QG_LEASE_NS, measured from the last call it answered,
 * later than the host's drop measured from when it sent that call), and
 * static_share credits the time that passes (1 ns of clock = 1 ns of the
 * static share's charge, capped at tau) while fail_closed credits nothing.
 * What the host took in an outage is reported as debt when Redis answers
 * again, and the bucket pays it from its refill.
 *
 * REDIS, never waited on: a nonblocking hiredis context driven from the tick
 * (write what is queued, read what arrived, parse complete replies), one call
 * in flight per limit, a call older than QG_CALL_TIMEOUT_NS drops the
 * connection, which is made again after QG_RECONNECT_NS. The function is
 * loaded with FUNCTION LOAD REPLACE on every connect.
 *
 * Besides the rate limits, a global quota's max_inflight is shared in SLOTS
 * (struct qg_slots: quotad holds the workers to them on the in-flight
 * count) and its budget_usd in final grants of nano-USD (struct qg_spend:
 * the spend word metered like a TAT); each is described where declared.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>

#include "gcra.h"
#include "global.h"
#include "global_int.h"
#include "quotad.h"

const char *qg_kind_name(uint32_t k)
{
	static const char *const n[] = { "rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd", "inflight",
					 "usd_day", "usd_month" };
	return k <= QG_USD_MONTH ? n[k] : "?";
}

/* Units in @ns of the local charge, rounded up. */
static uint64_t units_up(const struct qs_limit_cfg *l, int64_t ns)
{
	if (ns <= 0)
		return 0;
	unsigned __int128 u = ((unsigned __int128)(uint64_t)ns * l->limit + (uint64_t)l->period_ns - 1) /
			      (uint64_t)l->period_ns;
	return u > UINT64_MAX / 4 ? UINT64_MAX / 4 : (uint64_t)u;
}

/* ns worth @units of the local charge, rounded down (a grant credited). */
static int64_t ns_down(const struct qs_limit_cfg *l, uint64_t units)
{
	uint64_t ns = qg_charge(l, units);
	if (l->t_frac && ns)
		ns--; /* ceil(x) - 1 <= floor(x) */
	return ns > (uint64_t)INT64_MAX / 8 ? INT64_MAX / 8 : (int64_t)ns;
}

static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* ------------------------------------------------------------------ the hold */

/* Charge the workers' net movement of the TAT since quotad last saw it. */
static void charge(struct qg_limit *g, int64_t cur)
{
	int64_t moved = cur - g->last_tat;
	g->last_tat = cur;
	if (!moved)
		return;
	g->tick_moved += moved;
	if (g->outage) {
		g->self_ns -= moved;
		g->outage_taken_ns += moved;
	} else {
		g->credit_ns -= moved;
	}
}

/* Meter, then hold the TAT at t + H + tau - X (module comment). */
static void hold(struct daemon *d, struct qg_limit *g, int64_t now)
{
	struct qs_quota *q = qs_quota_at(&d->g, g->id);
	_Atomic int64_t *tat = qs_tat(q, g->kind);
	int64_t cur = qg_tat_clamp(atomic_load_explicit(tat, memory_order_relaxed));
	if (!g->primed) {
		g->last_tat = cur; /* what the segment held before us is nobody's credit */
		g->primed = true;
	}
	for (;;) {
		charge(g, cur);
		int64_t x = imax(0, imin(g->credit_ns + g->self_ns, g->l.tau_ns));
		/* Starved: not even one unit can be admitted before the next tick. */
		g->starved = x < QG_HOLD_NS + (int64_t)qg_charge(&g->l, 1);
		int64_t target = now + QG_HOLD_NS + g->l.tau_ns - x;
		/* Lower only by credit: with none, the TAT is only ever raised
		 * (bookings beyond the hold stay booked). */
		if (target < cur && x == 0)
			target = cur;
		if (target == cur)
			return;
		if (atomic_compare_exchange_strong_explicit(tat, &cur, target, memory_order_relaxed,
							    memory_order_relaxed)) {
			g->last_tat = target;
			return;
		}
		cur = qg_tat_clamp(cur); /* a worker moved it: charge that, decide again */
	}
}

/* ------------------------------------------------------------------ Redis */

/* Where we talk to, for messages. */
static const char *where(const struct qd_global *G)
{
	static char buf[QD_REDIS_STR_MAX + 16];
	if (!G->redis.nsentinels)
		return G->redis.url;
	snprintf(buf, sizeof(buf), "%s:%u", G->master_host, G->master_port);
	return buf;
}

static void drop_conn(struct daemon *d, const char *why)
{
	struct qd_global *G = d->glob;
	if (!G->c)
		return;
	/* The same error again (a reconnect loop) is logged at debug level. */
	qd_log(strcmp(G->last_error, why) ? "warning" : "debug", "redis: %s", why);
	snprintf(G->last_error, sizeof(G->last_error), "%s", why);
	redisFree(G->c);
	G->c = NULL;
	G->conn_errors++;
	for (uint32_t i = 0; i < G->npend; i++)
		if (G->pend[i].req == QG_REQ_CALL || G->pend[i].req == QG_REQ_WAIT) {
			struct qg_limit *g = &G->lim[G->pend[i].idx];
			if (g->pending)
				g->errors++;
			g->pending = false;
			g->stashed = false;
			g->sent_debt_ns = 0;
			g->sent_overdraft = 0;
		}
	G->npend = 0;
	if (G->redis.nsentinels && !G->to_sentinel)
		G->reconnect_at = qd_mono(); /* ask the sentinels at once */
	else
		G->reconnect_at = qd_mono() + QG_RECONNECT_NS;
	if (G->to_sentinel)
		G->sentinel = (G->sentinel + 1) % G->redis.nsentinels;
	G->to_sentinel = false;
}

static void push(struct qd_global *G, uint8_t req, int idx)
{
	G->pend[G->npend++] = (struct qg_pend){ .req = req, .idx = idx };
}

/* Connected to the master: check its role, load the function. */
static void master_ready(struct qd_global *G, redisContext *c)
{
	G->c = c;
	G->connects++;
	if (G->redis.nsentinels) {
		redisAppendCommand(c, "ROLE");
		push(G, QG_REQ_ROLE, -1);
	}
	const char *argv[] = { "FUNCTION", "LOAD", "REPLACE", qd_grant_lua };
	size_t len[] = { 8, 4, 7, strlen(qd_grant_lua) };
	redisAppendCommandArgv(c, 4, argv, len);
	push(G, QG_REQ_LOAD, -1);
}

static void connect_redis(struct daemon *d, int64_t now)
{
	struct qd_global *G = d->glob;
	if (G->c || now < G->reconnect_at)
		return;
	G->reconnect_at = now + QG_RECONNECT_NS;
	redisContext *c;
	const char *what = G->redis.url;
	char sent[QD_REDIS_STR_MAX + 1];
	if (G->redis.nsentinels) {
		/* Sentinel: ask one for the master's address (hiredis has no
		 * Sentinel support); the answer connects to it (pump). */
		uint32_t port;
		const char *hp = G->redis.sentinels[G->sentinel % G->redis.nsentinels];
		const char *colon = strrchr(hp, ':');
		snprintf(sent, sizeof(sent), "%.*s", (int)(colon - hp), hp);
		port = (uint32_t)atoi(colon + 1);
		what = hp;
		c = redisConnectNonBlock(sent, (int)port);
	} else {
		c = G->redis.unix_path[0] ? redisConnectUnixNonBlock(G->redis.unix_path) :
					    redisConnectNonBlock(G->redis.host, (int)G->redis.port);
	}
	if (!c || c->err) {
		snprintf(G->last_error, sizeof(G->last_error), "connect %.50s: %.60s", what,
			 c ? c->errstr : "out of memory");
		G->conn_errors++;
		redisFree(c);
		if (G->redis.nsentinels)
			G->sentinel = (G->sentinel + 1) % G->redis.nsentinels;
		return;
	}
	if (G->redis.nsentinels) {
		G->c = c;
		G->to_sentinel = true;
		redisAppendCommand(c, "SENTINEL get-master-addr-by-name %s", G->redis.master);
		push(G, QG_REQ_SENTINEL, -1);
		G->load_sent = now;
		return;
	}
	master_ready(G, c);
	G->load_sent = now;
}

/* A sentinel's answer: [host, port] of the master, then connect to it. */
static void sentinel_answer(struct daemon *d, const redisReply *r)
{
	struct qd_global *G = d->glob;
	if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
		drop_conn(d, "a sentinel does not know the master");
		return;
	}
	char host[QD_REDIS_STR_MAX + 1];
	snprintf(host, sizeof(host), "%s", r->element[0]->str);
	int port = atoi(r->element[1]->str);
	redisFree(G->c);
	G->c = NULL;
	G->to_sentinel = false;
	if (G->master_host[0] && (strcmp(host, G->master_host) != 0 || (uint32_t)port != G->master_port)) {
		G->failovers_seen++;
		qd_log("warning", "redis: the sentinels name a new master %s:%d (was %s:%u)", host, port,
		       G->master_host, G->master_port);
	}
	snprintf(G->master_host, sizeof(G->master_host), "%s", host);
	G->master_port = (uint32_t)port;
	redisContext *c = redisConnectNonBlock(host, port);
	if (!c || c->err) {
		snprintf(G->last_error, sizeof(G->last_error), "connect master %.50s:%d: %.60s", host, port,
			 c ? c->errstr : "out of memory");
		G->conn_errors++;
		redisFree(c);
		G->sentinel = (G->sentinel + 1) % G->redis.nsentinels;
		return;
	}
	master_ready(G, c);
	G->load_sent = qd_mono();
}

/* Queue FCALL @fn for limit @i with @argc arguments after the key and the
 * host id (and WAIT in Sentinel mode); one call in flight per limit. */
void qg_send_call(struct daemon *d, uint32_t i, int64_t now, const char *fn, int argc, char (*a)[48])
{
	struct qd_global *G = d->glob;
	struct qg_limit *g = &G->lim[i];
	const char *argv[16] = { "FCALL", fn, "1", g->key, G->redis.host_id };
	size_t len[16];
	for (int k = 0; k < argc && k < 11; k++)
		argv[5 + k] = a[k];
	for (int k = 0; k < 5 + argc; k++)
		len[k] = strlen(argv[k]);
	if (redisAppendCommandArgv(G->c, 5 + argc, argv, len) != REDIS_OK) {
		drop_conn(d, "cannot queue a call");
		return;
	}
	push(G, QG_REQ_CALL, (int)i);
	if (G->redis.nsentinels) {
		/* Credit only what a replica has: a failover then loses no grant. */
		redisAppendCommand(G->c, "WAIT 1 %d", QG_WAIT_MS);
		push(G, QG_REQ_WAIT, (int)i);
	}
	g->pending = true;
	g->sent_at = now;
	g->last_call = now;
	g->calls++;
}

bool qg_can_call(const struct qd_global *G)
{
	return G->npend + 2 <= sizeof(G->pend) / sizeof(G->pend[0]) && !G->to_sentinel;
}

/* A rate limit's call: what it holds, wants, its demand and debt. */
static void call_rate(struct daemon *d, uint32_t i, int64_t now)
{
	struct qd_global *G = d->glob;
	struct qg_limit *g = &G->lim[i];
	if (!qg_can_call(G))
		return;
	/* held: what the host can still take, rounded up (over-reporting what
	 * is held is safe, under-reporting is not). */
	uint64_t held = units_up(&g->l, g->credit_ns);
	double want_d = fmax((double)g->l.capacity, g->rate * (double)QG_TARGET_HOLD_NS / 1e9);
	if (want_d > (double)g->burst)
		want_d = (double)g->burst;
	uint64_t want = (uint64_t)want_d > held ? (uint64_t)want_d - held : 0;
	double per = (double)g->l.period_ns / 1e9;
	/* A starved host's demand cannot be seen (it takes what it gets): it
	 * claims the whole limit, and water-filling then splits what the others
	 * do not use equally between the starved hosts (max-min fairness). */
	double demand = g->starved ? (double)g->limit : g->rate * per * 1.25 + 1.0;
	/* The least worth holding: the hold H plus a unit. */
	uint64_t least = units_up(&g->l, QG_HOLD_NS + QD_TICK_NS) + 1;
	if (want < least && held < least)
		want = least - held;
	if (G->stopping)
		want = 0, demand = 0, least = 0;
	/* Debt: what was taken in outages, plus an overdraft (reservations
	 * that waited beyond the hold). */
	g->sent_debt_ns = g->outage ? 0 : g->outage_taken_ns;
	g->sent_overdraft = g->credit_ns < 0 ? units_up(&g->l, -g->credit_ns) : 0;
	uint64_t debt = units_up(&g->l, g->sent_debt_ns) + g->sent_overdraft;
	char a[9][48];
	snprintf(a[0], sizeof(a[0]), "%llu", (unsigned long long)g->limit);
	snprintf(a[1], sizeof(a[1]), "%lld", (long long)(g->l.period_ns / 1000));
	snprintf(a[2], sizeof(a[2]), "%llu", (unsigned long long)g->burst);
	snprintf(a[3], sizeof(a[3]), "%lld", (long long)(QG_LEASE_NS / 1000));
	snprintf(a[4], sizeof(a[4]), "%llu", (unsigned long long)held);
	snprintf(a[5], sizeof(a[5]), "%llu", (unsigned long long)want);
	snprintf(a[6], sizeof(a[6]), "%.0f", demand);
	snprintf(a[7], sizeof(a[7]), "%llu", (unsigned long long)debt);
	snprintf(a[8], sizeof(a[8]), "%llu", (unsigned long long)least);
	qg_send_call(d, i, now, "quotad_grant", 9, a);
}

static void call(struct daemon *d, uint32_t i, int64_t now)
{
	uint32_t k = d->glob->lim[i].kind;
	if (k == QG_SLOTS)
		qg_call_slots(d, i, now);
	else if (k == QG_USD_DAY || k == QG_USD_MONTH)
		qg_call_spend(d, i, now);
	else
		call_rate(d, i, now);
}

/* What every confirmed answer says: Redis is back, the lease renewed. */
void qg_answered(struct qg_limit *g, const long long *v)
{
	if (g->outage) {
		qd_log("info", "global %s %s: Redis answers again (outage over, %llu units taken in it "
		       "reported as debt)", g->quota, qg_kind_name(g->kind),
		       (unsigned long long)g->outage_units_total);
		g->outage = false;
		g->self_ns = 0;
	}
	g->live_hosts = v[1];
	g->outstanding = v[3];
	g->cap = v[4];
	g->reaped_seen += (uint64_t)(v[5] > 0 ? v[5] : 0);
	g->last_ok = g->sent_at; /* the lease runs from when we asked */
}

/* Credit a confirmed answer of a rate limit: v = {granted, live hosts,
 * stock, outstanding, cap, reaped}. */
static void apply_rate(struct qg_limit *g, const long long *v)
{
	qg_answered(g, v);
	g->outage_taken_ns -= g->sent_debt_ns;
	g->debt_reported_total += units_up(&g->l, g->sent_debt_ns);
	g->sent_debt_ns = 0;
	/* The overdraft was paid from the bucket: u units, credited as u*T'
	 * rounded down (>= the overdraft, an integer <= u*T'). */
	g->credit_ns += ns_down(&g->l, g->sent_overdraft);
	g->sent_overdraft = 0;
	uint64_t granted = v[0] > 0 ? (uint64_t)v[0] : 0;
	g->credit_ns += ns_down(&g->l, granted);
	g->granted_total += granted;
	g->stock = v[2];
}

static void apply(struct qg_limit *g, const long long *v)
{
	if (g->kind == QG_SLOTS)
		qg_apply_slots(g, v);
	else if (g->kind == QG_USD_DAY || g->kind == QG_USD_MONTH)
		qg_apply_spend(g, v);
	else
		apply_rate(g, v);
}

/* A call's answer; with Sentinel it waits for its WAIT. Returns false if the
 * connection must go (an error reply: a master that became a replica says
 * READONLY, a restarted one lacks the function). */
static bool answer(struct daemon *d, struct qg_limit *g, const redisReply *r)
{
	size_t n = g->kind == QG_SLOTS ? 7 : 6;
	if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < n) {
		g->errors++;
		g->pending = false;
		snprintf(d->glob->last_error, sizeof(d->glob->last_error), "grant: %.150s",
			 r && r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		g->sent_debt_ns = 0;
		g->sent_overdraft = 0;
		return false;
	}
	long long v[QG_REPLY_MAX] = { 0 };
	for (size_t k = 0; k < n; k++)
		v[k] = r->element[k]->type == REDIS_REPLY_INTEGER ? r->element[k]->integer : 0;
	if (d->glob->redis.nsentinels) {
		memcpy(g->stash, v, sizeof(v));
		g->stashed = true;
		return true;
	}
	g->pending = false;
	apply(g, v);
	return true;
}

/* WAIT's answer: the number of replicas that have the call's write. */
static bool confirmed(struct daemon *d, struct qg_limit *g, const redisReply *r)
{
	g->pending = false;
	bool ok = r && r->type == REDIS_REPLY_INTEGER && r->integer >= 1 && g->stashed;
	if (ok) {
		apply(g, g->stash);
	} else if (g->stashed) {
		/* Not on a replica: as if the answer was lost (Redis' o is then
		 * too high, which is safe; the next report lowers it). */
		d->glob->unconfirmed++;
		g->sent_debt_ns = 0;
		g->sent_overdraft = 0;
	}
	g->stashed = false;
	return ok;
}

static void pump(struct daemon *d, int64_t now)
{
	struct qd_global *G = d->glob;
	if (!G->c)
		return;
	int done = 0;
	if (redisBufferWrite(G->c, &done) != REDIS_OK) {
		char why[160];
		snprintf(why, sizeof(why), "write to %.60s: %.80s", where(G), G->c->errstr);
		drop_conn(d, why);
		return;
	}
	if (redisBufferRead(G->c) != REDIS_OK) {
		char why[160];
		snprintf(why, sizeof(why), "read from %.60s: %.80s", where(G), G->c->errstr);
		drop_conn(d, why);
		return;
	}
	for (;;) {
		void *rep = NULL;
		if (redisGetReplyFromReader(G->c, &rep) != REDIS_OK) {
			drop_conn(d, "protocol error");
			return;
		}
		if (!rep)
			break;
		redisReply *r = rep;
		if (G->npend == 0) {
			freeReplyObject(r);
			drop_conn(d, "a reply nobody asked for");
			return;
		}
		struct qg_pend who = G->pend[0];
		memmove(G->pend, G->pend + 1, (G->npend - 1) * sizeof(G->pend[0]));
		G->npend--;
		char why[200] = "";
		switch (who.req) {
		case QG_REQ_SENTINEL:
			sentinel_answer(d, r);
			freeReplyObject(r);
			return; /* G->c is now the master (or nothing) */
		case QG_REQ_ROLE:
			if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
			    r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "master"))
				snprintf(why, sizeof(why), "%s:%u is not a master (ROLE): asking the sentinels again",
					 G->master_host, G->master_port);
			break;
		case QG_REQ_LOAD:
			if (r->type == REDIS_REPLY_ERROR)
				snprintf(why, sizeof(why), "FUNCTION LOAD: %.120s", r->str);
			break;
		case QG_REQ_CALL:
			if (!answer(d, &G->lim[who.idx], r))
				snprintf(why, sizeof(why), "%s", G->last_error);
			break;
		case QG_REQ_WAIT:
			if (!confirmed(d, &G->lim[who.idx], r))
				snprintf(why, sizeof(why), "WAIT: no replica confirmed a grant: asking the "
					 "sentinels again");
			break;
		}
		freeReplyObject(r);
		if (why[0]) {
			drop_conn(d, why);
			return;
		}
	}
	for (uint32_t i = 0; i < G->nlim; i++)
		if (G->lim[i].pending && now - G->lim[i].sent_at > QG_CALL_TIMEOUT_NS) {
			drop_conn(d, "a call took over 1 s: reconnecting");
			return;
		}
	if (G->npend && G->pend[0].req <= QG_REQ_LOAD && now - G->load_sent > QG_CALL_TIMEOUT_NS)
		drop_conn(d, G->to_sentinel ? "a sentinel did not answer in 1 s" :
					      "no answer to ROLE / FUNCTION LOAD in 1 s");
}

/* ------------------------------------------------------------------ the tick */

/* No answer for QG_OUTAGE_NS: the limit is in OUTAGE (true when it starts). */
bool qg_outage_begins(struct qg_limit *g, int64_t now)
{
	if (g->outage || now - g->last_ok <= QG_OUTAGE_NS)
		return false;
	g->outage = true;
	g->outages++;
	qd_log("warning", "global %s %s: no answer from Redis for %lld ms: outage, %s", g->quota,
	       qg_kind_name(g->kind), (long long)(QG_OUTAGE_NS / 1000000),
	       g->kind == QG_SLOTS ? "slots kept for half the lease, none asked" :
	       g->policy == QD_OUTAGE_FAIL_CLOSED ? "fail_closed" : "static_share");
	return true;
}

/* static_share in an outage: the time that passes credits the host at its
 * share of the limit among the live hosts Redis last reported (the
 * expected hosts before any answer), at most that share's burst held. The
 * credit is in ns of the local charge T' (the static share L/N's): a live
 * share L_v = max(1, floor(L / n)) is worth L_v / L_s ns per ns of clock. */
static void share_credit(struct qg_limit *g, int64_t dt)
{
	uint64_t n = g->live_hosts > 0 ? (uint64_t)g->live_hosts : g->expected_hosts;
	uint64_t lv = g->limit / (n ? n : 1);
	if (!lv)
		lv = 1;
	struct qs_limit_cfg live;
	int64_t cap = g->l.tau_ns;
	if (qg_limit_init(&live, g->kind, lv, g->l.period_ns, g->l.burst_ppm) == 0)
		cap = ns_down(&g->l, live.capacity);
	unsigned __int128 add = (unsigned __int128)(uint64_t)dt * lv / g->l.limit;
	g->self_ns = add >= (unsigned __int128)cap ? cap : imin(g->self_ns + (int64_t)add, cap);
	g->share_hosts = n;
}

static void tick_rate(struct daemon *d, struct qg_limit *g, uint32_t i, int64_t now)
{
	struct qd_global *G = d->glob;
	int64_t dt = g->last_tick ? now - g->last_tick : 0;
	g->last_tick = now;
	if (qg_outage_begins(g, now)) {
		/* Drop the grant before Redis can reap it (module comment). */
		if (g->credit_ns > 0)
			g->credit_ns = 0;
		g->self_ns = 0;
	}
	if (g->outage && g->policy == QD_OUTAGE_STATIC_SHARE && dt > 0)
		share_credit(g, dt);
	hold(d, g, now);
	if (dt > 0) {
		/* Consumption rate, units per second, averaged over about 250 ms. */
		double inst = (double)units_up(&g->l, g->tick_moved > 0 ? g->tick_moved : 0) * 1e9 / (double)dt;
		double a = (double)dt / 0.25e9 > 1.0 ? 1.0 : (double)dt / 0.25e9;
		g->rate += a * (inst - g->rate);
		g->tick_moved = 0;
	}
	if (g->outage && g->outage_taken_ns > 0)
		g->outage_units_total = units_up(&g->l, g->outage_taken_ns) + g->debt_reported_total;
	if (!G->c || g->pending)
		return;
	uint64_t held = units_up(&g->l, g->credit_ns);
	uint64_t low = g->l.capacity / 2 > (uint64_t)(g->rate * 0.25) ? g->l.capacity / 2 :
		       (uint64_t)(g->rate * 0.25);
	if (held <= low || now - g->last_call >= QG_REFRESH_NS || g->outage)
		call(d, i, now);
}

static void tick_one(struct daemon *d, struct qg_limit *g, uint32_t i, int64_t now)
{
	if (g->kind == QG_SLOTS)
		qg_tick_slots(d, g, i, now);
	else if (g->kind == QG_USD_DAY || g->kind == QG_USD_MONTH)
		qg_tick_spend(d, g, i, now);
	else
		tick_rate(d, g, i, now);
}

void qd_global_tick(struct daemon *d)
{
	struct qd_global *G = d->glob;
	if (!G)
		return;
	int64_t now = qd_now(d);
	int64_t mono = qd_mono();
	connect_redis(d, mono);
	pump(d, mono);
	for (uint32_t i = 0; i < G->nlim; i++) {
		(void)now;
		tick_one(d, &G->lim[i], i, mono);
	}
	pump(d, mono); /* send what this tick queued */
}

/* ------------------------------------------------------------------ config */

static void free_global(struct qd_global *G)
{
	if (!G)
		return;
	if (G->c)
		redisFree(G->c);
	free(G->lim);
	free(G);
}

/* The global limit of quota id @id and kind @kind in @G, or NULL. */
struct qg_limit *qg_find_limit(struct qd_global *G, uint32_t id, uint32_t kind)
{
	for (uint32_t j = 0; G && j < G->nlim; j++)
		if (G->lim[j].id == id && G->lim[j].kind == kind)
			return &G->lim[j];
	return NULL;
}

/* Holds on in-flight counts that no global max_inflight of @cfg keeps (a
 * quota no longer global, or without max_inflight) are let go: its record,
 * published before, says what the workers may hold now. */
static void release_holds(struct daemon *d, const struct qd_config *cfg)
{
	uint32_t count = qs_quota_count(&d->g);
	for (uint32_t id = 0; id < count; id++) {
		struct qs_quota *q = qs_quota_at(&d->g, id);
		if (!atomic_load_explicit(&q->inflight_hold, memory_order_relaxed))
			continue;
		bool keep = false;
		for (uint32_t i = 0; i < cfg->nquotas && !keep; i++)
			keep = cfg->quotas[i].global && cfg->quotas[i].max_inflight && d->pub[id].word &&
			       !(d->pub[id].cfg.flags & QS_REC_REMOVED) &&
			       strncmp(d->pub[id].cfg.name, cfg->quotas[i].name, sizeof(d->pub[id].cfg.name)) == 0;
		if (!keep)
			(void)qc_inflight_hold_set(q, 0);
	}
}

void qd_global_guard(struct daemon *d, uint32_t id, const struct qs_config *old, const struct qs_config *next)
{
	struct qs_quota *q = qs_quota_at(&d->g, id);
	if (next->max_inflight) {
		struct qg_limit *g = qg_find_limit(d->glob, id, QG_SLOTS);
		uint64_t cap = g ? g->sl.cap : 0, top = old && old->max_inflight > next->max_inflight ?
							  old->max_inflight : next->max_inflight;
		uint64_t hold = top > cap ? top - cap : 0;
		if (atomic_load_explicit(&q->inflight_hold, memory_order_relaxed) < hold)
			(void)qc_inflight_hold_set(q, hold);
	}
	/* Budgets: nothing spendable under either record until the next tick
	 * meters the word (a ledger kept across the reload re-exposes its
	 * credit then). */
	uint32_t day, month;
	int64_t off = atomic_load_explicit(&d->h->realtime_offset_ns, memory_order_relaxed);
	qc_periods_of(qd_now(d) + off, &day, &month);
	uint64_t bd = old && old->budget_day_nusd > next->budget_day_nusd ? old->budget_day_nusd :
		      next->budget_day_nusd;
	uint64_t bm = old && old->budget_month_nusd > next->budget_month_nusd ? old->budget_month_nusd :
		      next->budget_month_nusd;
	for (uint32_t k = QG_USD_DAY; k <= QG_USD_MONTH; k++) {
		uint64_t full = k == QG_USD_DAY ? bd : bm;
		if (!(k == QG_USD_DAY ? next->budget_day_nusd : next->budget_month_nusd))
			continue;
		_Atomic uint64_t *w = k == QG_USD_DAY ? &q->spend_day : &q->spend_month;
		uint32_t p = k == QG_USD_DAY ? day : month;
		/* A ledger that may be kept is metered first and does not count
		 * the block as spending. */
		struct qg_limit *g = qg_find_limit(d->glob, id, k);
		if (g)
			qg_spend_hold(d, g);
		qc_spend_raise(w, p, full);
		if (g && g->sp.period == p)
			g->sp.left_amount = qs_spend_in(atomic_load_explicit(w, memory_order_relaxed), p);
	}
}

int qd_global_apply(struct daemon *d, const struct qd_config *cfg)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < cfg->nquotas; i++)
		for (uint32_t k = 0; cfg->quotas[i].global && k < QUOTA_RATE_KINDS; k++)
			n += cfg->quotas[i].rate[k] != 0;
	for (uint32_t i = 0; i < cfg->nquotas; i++)
		n += cfg->quotas[i].global * (!!cfg->quotas[i].max_inflight + !!cfg->quotas[i].budget_day_nusd +
					      !!cfg->quotas[i].budget_month_nusd);
	release_holds(d, cfg);
	struct qd_global *old = d->glob;
	if (n == 0) {
		if (old)
			qd_log("info", "no global quota any more: Redis connection closed");
		free_global(old);
		d->glob = NULL;
		return 0;
	}
	if ((d->g.incompat_flags & QS_INCOMPAT_MANUAL_CLOCK)) {
		qd_log("error", "global quotas need the monotonic clock (Redis grants run on real time): "
		       "global quotas not served");
		return -EINVAL;
	}
	struct qd_global *G = calloc(1, sizeof(*G));
	struct qg_limit *lim = calloc(n, sizeof(*lim));
	if (!G || !lim) {
		free(G);
		free(lim);
		return -ENOMEM;
	}
	G->redis = cfg->redis;
	int64_t now = qd_mono();
	uint32_t m = 0;
	for (uint32_t i = 0; i < cfg->nquotas; i++) {
		const struct qd_quota *qc = &cfg->quotas[i];
		if (!qc->global)
			continue;
		int id = -1;
		for (uint32_t j = 0; j < d->g.quota_capacity; j++)
			if (d->pub[j].word && !(d->pub[j].cfg.flags & QS_REC_REMOVED) &&
			    strncmp(d->pub[j].cfg.name, qc->name, sizeof(d->pub[j].cfg.name)) == 0) {
				id = (int)j;
				break;
			}
		if (id >= 0 && qc->max_inflight)
			qg_slots_limit(&lim[m++], qc, (uint32_t)id, old, now);
		for (uint32_t k = QG_USD_DAY; id >= 0 && k <= QG_USD_MONTH; k++)
			if (k == QG_USD_DAY ? qc->budget_day_nusd : qc->budget_month_nusd)
				qg_spend_limit(&lim[m++], qc, (uint32_t)id, k, old, now);
		for (uint32_t k = 0; id >= 0 && k < QUOTA_RATE_KINDS; k++) {
			if (!qc->rate[k])
				continue;
			struct qg_limit *g = &lim[m];
			snprintf(g->quota, sizeof(g->quota), "%s", qc->name);
			g->id = (uint32_t)id;
			g->kind = k;
			g->policy = qc->outage;
			g->expected_hosts = qc->expected_hosts;
			snprintf(g->key, sizeof(g->key), "quotad:{%s}:%s", qc->global_key, qg_kind_name(k));
			g->limit = qc->rate[k];
			struct qs_limit_cfg gl;
			if (qg_limit_init(&gl, k, qc->rate[k], qg_period_of(k), qc->burst_ppm) < 0 ||
			    qg_limit_init(&g->l, k, qd_local_rate(qc, k), qg_period_of(k), qc->burst_ppm) < 0)
				continue;
			g->burst = gl.capacity;
			g->last_ok = now; /* a grace of QG_OUTAGE_NS to reach Redis */
			g->last_call = now - QG_REFRESH_NS;
			/* The same limit before the reload keeps its ledger. */
			for (uint32_t j = 0; old && j < old->nlim; j++) {
				struct qg_limit *o = &old->lim[j];
				if (o->id == g->id && o->kind == g->kind && strcmp(o->key, g->key) == 0 &&
				    o->l.tau_ns == g->l.tau_ns && o->l.t_int == g->l.t_int &&
				    o->l.t_frac == g->l.t_frac && o->burst == g->burst) {
					struct qg_limit keep = *g;
					*g = *o;
					g->policy = keep.policy;
					g->pending = false;
				}
			}
			m++;
		}
	}
	G->lim = lim;
	G->nlim = m;
	if (old && strcmp(old->redis.url, G->redis.url) == 0 && old->redis.unix_path[0] == G->redis.unix_path[0] &&
	    strcmp(old->redis.host_id, G->redis.host_id) == 0 && old->npend == 0) {
		G->c = old->c; /* same server, nothing in flight: keep the connection */
		old->c = NULL;
		G->connects = old->connects;
	}
	free_global(old);
	d->glob = G;
	qd_log("info", "%u global limit%s through Redis %s%s as host %s", m, m == 1 ? "" : "s",
	       G->redis.nsentinels ? "master " : "", G->redis.nsentinels ? G->redis.master : G->redis.url,
	       G->redis.host_id);
	return 0;
}

/* At stop: hold everything back, give what is held back to Redis (bounded
 * wait: the loop is over). */
void qd_global_stop(struct daemon *d)
{
	struct qd_global *G = d->glob;
	if (!G)
		return;
	int64_t now = qd_mono();
	for (uint32_t i = 0; i < G->nlim; i++) {
		struct qg_limit *g = &G->lim[i];
		if (g->kind == QG_SLOTS) {
			/* No new request until a quotad holds slots again; the
			 * idle ones are given back below, those in use stay. */
			g->sl.cap = 0;
			qg_slots_hold(d, g);
			continue;
		}
		if (g->kind == QG_USD_DAY || g->kind == QG_USD_MONTH) {
			/* Nothing left spendable; the credit is given back below. */
			g->outage = false;
			int64_t keep = g->sp.credit;
			g->sp.credit = 0;
			qg_spend_hold(d, g);
			g->sp.credit += keep;
			continue;
		}
		hold(d, g, now);
		g->credit_ns = 0; /* given back below */
		g->self_ns = 0;
		hold(d, g, now);
	}
	/* Answers to calls in flight first (they may carry grants), then one
	 * call per limit reporting nothing held: 300 ms at most in all. */
	int64_t until = now + 300 * 1000000LL;
	for (int round = 0; round < 2 && G->c; round++) {
		G->stopping = round == 1;
		for (uint32_t i = 0; round == 1 && i < G->nlim; i++) {
			if (G->lim[i].kind == QG_SLOTS) {
				G->lim[i].sl.cap = 0; /* an answer of round 0 may have raised it */
				qg_slots_hold(d, &G->lim[i]);
			}
			G->lim[i].credit_ns = 0;
			G->lim[i].self_ns = 0;
			G->lim[i].rate = 0;
			call(d, i, now);
		}
		while (G->c && G->npend && qd_mono() < until) {
			struct pollfd p = { .fd = G->c->fd, .events = POLLIN | POLLOUT };
			(void)poll(&p, 1, 20);
			pump(d, qd_mono());
		}
	}
	free_global(G);
	d->glob = NULL;
}

/* ------------------------------------------------------------------ status */

static const char *mode_of(const struct qg_limit *g)
{
	if (g->kind == QG_SLOTS && g->sl.expired)
		return "outage-lease_expired";
	if (g->kind == QG_SLOTS && g->outage)
		return "outage-slots_kept";
	if (!g->outage)
		return "granted";
	return g->policy == QD_OUTAGE_FAIL_CLOSED ? "outage-fail_closed" : "outage-static_share";
}

void qd_global_status(struct daemon *d, cJSON *root)
{
	struct qd_global *G = d->glob;
	if (!G)
		return;
	cJSON *gj = cJSON_AddObjectToObject(root, "global");
	cJSON_AddStringToObject(gj, "redis", G->redis.nsentinels ? "sentinel" : G->redis.url);
	cJSON_AddStringToObject(gj, "host_id", G->redis.host_id);
	cJSON_AddBoolToObject(gj, "connected", G->c != NULL);
	cJSON_AddNumberToObject(gj, "connects", (double)G->connects);
	cJSON_AddNumberToObject(gj, "connection_errors", (double)G->conn_errors);
	cJSON_AddStringToObject(gj, "last_error", G->last_error);
	if (G->redis.nsentinels) {
		char m[QD_REDIS_STR_MAX + 16];
		snprintf(m, sizeof(m), "%s:%u", G->master_host, G->master_port);
		cJSON_AddStringToObject(gj, "master", m);
		cJSON_AddNumberToObject(gj, "master_changes", (double)G->failovers_seen);
		cJSON_AddNumberToObject(gj, "unconfirmed_calls", (double)G->unconfirmed);
	}
	cJSON *arr = cJSON_AddArrayToObject(gj, "limits");
	int64_t now = qd_mono();
	for (uint32_t i = 0; i < G->nlim; i++) {
		const struct qg_limit *g = &G->lim[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddItemToArray(arr, o);
		cJSON_AddStringToObject(o, "quota", g->quota);
		cJSON_AddStringToObject(o, "limit", qg_kind_name(g->kind));
		cJSON_AddStringToObject(o, "key", g->key);
		cJSON_AddStringToObject(o, "mode", mode_of(g));
		cJSON_AddStringToObject(o, "outage_policy",
					g->policy == QD_OUTAGE_FAIL_CLOSED ? "fail_closed" : "static_share");
		cJSON_AddNumberToObject(o, "global_limit", (double)g->limit);
		cJSON_AddNumberToObject(o, "last_refresh_ms", (double)(now - g->last_ok) / 1e6);
		cJSON_AddNumberToObject(o, "live_hosts", (double)g->live_hosts);
		cJSON_AddNumberToObject(o, "calls", (double)g->calls);
		cJSON_AddNumberToObject(o, "errors", (double)g->errors);
		cJSON_AddNumberToObject(o, "outages", (double)g->outages);
		cJSON_AddNumberToObject(o, "hosts_reaped_seen", (double)g->reaped_seen);
		if (g->kind == QG_SLOTS) {
			qg_slots_status(g, o);
			continue;
		}
		if (g->kind == QG_USD_DAY || g->kind == QG_USD_MONTH) {
			qg_spend_status(g, o);
			continue;
		}
		cJSON_AddNumberToObject(o, "static_share", (double)g->l.limit);
		cJSON_AddNumberToObject(o, "outage_share_hosts", (double)(g->share_hosts ? g->share_hosts :
									    g->expected_hosts));
		cJSON_AddNumberToObject(o, "held", (double)units_up(&g->l, g->credit_ns));
		cJSON_AddNumberToObject(o, "debt", (double)(units_up(&g->l, g->outage_taken_ns) +
							    (g->credit_ns < 0 ? units_up(&g->l, -g->credit_ns) : 0)));
		cJSON_AddNumberToObject(o, "granted_total", (double)g->granted_total);
		cJSON_AddNumberToObject(o, "outage_units_total", (double)g->outage_units_total);
		cJSON_AddNumberToObject(o, "debt_reported_total", (double)g->debt_reported_total);
		cJSON_AddNumberToObject(o, "outstanding", (double)g->outstanding);
		cJSON_AddNumberToObject(o, "fair_cap", (double)g->cap);
		cJSON_AddNumberToObject(o, "stock", (double)g->stock);
		cJSON_AddNumberToObject(o, "demand_per_s", g->rate);
	}
}

/* The value of metric family @f (qd_global_metrics()) for limit @g; false
 * if the family does not apply to its kind (rate limits, slots). */
static bool metric_value(const struct qg_limit *g, size_t f, double *v)
{
	bool slots = g->kind == QG_SLOTS, usd = g->kind == QG_USD_DAY || g->kind == QG_USD_MONTH;
	if (usd) /* nano-USD */
		switch (f) {
		case 0: *v = (double)(g->sp.credit > 0 ? g->sp.credit : 0); return true;
		case 4: *v = (double)(g->sp.credit < 0 ? -g->sp.credit : 0); return true;
		case 3: case 7: return false;
		default: break;
		}
	switch (f) {
	case 0: *v = slots ? (double)g->sl.granted : (double)units_up(&g->l, g->credit_ns); return true;
	case 1: *v = (double)g->granted_total; return true;
	case 2: *v = g->outage; return true;
	case 3: *v = (double)g->outage_units_total; return !slots;
	case 4: *v = (double)(units_up(&g->l, g->outage_taken_ns) +
			      (g->credit_ns < 0 ? units_up(&g->l, -g->credit_ns) : 0)); return !slots;
	case 5: *v = (double)g->live_hosts; return true;
	case 6: *v = (double)g->calls; return true;
	default: *v = (double)g->sl.cap; return slots;
	}
}

char *qd_global_metrics(struct daemon *d)
{
	struct qd_global *G = d->glob;
	if (!G)
		return NULL;
	size_t cap = 4096 + (size_t)G->nlim * 2048, len = 0;
	char *b = malloc(cap);
	if (!b)
		return NULL;
#define P(...) (len += (size_t)snprintf(b + len, cap > len ? cap - len : 0, __VA_ARGS__))
	P("# HELP quotad_global_connected 1 while the Redis connection is up.\n"
	  "# TYPE quotad_global_connected gauge\nquotad_global_connected %d\n", G->c != NULL);
	P("# HELP quotad_global_connection_errors_total Redis connections lost or refused.\n"
	  "# TYPE quotad_global_connection_errors_total counter\n"
	  "quotad_global_connection_errors_total %llu\n", (unsigned long long)G->conn_errors);
	static const struct {
		const char *name, *type, *help;
	} fam[] = {
		{ "quota_global_held", "gauge", "Grant held by this host, in units (slots for inflight, "
		  "nano-USD for usd_day and usd_month)." },
		{ "quota_global_granted_total", "counter", "Units granted to this host by Redis (as held)." },
		{ "quota_global_outage", "gauge", "1 while the limit is in outage (its policy applies)." },
		{ "quota_global_outage_units_total", "counter", "Units taken in outages (static share)." },
		{ "quota_global_debt", "gauge", "Units taken beyond the grant, not yet reported (as held)." },
		{ "quota_global_live_hosts", "gauge", "Hosts sharing the limit, as Redis last said." },
		{ "quota_global_calls_total", "counter", "Grant calls to Redis." },
		{ "quota_global_inflight_cap", "gauge", "Slots the workers may hold on a global max_inflight." },
	};
	for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
		P("# HELP %s %s\n# TYPE %s %s\n", fam[f].name, fam[f].help, fam[f].name, fam[f].type);
		for (uint32_t i = 0; i < G->nlim; i++) {
			const struct qg_limit *g = &G->lim[i];
			double v;
			if (!metric_value(g, f, &v))
				continue;
			P("%s{quota=\"%s\",limit=\"%s\"} %.0f\n", fam[f].name, g->quota, qg_kind_name(g->kind), v);
		}
	}
#undef P
	if (len >= cap) {
		free(b);
		return NULL;
	}
	return b;
}
