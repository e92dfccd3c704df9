/* SPDX-License-Identifier: MIT */
/*
 * layout.h - the shared segment's layout: the one definition that libquota,
 * quotad and quotactl all use. Offsets and indices only, never pointers;
 * fixed-width types only; every struct's size and every hot field's offset is
 * pinned by a static_assert so that a change shows up as a compile error and
 * a layout major bump, not as silent corruption.
 *
 *   +--------------------+ 0
 *   | qs_header          |  4 KiB: identity, geometry, daemon liveness, clock
 *   +--------------------+ quota_off
 *   | qs_quota[cap]      |  1 KiB each: config lines, then hot lines, then stats
 *   +--------------------+ index_off
 *   | qs_index[icap]     |  name hash -> quota id, open addressing (read-only
 *   |                    |  for clients; quotad writes it under index_seq)
 *   +--------------------+ client_off
 *   | qs_client[ccap]    |  one slot per attached process + its per-quota rows
 *   +--------------------+ size
 *
 * Who writes what is said at each field. "quotad" means the process that
 * created the segment (or a later quotad that adopted it).
 */
#ifndef QUOTA_LAYOUT_H
#define QUOTA_LAYOUT_H

#include <assert.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "quota.h"

#define QS_MAGIC 0x3147455341544f51ULL /* "QOTASEG1" little-endian */
#define QS_MAJOR 1
#define QS_MINOR 0
#define QS_CACHELINE 64
#define QS_HEADER_SIZE 4096

/* incompat_flags: a client that does not know a set bit must refuse. */
#define QS_INCOMPAT_MANUAL_CLOCK (1ULL << 0)
#define QS_INCOMPAT_KNOWN (QS_INCOMPAT_MANUAL_CLOCK)
/* compat_flags: informative, may be ignored. */
#define QS_COMPAT_KNOWN 0ULL

/* header.state */
#define QS_STATE_INITIALIZING 0u
#define QS_STATE_READY 1u

/* Hard ceilings, so that a corrupt header cannot make a reader allocate or
 * walk something absurd. */
#define QS_MAX_QUOTAS 65536u
#define QS_MAX_CLIENTS 4096u
#define QS_CLIENT_ROWS 64u /* distinct quotas one process can track */

/* Limits per quota: the eight rate kinds of quota.h, in that order. */
#define QS_RATE_KINDS QUOTA_RATE_KINDS

struct qs_header {
	/* Identity and geometry: written by quotad before state becomes READY,
	 * never after. */
	uint64_t magic;
	uint16_t major;
	uint16_t minor;
	uint32_t header_size;
	uint64_t compat_flags;
	uint64_t incompat_flags;
	uint64_t segment_size;
	uint32_t quota_capacity; /* entries in the quota table */
	uint32_t quota_stride;   /* bytes per entry */
	uint64_t quota_off;
	uint32_t index_capacity; /* power of two, >= 2 * quota_capacity */
	uint32_t index_stride;
	uint64_t index_off;
	uint32_t client_capacity;
	uint32_t client_stride;
	uint64_t client_off;
	uint32_t client_rows;
	uint32_t pad0;
	int64_t created_realtime_ns; /* CLOCK_REALTIME at creation, informative */
	uint64_t reserved0[3];

	/* Line 2 (offset 128): control state, written by quotad. */
	_Atomic uint32_t state;        /* QS_STATE_*; READY published with release */
	_Atomic uint32_t quota_count;  /* ids 0..count-1 have been used */
	_Atomic uint64_t generation;   /* bumped by quotad on every config change */
	_Atomic uint32_t index_seq;    /* odd while quotad rewrites the index */
	_Atomic int32_t daemon_pid;    /* 0 when no quotad holds the segment */
	_Atomic int64_t heartbeat_ns;  /* segment clock, last quotad heartbeat */
	/* CLOCK_REALTIME - segment clock, so that the hot path can tell the UTC
	 * day and month (spend periods) from the one clock read it already does.
	 * Written by quotad at start and on every heartbeat. */
	_Atomic int64_t realtime_offset_ns;
	_Atomic uint64_t daemon_starttime; /* /proc start time of daemon_pid */
	_Atomic uint32_t client_seq;   /* bumped by quota_open(): quotad rescans */
	uint32_t pad2;
	uint64_t reserved1[1];

	/* Line 3 (offset 192): manual clock, written by quota_clock_set(). */
	_Atomic int64_t manual_now_ns;
	_Atomic uint32_t clock_seq;    /* futex word: bumped on every clock move */
	uint32_t pad1;
	uint64_t reserved2[6];

	uint8_t reserved_tail[QS_HEADER_SIZE - 256];
};
static_assert(sizeof(struct qs_header) == QS_HEADER_SIZE, "header size");
static_assert(offsetof(struct qs_header, state) == 128, "control line");
static_assert(offsetof(struct qs_header, manual_now_ns) == 192, "clock line");

/* One rate limit's configuration, derived by quotad from the config and
 * written only while the quota is not ACTIVE (or under the quota's cfg_seq). */
