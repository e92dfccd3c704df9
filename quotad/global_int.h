/* SPDX-License-Identifier: MIT */
/*
 * global_int.h - what global.c shares with slots.c (a global max_inflight)
 * and spend.c (a global budget_usd): the limits' ledgers, the connection,
 * the calls' pipeline. Private to quotad's global quotas.
 */
#ifndef QUOTAD_GLOBAL_INT_H
#define QUOTAD_GLOBAL_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>

#include "gcra.h"
#include "quotad.h"

#define QG_HOLD_NS (60 * 1000000LL)         /* H: how far the TAT is held ahead (3 ticks) */
#define QG_REFRESH_NS (500 * 1000000LL)     /* a call at least this often (lease, demand) */
#define QG_OUTAGE_NS (1000 * 1000000LL)     /* no answer for this long: OUTAGE */
#define QG_LEASE_NS (5000 * 1000000LL)      /* Redis reaps a host silent this long */
#define QG_CALL_TIMEOUT_NS (1000 * 1000000LL)
#define QG_RECONNECT_NS (200 * 1000000LL)
#define QG_TARGET_HOLD_NS (500 * 1000000LL) /* ask for about this much of the demand */

extern const char qd_grant_lua[];

/* What a reply in the pipeline answers. */
enum qg_req { QG_REQ_SENTINEL, QG_REQ_ROLE, QG_REQ_LOAD, QG_REQ_CALL, QG_REQ_WAIT };
struct qg_pend {
	uint8_t req;  /* enum qg_req */
	int idx;      /* the limit, for CALL and WAIT */
};
#define QG_WAIT_MS 200 /* WAIT 1 QG_WAIT_MS after each call (Sentinel mode) */
#define QG_REPLY_MAX 7 /* elements of a function's reply */

/* A global max_inflight (kind QG_SLOTS): SLOTS granted by Redis with a
 * lease (grant.lua, slots()), the workers held to them by quotad's hold on
 * the in-flight count (qc_inflight_hold_set(): the local record carries the
 * global max_inflight M, quotad holds M - cap of it).
 *   granted  what Redis counts for this host (its o), as last confirmed;
 *   cap      what the workers may hold: <= granted, set by a confirmed
 *            answer to min(granted, the fair cap), else only lowered;
 *            it may be below in_use (a host above its fair share);
 *   in_use   what the workers held at the last tick.
 * A call reports held = max(cap, in_use): the workers can never hold more
 * until the answer (they are admitted only below cap), and it never
 * exceeds Redis' o. Lowering cap before a call returns idle slots; a slot in
 * use is reported until it ends, and a host above its fair cap reports each
 * that ends (ARCHITECTURE, the fair split). Half the lease after the last
 * answered call was sent (until, published in the quota entry's
 * inflight_until) the workers
 * admit no new request by themselves, even if quotad is dead or stopped,
 * and quotad sets cap to 0; what they admitted ends before Redis reaps the
 * host (the lease is at least twice the longest request). */
#define QG_SLOTS QUOTA_RATE_KINDS
#define QG_USD_DAY (QG_SLOTS + 1)
#define QG_USD_MONTH (QG_SLOTS + 2)
struct qg_slots {
	uint64_t max, lease_ns;
	uint64_t granted, cap, in_use, peak;
	uint64_t sent_held;                 /* held reported by the call in flight */
	int64_t until;                      /* the workers' last admission: the last answered
					     * call's send time + lease / 2; 0 before one */
	bool expired;                       /* half the lease without an answer */
	int64_t grace_ms;                   /* Redis' grace after an empty start */
	uint64_t free;                      /* free slots, as Redis last said */
};

/* A global budget_usd (kinds QG_USD_DAY, QG_USD_MONTH): nano-USD GRANTED by
 * Redis out of the period's budget B (grant.lua, spend(): the period is
 * Redis' TIME's UTC day or month), final: a grant is never taken back, so
 * it needs no lease. The local record carries the local cap B_l =
 * B / (4 expected_hosts); the spend word is a METER, as the TAT of a rate
 * limit: at every tick quotad sets its amount to B_l - X, X = min(credit, B_l), so
 * the workers can spend X before the next tick, and charges what moved it
 * since to the credit. Spent beyond the credit (usage above an estimate, a
 * new period's first tick) is DEBT, reported into the period it was spent
 * in. A host whose quotad is down spends at most B_l per period. */
struct qg_spend {
	uint64_t budget, share;             /* B, B_l */
	uint32_t period;                    /* this host's period the credit is for */
	bool primed;
	uint64_t left_amount;               /* the word's amount as quotad left it */
	int64_t credit;                     /* granted, not spent (< 0: debt) */
	uint64_t spent;                     /* metered in the period */
	int64_t sent_debt, sent_back;       /* in the call in flight */
	uint32_t sent_period;
	int64_t given, left, redis_period;  /* Redis: given in its period, left, that period */
	int64_t tick_moved;
};

