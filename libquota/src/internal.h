/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the per-process half of libquota (nginx keeps ngx_shmtx_sh_t,
 * the shared half, apart from ngx_shmtx_t, the per-process half; so do we):
 * struct quota_client and its per-thread contexts, the decoded config cache,
 * the ticket's private layout, the clock, and the helpers reserve.c,
 * settle.c, client.c, info.c and feedback.c share.
 *
 * THREADS. A handle may be used by many threads at once. Each thread that
 * uses it gets a context of its own (struct qc_thread) holding its own
 * client slot in the segment, so that everything a thread writes in its slot
 * (its rows' statistics and held counts, its intent words) has one writer, as
 * the reclamation protocol needs (reclaim.c). A ticket may be settled by any
 * thread of the handle that took it: the settling thread releases through
 * its own row, whose held may go below zero; the process's sum over its
 * slots stays exact and quotad reclaims a dead process's slots together.
 */
#ifndef QUOTA_INTERNAL_H
#define QUOTA_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "gcra.h"
#include "layout.h"

struct qt_priv;

#define QC_NS_PER_S 1000000000LL
#define QC_DAY_NS (86400LL * QC_NS_PER_S)
#define QC_MINUTE_NS (60LL * QC_NS_PER_S)

/* A quota's configuration decoded for the hot path, cached per thread and
 * keyed by the config word it was read from. */
struct qc_cfg {
	uint64_t word;
	uint32_t n;      /* limits in lim[] */
	uint32_t flags;  /* QS_REC_* */
	uint64_t context_window, max_inflight;
	uint64_t price_in_pusd, price_out_pusd;
	uint64_t budget_day_nusd, budget_month_nusd;
	int8_t pos[QS_KINDS]; /* kind -> index in lim[], -1 none */
	/* The fast paths apply (reserve.c, settle.c): 1 or 2 rate limits, no
	 * in-flight limit, no budget, not removed; fast_settle also no prices. */
	bool fast, fast_settle;
	struct qs_limit_cfg lim[QS_KINDS];
	/* The last cost's units and charge per limit (this thread's): most
	 * reservations repeat a cost (requests: always 1). */
	uint64_t last_units[QS_KINDS], last_inc[QS_KINDS];
	/* The end of this thread's last slot on lim[0] (fast()): a TAT found
	 * there means no other process took a slot in between. */
	int64_t last_end;
	/* Each limit's TAT and refund_done words in the quota entry. */
	_Atomic int64_t *tat[QS_KINDS];
	_Atomic uint64_t *done[QS_KINDS];
	/* Priority lanes (0: none, one lane): lane_tau[i][k] is limit k's
	 * tolerance for lane i (reserve.c, LANES), lane_tau[0][k] = tau. Last,
	 * apart from what fast() reads. */
	uint32_t nlanes;
	char lane_name[QS_LANES][QS_LANE_NAME];
	int64_t lane_tau[QS_LANES][QS_KINDS];
	/* Learning and alarms (settle.c): commits of such quotas take the
	 * general settle path, auto-estimated reservations the general path. */
	uint32_t flags2;         /* QS_REC2_* */
	uint32_t alarm_over_pct;
	int64_t alarm_held_ns;
};

struct qc_thread {
	struct quota_client *c;
	uint32_t slot;           /* our client slot */
	struct qs_client *cs;
	uint64_t slot_word;      /* its state word (generation | pid | LIVE) */
	uint16_t *row_of;        /* quota id -> row index + 1 (0: none yet) */
	uint32_t rows_used;
	uint32_t evict_next;     /* where the next row eviction looks first */
	struct qc_cfg **cfg;     /* quota id -> decoded config, allocated on use */
	uint64_t cas_retries;    /* failed CASes on rate limits (benchmarks) */
	uint32_t wait_no;        /* the number of this slot's last lower-lane wait */
	_Atomic int in_use;      /* a live thread owns this context */
	struct qc_thread *next;  /* the handle's list */
};

struct quota_client {
	struct qs_geom g;
	bool manual;             /* the segment keeps its own clock */
	bool observer;           /* attached read-only, no client slot */
	uint64_t nonce;          /* unique per open: tickets carry it */
	uint64_t fork_gen;       /* qc_fork_gen when opened: a forked child must reopen */
	char segment[256];
	pthread_key_t key;       /* this thread's context */
	pthread_mutex_t lock;    /* the list of contexts (slow path only) */
	struct qc_thread *threads;
	struct qc_thread *first; /* the opening thread's context */
};

/* Attach without taking a client slot, for tools that only read (quotactl
 * status, quotad's restart checks): reserve and friends return -EPERM. */
int qc_open_observer(const char *segment, quota_client **ret);

/* Bumped in every forked child (pthread_atfork): a handle opened before the
 * fork belongs to the parent. */
extern uint64_t qc_fork_gen;

/* The calling thread's context of @c (claimed on its first use): NULL with
 * *@err set (-EUSERS no client slot free, -ENOMEM). */
struct qc_thread *qc_thread_slow(struct quota_client *c, int *err);

/* The last handle this thread used and its context there: one compare on
 * the hot path instead of a pthread_getspecific() call. initial-exec: a
 * few bytes of static TLS, no __tls_get_addr call. The nonce makes a handle
 * closed and reopened at the same address miss. */
struct qc_tls {
	const struct quota_client *c;
	uint64_t nonce;
	struct qc_thread *t;
};
extern __thread struct qc_tls qc_tls __attribute__((tls_model("initial-exec")));

static inline struct qc_thread *qc_thread_get(struct quota_client *c, int *err)
{
	if (qc_tls.c == c && qc_tls.nonce == c->nonce)
		return qc_tls.t;
	struct qc_thread *t = pthread_getspecific(c->key);
	if (!t && !(t = qc_thread_slow(c, err)))
		return NULL;
	qc_tls = (struct qc_tls){ c, c->nonce, t };
	return t;
}

/* The checks every call that writes shared state starts with: a handle of
 * this process (-ECHILD after fork) that holds client slots (-EPERM for an
 * observer). Sets *@ret to the calling thread's context. */
static inline int qc_writer(struct quota_client *c, struct qc_thread **ret)
{
	*ret = NULL;
	if (c->fork_gen != qc_fork_gen)
		return -ECHILD;
	if (c->observer)
		return -EPERM;
	int err = 0;
	struct qc_thread *t = qc_thread_get(c, &err);
	if (!t)
		return err;
	*ret = t;
	return 0;
}

/*
 * The decoded config of quota @id for thread @t: the cached one while the
 * quota's config word is unchanged, else read and decoded again. Returns 0
 * and sets *@ret (a removed quota's too: QS_REC_REMOVED in its flags),
 * -ENOENT (no such id), -EBADMSG (damaged
 * record), -EAGAIN (quotad kept republishing), -ENOMEM.
 */
int qc_cfg_refresh(struct qc_thread *t, uint32_t id, struct qc_cfg **ret);

static inline int qc_cfg_get(struct qc_thread *t, uint32_t id, struct qs_quota *q,
			     struct qc_cfg **ret)
{
	/* acquire: pairs with quotad's publication of the word (records.c) */
	uint64_t w = atomic_load_explicit(&q->cfg, memory_order_acquire);
	struct qc_cfg *cf = t->cfg[id];
	if (cf && cf->word == w && w) {
		*ret = cf;
		return 0;
	}
	return qc_cfg_refresh(t, id, ret);
}

/* Give back what ticket @tk holds beyond @actual (cancel: @actual NULL),
 * through thread @t's row (settle.c). */
void qc_settle(struct qc_thread *t, struct qs_quota *q, struct qt_priv *tk,
	       const struct quota_cost *actual);

/* Decode @src into @out (limits' constants derived) for quota entry @q
 * (NULL: no word pointers): 0 or -EBADMSG. */
int qc_cfg_decode(const struct qs_config *src, uint64_t word, struct qs_quota *q, struct qc_cfg *out);

/* Ticket's private layout, inside quota_ticket.private_. */
#define QT_OPEN 0x514f50454e544b32ULL   /* open, may be settled */
#define QT_CLOSED 0x514f434c4f534532ULL /* settled */

struct qt_limit {
	int64_t end;       /* end of our slot on this limit's time line */
	uint64_t inc;      /* its length in ns */
	uint64_t done0;    /* refund_done of the kind, read before our CAS */
	uint32_t kind;     /* the limit's kind */
	uint32_t pad;
};

/* qt_priv.held: the in-flight slots taken in the low 24 bits (max_inflight
 * <= 1e6); the lane and flags above, so that fast(), which writes held = 0,
 * leaves lane 0 and no flags without a store of its own. */
#define QT_HELD(h) ((h) & 0xffffffu)
#define QT_LANE(h) (((h) >> 24) & 7u)
#define QT_LANE_BITS(lane) ((uint32_t)(lane) << 24)
/* HELD OPEN (held.c): the ticket counted itself open in its row, in the
 * alarm phase QT_OPEN_PHASE says; settling it subtracts it there. */
#define QT_OPEN_COUNTED (1u << 27)
#define QT_OPEN_PHASE (1u << 28)
/* The ticket was extended or partly settled: its slot on a limit is the
 * last piece taken, not the whole estimate (settle.c, EXTEND). */
#define QT_EXTENDED (1u << 30)
/* A waiting extension's own ticket (reserve.c): cancelling it undoes no
 * admission in the statistics. */
#define QT_EXTENSION (1u << 31)

struct qt_priv {
	uint64_t magic;
	uint64_t owner;     /* the handle's nonce */
	uint32_t quota;
	uint32_t nlimits;
	uint32_t held;      /* in-flight slots taken | lane | flags (QT_*) */
	uint32_t solo;      /* fast(): no other thread took a slot since ours before */
	uint64_t cfg_word;  /* the config the ticket was planned with */
	int64_t admitted_at;
	uint64_t requests, input_tokens, output_tokens;
	uint64_t spend_nusd;   /* charged at reserve (quotas with a budget), else 0 */
	uint32_t day, month;   /* spend periods charged */
	struct qt_limit lim[QS_KINDS];
	int64_t piece_at;      /* QT_EXTENDED by quota_extend(): when its last piece was admitted */
};
static_assert(sizeof(struct qt_priv) <= sizeof(((struct quota_ticket *)0)->private_),
	      "ticket private area");

static inline struct qt_priv *qt_priv(struct quota_ticket *t)
{
	return (struct qt_priv *)(void *)t->private_;
}

/* @ticket's private part if it is open and issued by @c, else NULL (a
 * settled ticket, another handle's, or garbage). */
static inline struct qt_priv *qc_open_ticket(const struct quota_client *c, struct quota_ticket *ticket)
{
	if (!c || !ticket)
		return NULL;
	struct qt_priv *tk = qt_priv(ticket);
	return tk->magic == QT_OPEN && tk->owner == c->nonce && tk->nlimits <= QS_KINDS ? tk : NULL;
}

/* The segment's clock: CLOCK_MONOTONIC, or the shared manual time. */
static inline int64_t qc_clock(const struct quota_client *c)
{
	if (c->manual)
		/* seq_cst: pairs with quota_clock_set(); the refund/waiter argument
		 * (gcra.c) orders clock reads against refund_begun (a plain mov on
		 * x86) */
		return atomic_load_explicit(&c->g.h->manual_now_ns, memory_order_seq_cst);
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

/* The quota entry for @id, or NULL if out of range. */
static inline struct qs_quota *qc_quota(const struct quota_client *c, int id)
{
	return id < 0 ? NULL : qs_quota_at(&c->g, (uint32_t)id);
}

/* Assign thread @t a row for quota id, giving up (statistics folded) a
 * row that holds no in-flight slot if all 64 are taken: NULL if every row
 * holds in-flight slots. */
struct qs_row *qc_row_new(struct qc_thread *t, uint32_t id);

/* The row of thread @t for quota id (assigned on first use), or NULL if
 * every row is taken. */
static inline struct qs_row *qc_row(struct qc_thread *t, uint32_t id)
{
	uint16_t r = t->row_of[id];
	return r ? &t->cs->rows[r - 1] : qc_row_new(t, id);
}

/* Fold a row's statistics into its quota's totals and free the row
 * (quota_close(), row eviction, quotad's reclamation). Its open-ticket
 * counts are dropped: tickets of a closed handle or a dead process can
 * never be settled (an evicted row counts none). */
void qc_row_fold(struct qs_quota *q, struct qs_row *row);

/* One writer (the row's thread): a relaxed load and store, no lock prefix. */
static inline void qc_row_add(_Atomic uint64_t *f, uint64_t v)
{
	atomic_store_explicit(f, atomic_load_explicit(f, memory_order_relaxed) + v,
			      memory_order_relaxed);
}

/* Give back @n in-flight slots of quota @q (id @id) through thread @t's row. */
void qc_inflight_release(struct qc_thread *t, struct qs_quota *q, struct qs_row *row, uint32_t id,
			 uint32_t n);

/* Wake the processes sleeping for an in-flight slot of @q, if any. */
void qc_inflight_wake(struct qs_quota *q);

/* Nano-USD for a token count at a config's prices, rounded up; saturates. */
uint64_t qc_spend_nusd(const struct qc_cfg *cf, uint64_t in, uint64_t out);

/* Raise the amount that spend word @w holds for @period to at least
 * @amount (quotad: the spend ledger restored at start; a global budget
 * blocked, nothing left to spend under a budget of @amount, until quotad
 * meters the word). */
void qc_spend_raise(_Atomic uint64_t *w, uint32_t period, uint64_t amount);

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

/* Count a rejection for @reason in thread @t's row (or the shared overflow
 * counters if it has none). */
void qc_count_reject(struct qc_thread *t, struct qs_quota *q, uint32_t id, unsigned reason);

/* Units of a cost a limit kind counts. */
static inline uint64_t qc_units_of(uint32_t kind, uint64_t req, uint64_t in, uint64_t out)
{
	switch ((kind >> 1) & 3) {
	case 0: return req;            /* RPM, RPD */
	case 1: return in + out;       /* TPM, TPD */
	case 2: return in;             /* ITPM, ITPD */
	default: return out;           /* OTPM, OTPD */
	}
}

/* The abstract unix datagram address quotad listens on for segment @segment
 * (client slot claims, so that quotad watches a new client at once). */
int qc_notify_addr(const char *segment, void *sockaddr_un, unsigned *ret_len);

/* reclaim.c, quotad only: see there. */
struct qc_reclaim_counts {
	uint32_t given;     /* in-flight slots given back */
	uint32_t audits;    /* in-flight audits done */
	uint32_t anomalies; /* give-backs clamped at zero */
	uint32_t repaired;  /* slots of drift an audit corrected */
};
int qc_reclaim_group(const struct qs_geom *g, const uint32_t *slots, uint32_t n,
		     struct qc_reclaim_counts *counts);
/* Audit the in-flight counts of up to @max quotas from *@cursor on
 * (advanced), repairing drift: 0, or -EAGAIN if some were busy or a
 * reclamation is in progress. */
int qc_audit_some(const struct qs_geom *g, uint32_t *cursor, uint32_t max,
		  struct qc_reclaim_counts *counts);
/* Set the in-flight slots quotad holds back on @q to @hold (global.c): the
 * workers' cap becomes max_inflight - @hold. Returns the slots the workers
 * held at that instant (count - hold), read by the same RMW. */
uint32_t qc_inflight_hold_set(struct qs_quota *q, uint64_t hold);

/* waitline.c: the order of lower-lane waiters (reserve.c, LANES). */
struct qc_waiter {
	uint32_t slot;
	uint64_t key;
	int64_t since, until;
};
/* Publish that thread @t waits in line @line (QS_WAIT_LINE_OF) since
 * @since, until @until; returns the key published. */
uint64_t qc_wait_begin(struct qc_thread *t, uint64_t line, int64_t since, int64_t until);
/* The wait of slot @cs is over (its owner's end, or the slot's claim,
 * close or reclamation): cleared, and the waiter behind it woken. */
void qc_wait_end(const struct qs_geom *g, struct qs_client *cs);
/* Whether lane @lane of quota @q may have waiters (its count is nonzero):
 * one load, so that a reservation that fits now looks for them only then. */
bool qc_wait_any(const struct qs_quota *q, uint32_t lane);
/* quotad's audit of the waiter counts: the counts a scan of the client
 * slots finds, per quota and lane, in @seen; a count that disagrees with
 * them at two checks in a row, with the same values, is set to what the
 * scan found (a process died between counting and publishing, or between
 * clearing and uncounting). @prev: 2 * QS_LANES * quota_capacity words of
 * the caller's, zeroed at first; @seen: QS_LANES * quota_capacity words.
 * Returns the number of counts repaired. */
uint32_t qc_wait_audit(const struct qs_geom *g, uint32_t *prev, uint32_t *seen);
/* Is a waiter of line QS_WAIT_LINE(@key) ahead of the one in slot @self
 * that began at @since, at time @now? If so, *@ret is the last of them. */
bool qc_wait_ahead(const struct qs_geom *g, uint32_t self, uint64_t key, int64_t since, int64_t now,
		   struct qc_waiter *ret);
/* Sleep until waiter @w leaves its line (or is reclaimed), or the segment
 * clock passes its deadline or @deadline. On the manual clock, at most
 * QC_WAIT_POLL_NS of real time: the caller checks again. */
#define QC_WAIT_POLL_NS 1000000
void qc_wait_behind(const struct quota_client *c, const struct qc_waiter *w, int64_t deadline);

/* learn.c: estimates that learn. */
#define QC_LEARN_MIN_SAMPLES 100u /* below this, nothing is learned */
/* A row's histograms, in this order in every merged array. */
enum { QC_HIST_OUT, QC_HIST_IN, QC_HIST_RATIO, QC_HISTS };
/* Count value @x (already shifted) in histogram @h[2] (its one writer). */
void qc_hist_add(_Atomic uint64_t *h, uint64_t x);
/* @actual / @estimate in 1/QS_RATIO_ONE, saturating. */
uint64_t qc_hist_ratio(uint64_t actual, uint64_t estimate);
/* Add row @row's histograms to @counts[QC_HISTS * QS_HIST_BUCKETS]. */
void qc_learn_merge_row(uint64_t *counts, const struct qs_row *row);
/* The bucket holding the @permille-th quantile of histogram @counts
 * [QS_HIST_BUCKETS], -1 with fewer than QC_LEARN_MIN_SAMPLES; *@ret_samples
 * their weight. */
int qc_hist_quantile(const uint64_t *counts, uint32_t permille, uint64_t *ret_samples);
/* quotad: merge the live rows of the @n quotas with @learns[id] set and
 * publish learned_out, learned_samples, learned_in and learned_ratio.
 * @scratch holds QC_LEARN_SCRATCH(n) words. */
#define QC_LEARN_SCRATCH(n) ((size_t)(n) * QC_HISTS * QS_HIST_BUCKETS)
void qc_learn_publish(const struct qs_geom *g, const uint8_t *learns, uint32_t n, uint64_t *scratch);

/* held.c: tickets still open (alarm held_s), quotad's phase flips. */
/* Quota @id's open counts of one live process (all its slots). */
struct qc_held_group {
	int32_t pid;
	uint64_t start;   /* /proc start time */
	int64_t open[2];  /* by phase */
};
/* What quotad remembers per process and quota from the last flip. */
struct qc_held_entry {
	uint32_t quota;
	int32_t pid;
	uint64_t start;
	uint64_t old;     /* tickets of the parity just flipped from, open since the flip before */
	uint64_t open;    /* shown: tickets open longer than held_s */
};
#define QC_HELD_MAX_ENTRIES 65536u /* bounded: beyond, processes are not remembered */
struct qc_held_state {
	struct qc_held_entry *e;
	uint32_t n, cap;
};
/* Sum quota @id's open counts per live process into @out (room for
 * client_capacity): the number of processes. */
uint32_t qc_held_sums(const struct qs_geom *g, uint32_t id, struct qc_held_group *out);
/* quotad: flip quota @id's alarm phase, counting before it the tickets open
 * longer than held_s per process (kept in @st) and in total (published in
 * held_open and returned). @scratch has room for client_capacity groups. */
uint64_t qc_held_flip(const struct qs_geom *g, uint32_t id, struct qc_held_state *st,
		      struct qc_held_group *scratch);
/* The entry of process @pid, @start for quota @id in @st, or NULL. */
struct qc_held_entry *qc_held_find(const struct qc_held_state *st, uint32_t id, int32_t pid, uint64_t start);
/* Forget quota @id's entries (its alarm was turned off). */
void qc_held_forget(struct qc_held_state *st, uint32_t id);

#endif /* QUOTA_INTERNAL_H */