struct qs_limit_cfg {
	uint64_t limit;     /* units per period; 0 = unused slot */
	int64_t period_ns;  /* 60e9 or 86400e9 */
	uint64_t capacity;  /* largest admissible single cost, in units */
	int64_t tau_ns;     /* burst tolerance: capacity * period / limit, rounded down */
	uint64_t t_int;     /* floor(period / limit): ns per unit, integer part */
	uint64_t t_frac;    /* ceil(frac(period / limit) * 2^64) */
	uint64_t fast_cmax; /* costs below this use the multiply-only path */
	uint32_t kind;      /* enum quota_limit_kind */
	uint32_t pad;
};
static_assert(sizeof(struct qs_limit_cfg) == 64, "limit cfg size");

/* qs_quota.state */
#define QS_QUOTA_FREE 0u
#define QS_QUOTA_ACTIVE 1u
#define QS_QUOTA_REMOVED 2u

/* qs_quota.flags */
#define QS_QUOTA_REFUND_ACTUAL (1u << 0)

/* Spend words pack the period (UTC day or month number, mod 2^12) with the
 * amount spent in it (nano-USD, up to 2^52 = $4.5M per period). */
#define QS_SPEND_PERIOD_BITS 12
#define QS_SPEND_AMOUNT_BITS 52
#define QS_SPEND_AMOUNT_MAX ((1ULL << QS_SPEND_AMOUNT_BITS) - 1)

/* In-flight word: count in the low 32 bits, a sequence number bumped by every
 * change in the high 32 bits (quotad's audit detects quiet periods by it). */
#define QS_INFLIGHT_COUNT(w) ((uint32_t)(w))
#define QS_INFLIGHT_SEQ1 (1ULL << 32)

struct qs_quota {
	/* Lines 0-1: identity and scalar config (quotad). */
	char name[64];
	_Atomic uint32_t state;  /* QS_QUOTA_*; ACTIVE published with release */
	uint32_t flags;          /* QS_QUOTA_* */
	uint32_t nlimits;        /* rate limits in use: cfg[0 .. nlimits-1] */
	_Atomic uint32_t cfg_seq; /* odd while quotad rewrites the config (reload) */
	uint64_t context_window; /* 0 = none */
	uint64_t max_inflight;   /* 0 = none */
	uint64_t price_in_pusd;  /* pico-USD per input token */
	uint64_t price_out_pusd; /* pico-USD per output token */
	uint64_t budget_day_nusd;   /* 0 = none */
	uint64_t budget_month_nusd; /* 0 = none */

	/* Lines 2-9: rate limits (quotad). */
	struct qs_limit_cfg cfg[QS_RATE_KINDS];

	/* Line 10: the hot line. One reservation of a quota with up to four rate
	 * limits moves this line only. Written by every client with CAS. */
	_Atomic int64_t tat[4];         /* theoretical arrival time, cfg[0..3] */
	_Atomic uint64_t inflight;      /* QS_INFLIGHT_* */
	_Atomic int64_t paused_until;   /* quota_backoff(); segment clock */
	_Atomic uint64_t spend_day;     /* QS_SPEND_* packed */
	_Atomic uint64_t spend_month;

	/* Line 11: tat of cfg[4..7]; futex word for in-flight waiters. */
	_Atomic int64_t tat_hi[4];
	_Atomic uint32_t inflight_waiters; /* processes sleeping for a slot */
	_Atomic uint32_t inflight_futex;   /* bumped on every in-flight release */
	uint64_t reserved1[3];

	/* Lines 12-13: refund accounting per limit (see gcra.c): ns of refunds
	 * begun and finished. Written by commit/cancel, read by reserve. */
	_Atomic uint64_t refund_begun[QS_RATE_KINDS];
	_Atomic uint64_t refund_done[QS_RATE_KINDS];

	/* Lines 14-15: statistics of clients that left (folded in by
	 * quota_close() or quotad's reclamation) or that had no row free. */
	_Atomic uint64_t st_admitted;
	_Atomic uint64_t st_in_tokens;
	_Atomic uint64_t st_out_tokens;
	_Atomic uint64_t st_reclaimed;
	_Atomic uint64_t st_rejected[QUOTA_REJECT_REASONS];
};
static_assert(QUOTA_REJECT_REASONS == 12, "stats lines");
static_assert(sizeof(struct qs_quota) == 1024, "quota entry size");
static_assert(offsetof(struct qs_quota, cfg) == 128, "cfg lines");
static_assert(offsetof(struct qs_quota, tat) == 640, "hot line");
static_assert(offsetof(struct qs_quota, tat_hi) == 704, "hot line 2");
static_assert(offsetof(struct qs_quota, refund_begun) == 768, "refund lines");
static_assert(offsetof(struct qs_quota, st_admitted) == 896, "stats lines");

/* Name index entry: quota id + 1 (0 = empty) and the name's hash. */
struct qs_index {
	uint32_t id1;
	uint32_t hash;
};
static_assert(sizeof(struct qs_index) == 8, "index entry size");

