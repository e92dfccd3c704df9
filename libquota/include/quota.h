/* SPDX-License-Identifier: MIT */
/*
 * quota.h - the only public header of libquota.
 *
 * libquota lets every process on a host share one LLM provider's rate limits
 * and spend budget through a table in POSIX shared memory that quotad creates.
 * A worker reserves a request's budget before calling the API and commits the
 * usage the response reports (or cancels) afterwards. Reserve, commit and
 * cancel are lock-free atomics in the caller's own process: no syscall, no
 * lock, no round trip to the daemon (sleeping because the caller asked to wait
 * for budget is the only exception).
 *
 * Conventions: every function returns 0 (or a non-negative value) on success
 * and a negative errno on failure; outputs are written only on success unless
 * said otherwise; destructors accept NULL; nothing here prints, logs or aborts.
 */
#ifndef QUOTA_H
#define QUOTA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define QUOTA_PUBLIC __attribute__((visibility("default")))
#else
#define QUOTA_PUBLIC
#endif

#define QUOTA_VERSION_MAJOR 2
#define QUOTA_VERSION_MINOR 2

/* Longest quota name, without the terminating NUL. */
#define QUOTA_NAME_MAX 63

/**
 * A process's handle on one segment. Opaque. One per process is enough: a
 * handle may be used by any number of threads at once (each thread that
 * uses it takes a client slot of its own on first use, so a segment's
 * max_clients counts threads). A ticket may be settled by any thread of the
 * handle that took it. quota_close() must not run while another thread uses
 * the handle.
 */
typedef struct quota_client quota_client;

/**
 * What one API call may consume: usually {1, prompt tokens, max_tokens} at
 * reserve time and {1, usage.prompt_tokens, usage.completion_tokens} at commit.
 */
struct quota_cost {
	uint64_t requests;
	uint64_t input_tokens;
	uint64_t output_tokens;
};

/**
 * An admitted reservation, filled by quota_reserve(). Settle it exactly once
 * with quota_commit() or quota_cancel(), through the handle that took it (a
 * ticket of another handle, or of an earlier quota_open(), is refused with
 * -EINVAL). Do not copy a ticket and settle both copies: the library detects
 * a second settle of the same ticket object, not of a copy; nor settle one
 * ticket from two threads at once.
 */
struct quota_ticket {
	int64_t waited_ns;      /* how long quota_reserve() slept before admitting */
	int64_t retry_after_ns; /* on -EAGAIN: earliest delay worth retrying after */
	uint64_t private_[48];  /* owned by the library */
};

/**
 * Attach to the segment @segment (the POSIX shm object "/@segment"). NULL
 * means $QUOTA_SEGMENT, else "quota". Validates the segment completely and
 * takes a slot in its client table. Waits (up to 2 s) while quotad is still
 * initializing the segment.
 *
 * Returns 0 and sets *@ret, or: -ENOENT no such segment; -EACCES not allowed;
 * -EBADMSG not a quota segment or corrupt (bad sizes, offsets or indices);
 * -EPROTONOSUPPORT a layout major or incompatible flag this library does not
 * know; -ETIMEDOUT still initializing; -EUSERS the client table is full;
 * -EINVAL bad name; -ENOMEM. quotad is told about the new client at once
 * (so it reclaims the slot promptly if the process dies).
 */
QUOTA_PUBLIC int quota_open(const char *segment, quota_client **ret);

/**
 * Detach: gives back the in-flight slots of tickets still open (tokens they
 * were charged stay charged), folds this handle's statistics into the
 * segment's totals and frees its client slots. NULL is fine. No other
 * thread may be using @c.
 */
QUOTA_PUBLIC void quota_close(quota_client *c);

/**
 * Quota id (>= 0) of the quota named @quota_name, or -ENOENT, -EINVAL;
 * -EAGAIN if quotad kept republishing the name index (reloads) throughout.
 * Ids are stable: a removed quota keeps its id, and comes back with it.
 */
QUOTA_PUBLIC int quota_find(quota_client *c, const char *quota_name);