struct qg_limit {
	char quota[QUOTA_NAME_MAX + 1];
	uint32_t id, kind, policy, expected_hosts; /* policy: enum qd_outage; kind QG_SLOTS: slots */
	char key[QD_GLOBAL_KEY_MAX + 32];   /* Redis key */
	uint64_t limit, burst;              /* the global limit L and capacity b */
	struct qs_limit_cfg l;              /* the local record's (static share) */
	bool primed;                        /* last_tat is valid */
	int64_t last_tat;                   /* the TAT as quotad last left or saw it */
	int64_t credit_ns;                  /* grant not yet consumed (< 0: overdraft) */
	int64_t self_ns;                    /* static_share credit in an outage */
	int64_t outage_taken_ns;            /* consumed in outages, not yet reported */
	int64_t sent_debt_ns;               /* part of it in the call in flight */
	uint64_t sent_overdraft;            /* overdraft units paid by that call */
	bool stashed;                       /* a call's answer waiting for its WAIT */
	long long stash[QG_REPLY_MAX];
	int64_t tick_moved;                 /* consumption since the last rate update */
	bool pending;
	int64_t sent_at, last_call, last_ok;
	bool outage, starved;
	double rate;                        /* consumption, units per second (EWMA) */
	int64_t last_tick;
	/* Figures for status and metrics. */
	uint64_t granted_total, calls, errors, outages, reaped_seen;
	int64_t live_hosts, stock, outstanding, cap;
	uint64_t share_hosts;               /* the live-host count static_share last used */
	uint64_t outage_units_total, debt_reported_total;
	struct qg_slots sl;                 /* kind QG_SLOTS only */
	struct qg_spend sp;                 /* kinds QG_USD_* only */
};

struct qd_global {
	struct qd_redis redis;
	redisContext *c;
	int64_t reconnect_at;
	struct qg_pend pend[512];
	uint32_t npend;
	bool to_sentinel;                   /* c is a sentinel being asked for the master */
	uint32_t sentinel;                  /* which one is asked next */
	char master_host[QD_REDIS_STR_MAX + 1];
	uint32_t master_port;
	uint64_t failovers_seen;            /* master address changed */
	uint64_t unconfirmed;               /* calls WAIT did not confirm: not credited */
	int64_t load_sent;
	uint64_t connects, conn_errors;
	bool stopping;                      /* the last calls: give back, ask nothing */
	char last_error[200];
	struct qg_limit *lim;
	uint32_t nlim;
};

/* global.c */
/* A limit kind's name ("rpm", ..., "inflight", "usd_day", "usd_month"). */
const char *qg_kind_name(uint32_t k);
/* The global limit of quota id @id and kind @kind in @G (may be NULL), or NULL. */
struct qg_limit *qg_find_limit(struct qd_global *G, uint32_t id, uint32_t kind);
/* Whether a call can be queued now (room in the pipeline, not asking a sentinel). */
bool qg_can_call(const struct qd_global *G);
/* Queue FCALL @fn for limit @i with @argc arguments after the key and the
 * host id (and WAIT in Sentinel mode); one call in flight per limit. */
void qg_send_call(struct daemon *d, uint32_t i, int64_t now, const char *fn, int argc, char (*a)[48]);
/* What every confirmed answer says: Redis is back, the lease renewed. */
void qg_answered(struct qg_limit *g, const long long *v);
/* No answer for QG_OUTAGE_NS: the limit is in OUTAGE (true when it starts). */
bool qg_outage_begins(struct qg_limit *g, int64_t now);

/* slots.c: a global max_inflight (struct qg_slots). */
void qg_slots_hold(struct daemon *d, struct qg_limit *g);
void qg_call_slots(struct daemon *d, uint32_t i, int64_t now);
void qg_apply_slots(struct qg_limit *g, const long long *v);
void qg_tick_slots(struct daemon *d, struct qg_limit *g, uint32_t i, int64_t now);
void qg_slots_limit(struct qg_limit *g, const struct qd_quota *qc, uint32_t id,
		struct qd_global *old, int64_t now);
void qg_slots_status(const struct qg_limit *g, cJSON *o);

/* spend.c: a global budget_usd (struct qg_spend). */
void qg_spend_hold(struct daemon *d, struct qg_limit *g);
void qg_call_spend(struct daemon *d, uint32_t i, int64_t now);
void qg_apply_spend(struct qg_limit *g, const long long *v);
void qg_tick_spend(struct daemon *d, struct qg_limit *g, uint32_t i, int64_t now);
void qg_spend_limit(struct qg_limit *g, const struct qd_quota *qc, uint32_t id, uint32_t kind,
		struct qd_global *old, int64_t now);
void qg_spend_status(const struct qg_limit *g, cJSON *o);

#endif /* QUOTAD_GLOBAL_INT_H */
