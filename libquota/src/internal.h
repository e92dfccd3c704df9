/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the per-process half of libquota (nginx keeps ngx_shmtx_sh_t,
 * the shared half, apart from ngx_shmtx_t, the per-process half; so do we):
 * struct quota_client, the ticket's private layout, the clock, and the helpers
 * reserve.c, client.c, info.c and feedback.c share.
 */
#ifndef QUOTA_INTERNAL_H
#define QUOTA_INTERNAL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "layout.h"

#define QC_NS_PER_S 1000000000LL
#define QC_DAY_NS (86400LL * QC_NS_PER_S)
#define QC_MINUTE_NS (60LL * QC_NS_PER_S)

struct quota_client {
	void *base;          /* the mapping */
	uint64_t size;       /* its length, validated */
	struct qs_header *h;
	bool manual;         /* the segment keeps its own clock */
	uint32_t slot;       /* our client slot */
	struct qs_client *cs;
	uint64_t slot_word;  /* our slot's state word (generation | LIVE) */
	uint64_t fork_gen;   /* qc_fork_gen when opened: a forked child must reopen */
	uint16_t *row_of;    /* quota id -> row index + 1 (0: none yet) */
	uint32_t quota_capacity;
	uint32_t rows_used;
	uint64_t serial;     /* ticket serial numbers */
	uint64_t cas_retries; /* failed CASes on rate limits (benchmarks read it) */
};

/* Attach without taking a client slot, for tools that only read (quotactl
 * status, quotad's restart checks): reserve and friends must not be called
 * on such a handle. */
int qc_open_observer(const char *segment, quota_client **ret);

/* Bumped in every forked child (pthread_atfork): a handle opened before the
 * fork belongs to the parent. */
extern uint64_t qc_fork_gen;

/* Ticket's private layout, inside quota_ticket.private_. */
#define QT_OPEN 0x514f50454e544b31ULL   /* open, may be settled */
#define QT_CLOSED 0x514f434c4f534531ULL /* settled */

struct qt_limit {
	int64_t end;       /* end of our slot on this limit's time line */
	uint64_t inc;      /* its length in ns */
	uint64_t done0;    /* refund_done of the limit, read before our CAS */
	uint32_t kind;     /* the limit's kind when reserved (a reload may move it) */
	uint32_t pad;
};

struct qt_priv {
	uint64_t magic;
	uint64_t owner;     /* (uintptr_t)client ^ serial */
	uint64_t serial;
	uint32_t quota;
	uint32_t row1;      /* row index + 1, 0 if none */
	uint32_t nlimits;
	uint32_t held;      /* in-flight slots taken */
	int64_t admitted_at;
	uint64_t requests, input_tokens, output_tokens;
	uint64_t spend_nusd;   /* charged at reserve (quotas with a budget), else 0 */
	uint32_t day, month;   /* spend periods charged */
	struct qt_limit lim[QS_RATE_KINDS];
};
static_assert(sizeof(struct qt_priv) <= sizeof(((struct quota_ticket *)0)->private_),
	      "ticket private area");

static inline struct qt_priv *qt_priv(struct quota_ticket *t)
{
	return (struct qt_priv *)(void *)t->private_;
}

/* The segment's clock: CLOCK_MONOTONIC, or the shared manual time. */
static inline int64_t qc_clock(const struct quota_client *c)
{
	if (c->manual)
		/* seq_cst: pairs with quota_clock_set(); the refund/waiter argument
		 * (gcra.c) orders clock reads against refund_begun (a plain mov on
		 * x86) */
		return atomic_load_explicit(&c->h->manual_now_ns, memory_order_seq_cst);
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * QC_NS_PER_S + ts.tv_nsec;
}

/* Read the process start time (clock ticks since boot) of @pid from
 * /proc/<pid>/stat, or 0 if it cannot be read. */
uint64_t qc_proc_starttime(int pid);

/* UTC day number and month number (months since 1970-01) of a segment time. */
void qc_periods(const struct quota_client *c, int64_t now, uint32_t *day, uint32_t *month);
void qc_periods_of(int64_t realtime_ns, uint32_t *day, uint32_t *month);

/* The quota entry for id, or NULL if the id is out of range. */
static inline struct qs_quota *qc_quota(const struct quota_client *c, int id)
{
	if (id < 0 || (uint32_t)id >= c->quota_capacity)
		return NULL;
	return qs_quota_at(c->base, (uint32_t)id);
}

/*
 * The checks every call that writes a quota's state starts with: a handle
 * of this process (-ECHILD after fork), one that holds a client slot (-EPERM
 * for an observer), and an ACTIVE quota (-ENOENT). Sets *@ret.
 */
static inline int qc_writable_quota(const struct quota_client *c, int id, struct qs_quota **ret)
{
	if (c->fork_gen != qc_fork_gen)
		return -ECHILD;
	if (!c->cs)
		return -EPERM;
	struct qs_quota *q = qc_quota(c, id);
	/* acquire: pairs with quotad's release when it activates the quota */
	if (!q || atomic_load_explicit(&q->state, memory_order_acquire) != QS_QUOTA_ACTIVE)
		return -ENOENT;
	*ret = q;
	return 0;
}

/* Assign this process a row for quota id: NULL if every row is taken. */
struct qs_row *qc_row_new(struct quota_client *c, uint32_t id);

/* The row of this process for quota id (assigned on first use), or NULL if
 * every row is taken. */
static inline struct qs_row *qc_row(struct quota_client *c, uint32_t id)
{
	uint16_t r = c->row_of[id];
	return r ? &c->cs->rows[r - 1] : qc_row_new(c, id);
}

/* Give back @n in-flight slots of quota @q held through @row. */
void qc_inflight_release(struct quota_client *c, struct qs_quota *q, struct qs_row *row,
			 uint32_t id, uint32_t n);

/* Nano-USD for a token count at a quota's prices, rounded up; saturates. */
uint64_t qc_spend_nusd(const struct qs_quota *q, uint64_t in, uint64_t out);

/* Adjust the spend that word @w holds for period @period by @delta nano-USD.
 * If that period is over, a charge (delta > 0) goes to period @current and a
 * refund is dropped. */
void qc_spend_adjust(_Atomic uint64_t *w, uint32_t period, uint32_t current, int64_t delta);

static inline uint32_t qs_spend_period(uint64_t w)
{
	return (uint32_t)(w >> QS_SPEND_AMOUNT_BITS);
}
static inline uint64_t qs_spend_amount(uint64_t w)
{
	return w & QS_SPEND_AMOUNT_MAX;
}
static inline uint64_t qs_spend_pack(uint32_t period, uint64_t amount)
{
	return ((uint64_t)(period & ((1u << QS_SPEND_PERIOD_BITS) - 1)) << QS_SPEND_AMOUNT_BITS) |
	       (amount > QS_SPEND_AMOUNT_MAX ? QS_SPEND_AMOUNT_MAX : amount);
}
/* Spent so far in @period according to word value @w. */
static inline uint64_t qs_spend_in(uint64_t w, uint32_t period)
{
	return qs_spend_period(w) == (period & ((1u << QS_SPEND_PERIOD_BITS) - 1)) ?
		       qs_spend_amount(w) : 0;
}

/* Count a rejection for @reason in this process's row (or the shared
 * overflow counters if it has none). */
void qc_count_reject(struct quota_client *c, struct qs_quota *q, uint32_t id, unsigned reason);

int qc_reclaim_slot(void *base, uint32_t slot, uint64_t word, uint32_t counts[3]); /* reclaim.c, quotad only */

#endif /* QUOTA_INTERNAL_H */