/**
 * Reserve @cost against every limit of @quota, all or nothing.
 *
 * Returns 0 when admitted; the ticket is then open. If the budget is short
 * now and @timeout_ns > 0, the reservation takes its place in line at once
 * and the call sleeps until its slot, at most @timeout_ns; waited_ns says
 * how long it slept. @timeout_ns == 0 never sleeps. Order: reservations
 * waiting for rate budget are admitted in the order they took their place
 * (first come, first served), except that one whose place was moved by
 * refunds while it slept (by more than an eighth of the limit's burst)
 * queues again at the back; reservations waiting for an in-flight slot
 * (max_inflight) are all woken when one frees and race for it: no order.
 *
 * Errors: -EAGAIN not admissible within @timeout_ns (nothing was charged;
 * ret->retry_after_ns holds the earliest delay worth retrying after; only
 * that field of *@ret is written; on a global max_inflight whose host has
 * not heard from Redis for half the slots' lease, at once, reason
 * QUOTA_REJECT_INFLIGHT, retry after 1 s); -E2BIG can never be admitted (a cost above
 * a limit's capacity, input + output above the context window, or a spend
 * above the budget); -EDQUOT the spend budget of the current day or month is
 * reached; -ENOENT unknown or removed quota; -EINVAL bad arguments (NULL, a
 * negative timeout, an all-zero cost, token sums that overflow); -ENOSPC this
 * thread holds in-flight slots on 64 other quotas at this moment;
 * -EBADMSG the quota's configuration in the segment is damaged; -ECHILD a
 * handle of the parent process; -EPERM a read-only handle; -EUSERS no
 * client slot free for this thread's first call.
 */
QUOTA_PUBLIC int quota_reserve(quota_client *c, int quota, const struct quota_cost *cost,
			       int64_t timeout_ns, struct quota_ticket *ret);

/* ---- Priority lanes and streams (2.1) ----------------------------------- */

/* A quota's config may list priority lanes, highest first ("lanes":
 * {"interactive": {"headroom": 0.2}, "batch": {}}). A lane's headroom is the
 * share of every limit's capacity the lanes below it must leave free: they
 * are admitted only while it is, decided on the same GCRA words. */
#define QUOTA_LANES_MAX 4
/* The quota's last (lowest) lane: what quota_reserve() uses. */
#define QUOTA_LANE_DEFAULT UINT32_MAX

/**
 * Options of quota_reserve_ex(). Initialise with quota_reserve_opts_init(),
 * which records sizeof as the caller was compiled: later versions append
 * fields.
 */
struct quota_reserve_opts {
	uint32_t size;  /* set by quota_reserve_opts_init() */
	uint32_t lane;  /* from quota_lane(), or QUOTA_LANE_DEFAULT */
	uint64_t flags; /* 0 */
	/* With "auto_estimate": the most output tokens the call may produce
	 * (its max_tokens), bounding the learned estimate; 0 = none. */
	uint64_t max_output_tokens;
	/* 2.2: for a caller that waits in several calls (slices), the segment
	 * clock's time (quota_now()) its first call began: a lower lane's
	 * waiter then keeps its place in line from there (later than this
	 * call's start counts as it). 0 = this call's start; negative: -EINVAL. */
	int64_t queued_since_ns;
	uint64_t reserved_[4];
};

/** Zero *@o, set its size to @size (pass sizeof(*@o)) and its lane to
 * QUOTA_LANE_DEFAULT. */
QUOTA_PUBLIC void quota_reserve_opts_init(struct quota_reserve_opts *o, size_t size);

/**
 * The index of the lane named @name of @quota (0 = highest), -ENOENT if it
 * has no such lane (or no lanes), -EINVAL, -EBADMSG.
 */
QUOTA_PUBLIC int quota_lane(quota_client *c, int quota, const char *name);

/**
 * quota_reserve() with options: @opts->lane says the lane (a lane the quota
 * does not have, or no longer has after a reload, counts as its last; on a
 * quota without lanes every lane is the one). A lane below the top is
 * admitted only while the headroom of the lanes above it stays free; when
 * it must wait it holds no place in line and sleeps until its lane would
 * admit it, so a higher lane's reservation never queues behind it. Its
 * lane's waiters still take their turns in the order their calls began: a
 * waiter decides only once no earlier waiter of the quota's lane is left
 * (admitted, refused, or past its deadline), and a reservation that would
 * fit at once does not pass them either: it waits behind them, or with no
 * time left (@timeout_ns 0) is refused with -EAGAIN. The top lane's waiters
 * keep first come, first served.
 * -E2BIG also for a cost above what the lane may hold at once.
 * @opts NULL is the default lane. -EINVAL for a @opts->size below 2.1's or
 * unknown flags; otherwise as quota_reserve().
 */