/* Per-process, per-quota row: written only by the owning process (relaxed
 * atomics, so that readers see torn-free values), read by quotactl and by
 * quotad when it reclaims the slot. Two cache lines. */
struct qs_row {
	_Atomic uint32_t quota1;   /* quota id + 1; 0 = free row */
	_Atomic uint32_t held;     /* in-flight slots this process holds here */
	_Atomic uint64_t admitted;
	_Atomic uint64_t in_tokens;
	_Atomic uint64_t out_tokens;
	_Atomic uint64_t rejected[QUOTA_REJECT_REASONS];
};
static_assert(sizeof(struct qs_row) == 128, "row size");

/* qs_client.state: generation << 8 | status. */
#define QS_CLIENT_FREE 0u
#define QS_CLIENT_CLAIMING 1u
#define QS_CLIENT_LIVE 2u
#define QS_CLIENT_RECLAIMING 3u
#define QS_CLIENT_STATUS(w) ((uint32_t)((w) & 0xff))
#define QS_CLIENT_GEN(w) ((w) >> 8)

/* qs_client.intent: an in-flight change in progress, so that a process dying
 * between the shared counter and its own row is detectable:
 * quota id + 1 in the low 32 bits, the amount in the high 32 bits. */

struct qs_client {
	/* Line 0: written by the owner (and by quotad when reclaiming). */
	_Atomic uint64_t state;
	_Atomic int32_t pid;
	uint32_t pad0;
	_Atomic uint64_t starttime; /* /proc/<pid>/stat field 22 */
	_Atomic uint64_t intent;
	/* A refund in progress (quota id + 1, limit position + 1 << 32): a
	 * process that dies inside one leaves refund_begun ahead of
	 * refund_done; quotad's reclamation then audits that limit. */
	_Atomic uint64_t refund_intent;
	uint64_t reserved0[3];
	struct qs_row rows[QS_CLIENT_ROWS];
};
static_assert(sizeof(struct qs_client) == 64 + 128 * QS_CLIENT_ROWS, "client size");

/* Geometry chosen at creation. */
struct qs_geometry {
	uint32_t quota_capacity;
	uint32_t client_capacity;
	uint64_t incompat_flags;
};

/* The size of a segment with this geometry, or 0 if out of range. */
uint64_t qs_segment_size(const struct qs_geometry *g, uint32_t *ret_index_capacity);

/* Lay out an empty segment in @base (zeroed memory of qs_segment_size()
 * bytes): header in INITIALIZING state, no quotas. */
void qs_format(void *base, const struct qs_geometry *g);

/*
 * Validate a mapped segment of @size bytes before trusting anything in it:
 * magic, major, flags, sizes, every offset and stride, quota count, every
 * active quota's config and every index entry. Returns 0 or -EBADMSG,
 * -EPROTONOSUPPORT; -EAGAIN while the state is INITIALIZING.
 */
int qs_validate(const void *base, uint64_t size);

/* Validate one quota entry's config (used by qs_validate and on lookup). */
int qs_validate_quota(const struct qs_header *h, const struct qs_quota *q);

/* The configuration part of a quota entry: everything before the hot line. */
#define QS_QUOTA_CFG_BYTES offsetof(struct qs_quota, tat)

/* Copy @q's configuration (name, scalars, limits) into @out consistently:
 * retried while quotad rewrites it (cfg_seq odd or moved). The hot words of
 * @out are not filled. Returns 0, or -EAGAIN if it never settled. */
int qs_quota_snapshot(const struct qs_quota *q, struct qs_quota *out);
/* The same, copying only the scalars and the first @nlimits limit configs
 * (commit needs no more). */
int qs_quota_snapshot_n(const struct qs_quota *q, struct qs_quota *out, uint32_t nlimits);

static inline struct qs_quota *qs_quota_at(void *base, uint32_t id)
{
	struct qs_header *h = base;
	return (struct qs_quota *)((char *)base + h->quota_off + (uint64_t)id * h->quota_stride);
}

static inline struct qs_index *qs_index_at(void *base)
{
	struct qs_header *h = base;
	return (struct qs_index *)((char *)base + h->index_off);
}

static inline struct qs_client *qs_client_at(void *base, uint32_t slot)
{
	struct qs_header *h = base;
	return (struct qs_client *)((char *)base + h->client_off + (uint64_t)slot * h->client_stride);
}

static inline _Atomic int64_t *qs_tat(struct qs_quota *q, uint32_t k)
{
	return k < 4 ? &q->tat[k] : &q->tat_hi[k - 4];
}

/* FNV-1a, 32 bits: the index hash. */
uint32_t qs_name_hash(const char *name, size_t len);

/* Insert @id under @name into the index (quotad, while it holds index_seq odd
 * or before READY). -ENOSPC if full, -EEXIST if the name is there. */
int qs_index_insert(void *base, const char *name, uint32_t id);
/* Rebuild the index from the ACTIVE quotas (quotad, after removals). */
void qs_index_rebuild(void *base);
/* Look a name up: quota id or -ENOENT. Safe against concurrent rebuilds. */
int qs_index_find(void *base, const char *name);

#endif /* QUOTA_LAYOUT_H */