QUOTA_PUBLIC int quota_reserve_ex(quota_client *c, int quota, const struct quota_cost *cost,
				  int64_t timeout_ns, const struct quota_reserve_opts *opts,
				  struct quota_ticket *ret);

/**
 * Take @more tokens for the open ticket @t of a call that is still running
 * (a stream that outgrows its estimate), in the ticket's lane, all or
 * nothing on every limit, waiting up to @timeout_ns as quota_reserve()
 * does. @more->requests must be 0. The ticket then holds its estimate plus
 * @more; its in-flight slot stays held. Returns 0 (t->waited_ns set), or
 * -EAGAIN with t->retry_after_ns (nothing charged, the ticket unchanged),
 * -E2BIG (above a limit's capacity or the context window with what the
 * ticket holds), -EDQUOT, -EINVAL (a ticket not open, of another handle,
 * requests != 0, zero tokens).
 */
QUOTA_PUBLIC int quota_extend(quota_client *c, struct quota_ticket *t,
			      const struct quota_cost *more, int64_t timeout_ns);

/**
 * Mid-stream: lower the open ticket @t's estimate to @estimate (the most
 * the call can still consume in all; each token field at most the ticket's,
 * requests equal to the ticket's) and give back the difference as a commit
 * would. The ticket stays open and keeps its in-flight slot; settle it with
 * quota_commit() or quota_cancel(). A quota whose refund policy is "none"
 * keeps its estimate (returns 0). Refunds come from the ticket's last piece
 * (the last extension, or the reservation): what earlier pieces held is
 * spent. -EINVAL for a ticket not open, of another handle, or an estimate
 * above the ticket's.
 */
QUOTA_PUBLIC int quota_settle_partial(quota_client *c, struct quota_ticket *t,
				      const struct quota_cost *estimate);

/**
 * Settle an open ticket with what the provider reports as used. Where the
 * quota's refund policy is "actual", unused tokens go back to the budget as
 * far as that is safe (see docs/ARCHITECTURE.md); usage above the estimate is
 * charged as debt that later reservations pay. Fewer @actual->requests than
 * reserved give the difference back whatever the policy (those calls were
 * not made): pass the reserved count, usually 1. Spend is settled at
 * @actual. The in-flight slot is released. -EINVAL for a ticket already
 * settled, of another handle, or an @actual field above 2^62.
 */
QUOTA_PUBLIC int quota_commit(quota_client *c, struct quota_ticket *t,
			      const struct quota_cost *actual);

/**
 * The call never reached the provider: give back everything the ticket holds
 * (as far as safe, as for a refund). -EINVAL for a ticket already settled.
 */
QUOTA_PUBLIC int quota_cancel(quota_client *c, struct quota_ticket *t);

/**
 * The provider answered 429: pause @quota for every process until
 * @retry_after_ns from now. A later deadline wins over an earlier one.
 */
QUOTA_PUBLIC int quota_backoff(quota_client *c, int quota, int64_t retry_after_ns);

/**
 * Move the shared clock of a manual-clock segment to @now_ns (nanoseconds,
 * never backwards: -EINVAL) and wake the processes waiting on it. -EPERM on a
 * segment that uses CLOCK_MONOTONIC.
 */
QUOTA_PUBLIC int quota_clock_set(quota_client *c, int64_t now_ns);

/** Human-readable text for a negative errno returned by this library. */
QUOTA_PUBLIC const char *quota_strerror(int err);

/* ---- Introspection ---------------------------------------------------- */

/** The segment's current time in nanoseconds (its clock: monotonic or manual). */
QUOTA_PUBLIC int64_t quota_now(quota_client *c);

/**
 * When an open or settled ticket was admitted, on the segment's clock: the
 * instant the algorithm's bound is stated for (see docs/ARCHITECTURE.md).
 * -EINVAL for a ticket quota_reserve() never filled.
 */
QUOTA_PUBLIC int64_t quota_ticket_time(const struct quota_ticket *t);

/** Number of quota ids in use (ids are 0 .. n-1; some may be removed). */
QUOTA_PUBLIC int quota_count(quota_client *c);

/** The rate limits a quota can have. Each is per minute or per day. */
enum quota_limit_kind {
	QUOTA_RPM,  /* requests per minute */
	QUOTA_RPD,  /* requests per day */
	QUOTA_TPM,  /* input + output tokens per minute */
	QUOTA_TPD,  /* input + output tokens per day */
	QUOTA_ITPM, /* input tokens per minute */
	QUOTA_ITPD, /* input tokens per day */
	QUOTA_OTPM, /* output tokens per minute */
	QUOTA_OTPD, /* output tokens per day */
	QUOTA_RATE_KINDS /* kinds known to this version of the header */
};

/** Why a reservation was refused; counted per quota. */
enum quota_reject_reason {
	/* QUOTA_RPM .. QUOTA_OTPD: that rate limit was short */
	QUOTA_REJECT_INFLIGHT = QUOTA_RATE_KINDS, /* max_inflight reached */
	QUOTA_REJECT_SPEND,                       /* spend budget reached (-EDQUOT) */
	QUOTA_REJECT_TOO_BIG,                     /* -E2BIG */
	QUOTA_REJECT_PAUSED,                      /* paused by quota_backoff() */
	QUOTA_REJECT_REASONS /* reasons known to this version of the header */
};

/* Room in struct quota_info for kinds and reasons later versions add: the
 * arrays never change size, so the struct only grows at its end. */
#define QUOTA_INFO_KINDS 16
#define QUOTA_INFO_REASONS 32

struct quota_limit_info {
	uint64_t limit;     /* units per period; 0 = no such limit */
	uint64_t capacity;  /* largest cost admissible at once: ceil(limit * burst) */
	uint64_t available; /* cost admissible now without waiting (0 if in debt) */
	int64_t period_ns;  /* 60 s or 86400 s */
};

/**
 * A snapshot of one quota, for tools. Units: USD amounts in nano-dollars.
 * Later versions only append fields; quota_info() fills as much as the
 * caller's struct holds.
 */
struct quota_info {
	char name[QUOTA_NAME_MAX + 1];
	int32_t removed; /* 1 if a reload removed this quota */
	int32_t refund_actual;
	struct quota_limit_info rate[QUOTA_INFO_KINDS]; /* by enum quota_limit_kind */
	uint64_t max_inflight, inflight; /* max 0 = no limit */
	uint64_t context_window;         /* 0 = no limit */
	uint64_t price_input_pusd, price_output_pusd; /* pico-USD per token */
	uint64_t budget_day_nusd, spent_day_nusd;
	uint64_t budget_month_nusd, spent_month_nusd;
	int64_t paused_ns;               /* time left of a backoff, 0 if none */
	uint64_t admitted;               /* reservations admitted */
	uint64_t admitted_input_tokens, admitted_output_tokens; /* settled at commit */
	uint64_t rejected[QUOTA_INFO_REASONS]; /* by enum quota_reject_reason */
	uint64_t reclaimed;              /* in-flight slots given back for dead clients */
	uint64_t repaired;               /* in-flight drift corrected by quotad's audits */
	uint64_t generation;             /* of the configuration shown */
	/* 2.1: lanes, learning, alarms. */
	uint32_t lanes;                  /* priority lanes; 0 = none */
	uint32_t learn;                  /* 0 no, 1 "learn", 2 "auto_estimate" (learns too) */
	uint64_t learned_output;         /* suggested output reservation: quotad's p99 of
					  * actual output tokens (bucket's upper edge); 0 = not
					  * yet; UINT64_MAX = 2048 or more (use max_tokens) */
	uint64_t learned_samples;        /* the (decayed) weight it comes from */
	uint64_t output_hist[16];        /* live clients' output tokens, half octaves:
					  * [0] < 16, [1] 16-23, [2] 24-31, [3] 32-47, [4] 48-63,
					  * ... [12] 768-1023, [13] 1024-1535, [14] 1536-2047,
					  * [15] 2048 and up */
	uint64_t alarm_held;             /* tickets settled after more than alarm_held_ns */
	uint64_t alarm_over;             /* commits above alarm_over_pct % of their estimate */
	int64_t alarm_held_ns;           /* 0 = that alarm is off */
	uint64_t alarm_over_pct;         /* 0 = that alarm is off */
	/* 2.2 (layout major 3): prompts, the output's actual/estimated ratio,
	 * tickets still open. A caller compiled against 2.1 passes the smaller
	 * size and gets the fields above only. */
	uint64_t learned_input_p50;      /* quotad's p50 / p99 of prompt (input) tokens of */
	uint64_t learned_input_p99;      /* commits, bucket's upper edge; 0 = not yet;
					  * UINT64_MAX = 131072 or more */
	uint64_t learned_ratio_p50;      /* quotad's p50 / p99 of actual / estimated output */
	uint64_t learned_ratio_p99;      /* tokens, in 1/256 (256 = as estimated), bucket's
					  * upper edge; 0 = not yet; UINT64_MAX = 8 or more */
	uint64_t input_hist[16];         /* live clients' prompt tokens: [0] < 1024, [1]
					  * 1024-1535, [2] 1536-2047, [3] 2048-3071, ...
					  * [14] 98304-131071, [15] 131072 and up (output_hist's
					  * buckets times 64) */
	uint64_t ratio_hist[16];         /* their actual / estimated output in 1/256, the
					  * buckets of output_hist: [0] < 1/16, ... [8] 3/4-1,
					  * [9] 1-1.5, [10] 1.5-2, ... [15] 8 and up */
	uint64_t held_open;              /* tickets open longer than alarm_held_ns as of
					  * quotad's last alarm phase flip */
	uint64_t held_flips;             /* quotad's phase flips of this quota (every
					  * alarm_held_ns) since it started serving it */
};

/**
 * Fill *@ret with a snapshot of @quota (sums every client's counters).
 * @size is sizeof(*@ret) as the caller was compiled: pass sizeof(struct
 * quota_info). -EINVAL if @size is below the size of version 2.0's struct;
 * -ENOENT, -EBADMSG (damaged record).
 */
QUOTA_PUBLIC int quota_info(quota_client *c, int quota, struct quota_info *ret, size_t size);

/* ---- Provider feedback ------------------------------------------------ */

/**
 * What a provider's rate-limit response headers said. -1 marks "not present".
 * remaining_* are what the provider says is left; reset_*_ns how long until
 * that limit is full again. Initialise with quota_feedback_init(), which
 * records sizeof as the caller was compiled: later versions append fields.
 */
struct quota_feedback {
	uint32_t size;  /* set by quota_feedback_init() */
	uint32_t flags; /* 0 */
	int64_t limit_requests, remaining_requests, reset_requests_ns;
	int64_t limit_tokens, remaining_tokens, reset_tokens_ns;
	int64_t retry_after_ns;
	int64_t reserved_[9]; /* -1 */
};

/** Set every field of *@fb to -1 (nothing known) and its size to @size
 * (pass sizeof(*@fb)). */
QUOTA_PUBLIC void quota_feedback_init(struct quota_feedback *fb, size_t size);

/**
 * Fold one HTTP response header into *@fb. Understands retry-after (seconds)
 * and x-ratelimit-{limit,remaining,reset}-{requests,tokens} (case-insensitive
 * names). Returns 1 if the header was used, 0 if it is not a rate-limit
 * header, -EINVAL if it is one but its value is malformed (*@fb unchanged).
 */
QUOTA_PUBLIC int quota_feedback_header(struct quota_feedback *fb, const char *name,
				       const char *value);

/**
 * Fold provider feedback into the shared state of @quota. Only ever
 * tightens: a per-minute request or token limit whose provider-side
 * remaining budget is below ours is brought down to it; nothing is ever
 * loosened. A retry_after acts as quota_backoff(). Returns 0, or 1 if the
 * provider reports a lower x-ratelimit-limit-* than the quota is configured
 * with (the configuration should be fixed: feedback cannot slow the rate).
 */
QUOTA_PUBLIC int quota_feedback_apply(quota_client *c, int quota,
				      const struct quota_feedback *fb);

/**
 * Parse a provider duration: "1s", "6m0s", "2m59.56s", "7.66s", "120ms",
 * "1h2m3s", "250us", "10ns" or a bare number of seconds ("20", "0.5").
 * Returns 0 and sets *@ret_ns, or -EINVAL (malformed) / -ERANGE (too long).
 */
QUOTA_PUBLIC int quota_parse_duration(const char *s, int64_t *ret_ns);

#ifdef __cplusplus
}
#endif
#endif /* QUOTA_H */
