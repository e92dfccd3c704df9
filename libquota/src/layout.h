/* SPDX-License-Identifier: MIT */
/*
 * layout.h - the shared segment's layout (major 3): the one definition that
 * libquota, quotad and quotactl all use. Offsets and indices only, never
 * pointers; fixed-width types only; every struct's size and every hot
 * field's offset is pinned by a static_assert.
 *
 *   +--------------------+ 0
 *   | qs_header          |  4 KiB: identity, geometry, daemon liveness, clock,
 *   |                    |  the published name index word
 *   +--------------------+ quota_off
 *   | qs_quota[cap]      |  512 B each: the published config word and the hot
 *   |                    |  state (TATs, in flight, spend), refunds, statistics
 *   +--------------------+ record_off
 *   | qs_record[rcap]    |  512 B each: immutable config records (rcap = 2 cap + 2)
 *   +--------------------+ index_off
 *   | qs_index[2][icap]  |  two name tables: one published, one being built
 *   +--------------------+ client_off
 *   | qs_client[ccap]    |  one slot per attached thread + its per-quota rows
 *   +--------------------+ size
 *
 * PUBLICATION (records.c proves it). quotad never rewrites anything a client
 * may be reading: a quota's configuration is a record written while no quota
 * points to it and published by one release store of the quota's config
 * word (generation | record index); the name index likewise is built in the
 * table that is not published and published by one store of the header's
 * index word. A reader copies a record (atomic loads), then checks that the
 * record's stamp still equals the generation of the word it followed. A
 * writer killed at any instruction leaves the published words pointing at
 * complete records.
 *
 * GEOMETRY is read from the header once, validated and copied into private
 * memory (struct qs_geom) by whoever attaches; no offset, stride or capacity
 * is read from shared memory again. Everything else in the segment may be
 * garbage (a buggy process can write it): every index read from it is range
 * checked against the private geometry, every value bounded before use.
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

/* The magic names the family and has read "QOTASEG2" since major 2; it is
 * kept so that a library of major 2 refuses a segment of major 3 by its
 * major (-EPROTONOSUPPORT, "a newer layout"), not as a foreign object. */
#define QS_MAGIC 0x3247455341544f51ULL /* "QOTASEG2" little-endian */
/* Major 3 (libquota 2.2): client rows of 256 B, not 192 (prompt and ratio
 * histograms, tickets open per alarm phase): the client stride changed.
 * Minor 1: QS_REC_GLOBAL_INFLIGHT and the quota entry's inflight_until, in
 * what were reserved words. */
#define QS_MAJOR 3
#define QS_MINOR 1
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
#define QS_CLIENT_ROWS 64u /* distinct quotas one thread can track */

/* Limit kinds: the eight of quota.h. Kind k's TAT lives in hot line A
 * (per-minute kinds, k even) or B (per-day kinds, k odd) at index k / 2. */
#define QS_KINDS 8u
/* Reject reasons counted per quota (room beyond quota.h's for growth). */
#define QS_REASONS 16u

struct qs_header {
	/* Lines 0-1: identity and geometry, written by quotad before state
	 * becomes READY, never after. */
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
	uint32_t record_capacity;
	uint32_t record_stride;
	uint64_t record_off;
	uint32_t index_capacity; /* entries per table, power of two >= 2 * quota_capacity */
	uint32_t index_stride;
	uint64_t index_off;      /* table 0; table 1 follows it */
	uint32_t client_capacity;
	uint32_t client_stride;
	uint64_t client_off;
	uint32_t client_rows;
	uint32_t pad0;
	int64_t created_realtime_ns; /* CLOCK_REALTIME at creation, informative */
	uint64_t reserved0;

	/* Line 2 (offset 128): control state, written by quotad. */
	_Atomic uint32_t state;        /* QS_STATE_*; READY published with release */
	_Atomic uint32_t quota_count;  /* ids 0..count-1 have been used */
	_Atomic uint64_t generation;   /* last record/index generation handed out */
	_Atomic uint64_t index_word;   /* published name table: generation << 1 | table */
	_Atomic int32_t daemon_pid;    /* 0 when no quotad holds the segment */
	uint32_t pad1;
	_Atomic int64_t heartbeat_ns;  /* segment clock, last quotad heartbeat */
	/* CLOCK_REALTIME - segment clock, so that the hot path can tell the UTC
	 * day and month (spend periods) from the one clock read it already does.
	 * Written by quotad at start and on every heartbeat. */
	_Atomic int64_t realtime_offset_ns;
	_Atomic uint64_t daemon_starttime; /* /proc start time of daemon_pid */
	_Atomic uint32_t client_seq;   /* bumped by every client slot claim */
	uint32_t pad2;

	/* Line 3 (offset 192): manual clock, written by quota_clock_set(). */
	_Atomic int64_t manual_now_ns;
	_Atomic uint32_t clock_seq;    /* futex word: bumped on every clock move */
	uint32_t pad3;
	/* Stamps of the two name tables: the generation each holds, 0 while
	 * quotad writes it (index.c). */
	_Atomic uint64_t index_stamp[2];
	uint64_t reserved2[4];

	/* Line 4 (offset 256): reserved. */
	uint64_t reserved3[8];

	uint8_t reserved_tail[QS_HEADER_SIZE - 320];
};
static_assert(sizeof(struct qs_header) == QS_HEADER_SIZE, "header size");
static_assert(offsetof(struct qs_header, state) == 128, "control line");
static_assert(offsetof(struct qs_header, manual_now_ns) == 192, "clock line");

/* ---- Config records ---------------------------------------------------- */

/* One rate limit as configured: the source values only. Everything the hot
 * path derives (ns per unit, tolerance, capacity) is recomputed from these
 * by whoever reads the record, so that a record cannot lie about it. */
struct qs_limit_src {
	uint32_t kind;      /* enum quota_limit_kind */
	uint32_t burst_ppm; /* burst in millionths of the limit, (0, 1e6] */
	uint64_t limit;     /* units per period */
};

/* Priority lanes (reserve.c): a quota may list up to QS_LANES lanes, highest
 * first. headroom_ppm of lane i is the share of every limit's capacity that
 * the lanes below i must leave free; the lowest lane's is 0. */
#define QS_LANES 4u
#define QS_LANE_NAME 16u
struct qs_lane_src {
	char name[QS_LANE_NAME];  /* NUL-terminated */
	uint32_t headroom_ppm;    /* [0, 1e6); the sum over lanes < 1e6 */
	uint32_t pad;
};

/* record.flags2 (since layout 2.1) */
#define QS_REC2_LEARN (1u << 0)    /* keep the histogram of actual output tokens */
#define QS_REC2_AUTO_EST (1u << 1) /* reserve's output 0 = the learned estimate (implies LEARN) */
#define QS_REC2_KNOWN (QS_REC2_LEARN | QS_REC2_AUTO_EST)

/* record.flags */
#define QS_REC_REFUND_ACTUAL (1u << 0)
#define QS_REC_REMOVED (1u << 1) /* the quota was removed by a reload */
/* Layout 3.1: max_inflight is a global quota's, leased from Redis by quotad
 * (quotad/slots.c): a reservation takes an in-flight slot only before the
 * quota entry's inflight_until. A 3.0 library refuses such a record
 * (unknown flag: -EBADMSG), as it could not keep that rule. */
#define QS_REC_GLOBAL_INFLIGHT (1u << 2)
#define QS_REC_FLAGS_KNOWN (QS_REC_REFUND_ACTUAL | QS_REC_REMOVED | QS_REC_GLOBAL_INFLIGHT)

/*
 * An immutable configuration record. Written by quotad only while no
 * quota's config word points to it (stamp 0 during the write, then the
 * generation); read by everyone with atomic loads, then the stamp is checked
 * again (records.c).
 */
struct qs_record {
	_Atomic uint64_t stamp;  /* generation of the content; 0 while written */
	char name[64];           /* NUL-terminated */
	uint32_t quota_id;
	uint32_t flags;          /* QS_REC_* */
	uint32_t nlimits;        /* lim[0 .. nlimits-1], distinct kinds */
	uint32_t pad;
	uint64_t context_window; /* 0 = none */
	uint64_t max_inflight;   /* 0 = none */
	uint64_t price_in_pusd;  /* pico-USD per input token */
	uint64_t price_out_pusd; /* pico-USD per output token */
	uint64_t budget_day_nusd;   /* 0 = none */
	uint64_t budget_month_nusd; /* 0 = none */
	struct qs_limit_src lim[QS_KINDS];
	/* Since layout 2.1: priority lanes (0 = none: one lane), learning, alarms. */
	uint32_t nlanes;
	uint32_t flags2;         /* QS_REC2_* (not in flags: minor-0 readers refuse unknown flags) */
	struct qs_lane_src lanes[QS_LANES];
	uint64_t alarm_held_ns;  /* count tickets settled after being held longer; 0 = off */
	uint32_t alarm_over_pct; /* count commits above this % of their output estimate; 0 = off */
	uint32_t pad3;
	uint64_t reserved[16];   /* zero: room for later keys */
};
static_assert(sizeof(struct qs_record) == 512, "record size");
static_assert(offsetof(struct qs_record, lim) == 136, "record limits");
static_assert(offsetof(struct qs_record, lanes) == 272, "record lanes");

/* A quota's config word: generation << 24 | (record index + 1); 0 = the id
 * is not in use. */
#define QS_CFG_IDX_BITS 24
#define QS_CFG_WORD(gen, idx) (((uint64_t)(gen) << QS_CFG_IDX_BITS) | ((uint64_t)(idx) + 1))
#define QS_CFG_IDX1(w) ((uint32_t)((w) & ((1u << QS_CFG_IDX_BITS) - 1)))
#define QS_CFG_GEN(w) ((w) >> QS_CFG_IDX_BITS)
#define QS_GEN_MAX ((1ULL << (64 - QS_CFG_IDX_BITS)) - 1)

/* ---- Quota entries ----------------------------------------------------- */

/* Spend words pack the period (UTC day or month number, mod 2^12) with the
 * amount spent in it (nano-USD, up to 2^52 = $4.5M per period). */
#define QS_SPEND_PERIOD_BITS 12
#define QS_SPEND_AMOUNT_BITS 52
#define QS_SPEND_AMOUNT_MAX ((1ULL << QS_SPEND_AMOUNT_BITS) - 1)

/* In-flight word: count in the low 32 bits, a sequence number bumped by every
 * change in the high 32 bits (audits detect quiet periods by it). */
#define QS_INFLIGHT_COUNT(w) ((uint32_t)(w))
#define QS_INFLIGHT_SEQ1 (1ULL << 32)

struct qs_quota {
	/* Line 0 (hot A): what a reservation of a quota with per-minute limits,
	 * in-flight and a daily budget reads and writes. */
	_Atomic uint64_t cfg;          /* QS_CFG_WORD; written by quotad (seq_cst) */
	_Atomic int64_t tat_min[4];    /* TAT of kinds RPM, TPM, ITPM, OTPM */
	_Atomic uint64_t inflight;     /* QS_INFLIGHT_* */
	_Atomic int64_t paused_until;  /* quota_backoff(); segment clock */
	_Atomic uint64_t spend_day;    /* QS_SPEND_* packed */

	/* Line 1 (hot B): per-day kinds, the month, in-flight waiters. */
	_Atomic int64_t tat_day[4];    /* TAT of kinds RPD, TPD, ITPD, OTPD */
	_Atomic uint64_t spend_month;
	_Atomic uint32_t inflight_waiters; /* processes sleeping for a slot */
	_Atomic uint32_t inflight_futex;   /* bumped on every in-flight release */
	/* Slots of the in-flight count that quotad holds back on a global
	 * max_inflight (global.c): count = slots workers hold + this, so the
	 * workers' cap is max_inflight - this. Written by quotad only (before
	 * raising the count, after lowering it); the audit counts it. */
	_Atomic uint64_t inflight_hold;
	uint64_t reserved1[1];

	/* Lines 2-3: refund accounting per kind (see gcra.c): ns of refunds
	 * begun and finished. Written by commit/cancel, read by reserve. */
	_Atomic uint64_t refund_begun[QS_KINDS];
	_Atomic uint64_t refund_done[QS_KINDS];

	/* Lines 4-6: statistics of clients that left (folded in by
	 * quota_close() or quotad's reclamation) or that had no row free. */
	_Atomic uint64_t st_admitted;
	_Atomic uint64_t st_in_tokens;
	_Atomic uint64_t st_out_tokens;
	_Atomic uint64_t st_reclaimed;  /* in-flight slots given back for dead clients */
	_Atomic uint64_t st_repaired;   /* in-flight drift repaired by audits (quotad) */
	_Atomic uint64_t st_rejected[QS_REASONS];
	/* Line 6 (layout 3.1), read-mostly. Lower-lane waiters published per
	 * lane (waitline.c): incremented before a wait is published,
	 * decremented after it is cleared, so at least the number published; a
	 * process dying in between leaves one too many, which quotad's audit
	 * repairs (qc_wait_audit). Zero: a reservation of that lane that fits
	 * now need not look for waiters. */
	_Atomic uint32_t lane_waiters[QS_LANES];
	/* On a quota whose record has QS_REC_GLOBAL_INFLIGHT, no in-flight slot
	 * is taken at or after this time (segment clock, i.e. CLOCK_MONOTONIC:
	 * a global quota cannot use the manual clock): half the lease after
	 * quotad sent the last call Redis answered (quotad/slots.c). Written by
	 * quotad only. */
	_Atomic int64_t inflight_until;

	/* Line 7: learning and alarms. */
	_Atomic uint64_t learned_out;     /* quotad: p99 of actual output tokens, as the
					   * upper edge of its bucket; 0 = not known yet,
					   * QS_LEARNED_OPEN = in the last bucket */
	_Atomic uint64_t learned_samples; /* quotad: the weight it was computed from */
	_Atomic uint64_t st_alarm_held;   /* alarms of clients that left */
	_Atomic uint64_t st_alarm_over;
	/* Major 3, written by quotad only. Prompt tokens and the actual/estimated
	 * output ratio: p50 in the low 32 bits, p99 in the high 32, each the
	 * upper edge of its bucket in the histogram's units (QS_PAIR_*). */
	_Atomic uint64_t learned_in;
	_Atomic uint64_t learned_ratio;
	/* Tickets still open (alarm held_s): the phase flips since quotad
	 * started serving the quota (bit 0 is the phase reservations read,
	 * reserve.c, HELD OPEN), and how many tickets were open longer than
	 * held_s at the last flip. */
	_Atomic uint64_t held_phase;
	_Atomic uint64_t held_open;
};
static_assert(sizeof(struct qs_quota) == 512, "quota entry size");
static_assert(offsetof(struct qs_quota, tat_day) == 64, "hot line B");
static_assert(offsetof(struct qs_quota, refund_begun) == 128, "refund lines");
static_assert(offsetof(struct qs_quota, st_admitted) == 256, "stats lines");
static_assert(offsetof(struct qs_quota, inflight_until) / 64 == 6, "inflight_until off the hot lines");
static_assert(offsetof(struct qs_quota, learned_out) == 448, "learning line");
static_assert(offsetof(struct qs_quota, held_open) == 504, "learning line, last word");
static_assert(QUOTA_RATE_KINDS == QS_KINDS, "kinds");
static_assert(QUOTA_REJECT_REASONS <= QS_REASONS, "reasons");

static inline _Atomic int64_t *qs_tat(struct qs_quota *q, uint32_t kind)
{
	return (kind & 1) ? &q->tat_day[(kind >> 1) & 3] : &q->tat_min[(kind >> 1) & 3];
}

/* ---- Name index -------------------------------------------------------- */

/* Name index entry: quota id + 1 (0 = empty) and the name's hash. */
struct qs_index {
	_Atomic uint32_t id1;
	_Atomic uint32_t hash;
};
static_assert(sizeof(struct qs_index) == 8, "index entry size");

/* ---- Client slots ------------------------------------------------------ */

/* Per-thread, per-quota row: written only by the owning thread (relaxed
 * atomics, so that readers see torn-free values), read by quotactl and by
 * quotad when it reclaims the slot. Four cache lines. */
struct qs_row {
	/* Line 0: in flight and the counters every reservation moves. */
	_Atomic uint32_t quota1;   /* quota id + 1; 0 = free row */
	/* In-flight slots this thread took minus those it gave back (int32:
	 * a ticket taken by one thread may be settled by another, whose row
	 * then goes below zero; the process's sum is exact). */
	_Atomic int32_t held;
	_Atomic uint32_t journal;  /* quotad: a give-back of this row in progress */
	uint32_t pad;
	_Atomic uint64_t admitted;
	_Atomic uint64_t in_tokens;
	_Atomic uint64_t out_tokens;
	/* Lines 0-2: rejections by reason (offset 40). */
	_Atomic uint64_t rejected[QS_REASONS];
	/* Learning: actual output tokens of commits (a qs_hist, shift 0);
	 * alarms (see qs_record). */
	_Atomic uint64_t out_hist[2];
	_Atomic uint32_t alarm_held;
	_Atomic uint32_t alarm_over;
	/* Line 3 (major 3): commits' prompt tokens (shift QS_HIST_IN_SHIFT) and
	 * actual/estimated output in 1/QS_RATIO_ONE (shift 0); tickets of a quota
	 * with held_s taken in alarm phase p minus those settled (int32 like
	 * held: only a process's sum is exact; reserve.c, HELD OPEN). */
	_Atomic uint64_t in_hist[2];
	_Atomic uint64_t ratio_hist[2];
	_Atomic int32_t open[2];
	uint64_t reserved3[3];
};
static_assert(sizeof(struct qs_row) == 256, "row size");
static_assert(offsetof(struct qs_row, rejected) == 40, "row rejections");
static_assert(offsetof(struct qs_row, out_hist) == 168, "row output histogram");
static_assert(offsetof(struct qs_row, in_hist) == 192, "row line 3");
static_assert(offsetof(struct qs_row, open) == 224, "row open tickets");

/* A decaying log-histogram (learn.c): QS_HIST_BUCKETS 8-bit counts in two
 * words, all halved when one would overflow, one writer. Half octaves of
 * the value shifted right by the histogram's shift: bucket 0 holds [0, 16),
 * then [16, 24), [24, 32), [32, 48), [48, 64), ... up to bucket 14, [1536,
 * 2048); bucket 15 everything from 2048 up. Output tokens use shift 0,
 * prompt tokens shift 6 (bucket 0 < 1024, bucket 14 up to 131071), the
 * output ratio shift 0 in 1/256 (bucket 0 below 1/16, bucket 9 [1, 1.5),
 * bucket 15 from 8 up). */
#define QS_HIST_BUCKETS 16u
#define QS_HIST_IN_SHIFT 6u
#define QS_RATIO_ONE 256u
#define QS_LEARNED_OPEN UINT64_MAX /* learned_out: at least 2048, no edge */
static inline uint32_t qs_hist_bucket(uint64_t x)
{
	if (x < 16)
		return 0;
	uint32_t lg = 63u - (uint32_t)__builtin_clzll(x); /* >= 4 */
	uint32_t b = 2 * lg - 7 + (uint32_t)((x >> (lg - 1)) & 1);
	return b < QS_HIST_BUCKETS ? b : QS_HIST_BUCKETS - 1;
}
/* The largest value bucket @b holds; 0 for the last, which has no end. */
static inline uint64_t qs_hist_top(uint32_t b)
{
	if (b == 0)
		return 15;
	if (b >= QS_HIST_BUCKETS - 1)
		return 0;
	uint32_t lg = (b + 7) / 2; /* bucket b starts at 2^lg or 1.5 * 2^lg */
	return (b & 1) ? (3ull << (lg - 1)) - 1 : (1ull << (lg + 1)) - 1;
}
/* The largest unshifted value bucket @b of a histogram of shift @shift
 * holds; 0 for the last. */
static inline uint64_t qs_hist_edge(uint32_t b, uint32_t shift)
{
	uint64_t top = qs_hist_top(b);
	return top ? ((top + 1) << shift) - 1 : 0;
}
static inline uint32_t qs_hist_count(const uint64_t h[2], uint32_t b)
{
	return (uint32_t)((h[b / 8] >> (8 * (b % 8))) & 0xff);
}

/* learned_in, learned_ratio: two 32-bit edges in one word (a reader gets
 * both from one load); QS_PAIR_OPEN = in the last bucket, 0 = not yet. */
#define QS_PAIR_OPEN UINT32_MAX
#define QS_PAIR(p50, p99) ((uint64_t)(p50) | (uint64_t)(p99) << 32)
#define QS_PAIR_P50(w) ((uint32_t)(w))
#define QS_PAIR_P99(w) ((uint32_t)((w) >> 32))

/* qs_client.state: generation << 32 | pid << 8 | status. The pid is in the
 * word so that a slot whose process died inside quota_open() (CLAIMING)
 * names it. */
#define QS_CLIENT_FREE 0u
#define QS_CLIENT_CLAIMING 1u
#define QS_CLIENT_LIVE 2u
#define QS_CLIENT_RECLAIMING 3u
#define QS_CLIENT_STATUS(w) ((uint32_t)((w) & 0xff))
#define QS_CLIENT_PID(w) ((int32_t)(((w) >> 8) & 0xffffff))
#define QS_CLIENT_GEN(w) ((uint32_t)((w) >> 32))
#define QS_CLIENT_WORD(gen, pid, st) \
	(((uint64_t)(gen) << 32) | ((uint64_t)((uint32_t)(pid) & 0xffffff) << 8) | (uint64_t)(st))
#define QS_PID_MAX 0xffffff

/* qs_client.intent: an in-flight change in progress, so that a process dying
 * between the shared counter and its own row is detectable: quota id + 1 in
 * the low 32 bits, the amount in the high 32 bits. */

struct qs_client {
	/* Line 0: written by the owner (and by quotad when reclaiming). */
	_Atomic uint64_t state;
	_Atomic uint64_t starttime; /* /proc/<pid>/stat field 22 */
	_Atomic uint64_t intent;
	/* A refund in progress (quota id + 1, kind + 1 << 32): a process that
	 * dies inside one leaves refund_begun ahead of refund_done; quotad's
	 * reclamation then audits that limit. */
	_Atomic uint64_t refund_intent;
	/* Minor 1: a lower-lane reservation waiting for its turn (waitline.c),
	 * written by the owner only (cleared by quotad when reclaiming). The
	 * key is QS_WAIT_LINE_OF(quota, lane) | a number, 0 = not waiting; its
	 * low 32 bits are the futex word the waiter behind sleeps on. Segment
	 * clock, ns. */
	_Atomic uint64_t wait_key;
	_Atomic int64_t wait_since; /* when the reservation began */
	_Atomic int64_t wait_until; /* its deadline: ignored by others after it */
	uint64_t reserved0;
	struct qs_row rows[QS_CLIENT_ROWS];
};
static_assert(sizeof(struct qs_client) == 64 + 256 * QS_CLIENT_ROWS, "client size");
static_assert(offsetof(struct qs_client, rows) == 64, "rows after the slot's line");
static_assert(offsetof(struct qs_client, wait_key) == 32, "wait words in line 0");

/* qs_client.wait_key: the waiter's line - quota id + 1 and the lane - in the
 * high 32 bits, a number of its own (nonzero, new for every wait) in the
 * low 32. */
#define QS_WAIT_LINE_OF(id, lane) ((((uint64_t)(lane) & 0xff) << 56) | ((uint64_t)((id) + 1) << 32))
#define QS_WAIT_LINE(key) ((key) & ~0xffffffffULL)

/* ---- Geometry ------------------------------------------------------------ */

/* Geometry chosen at creation. */
struct qs_geometry {
	uint32_t quota_capacity;
	uint32_t client_capacity;
	uint64_t incompat_flags;
};

/* The private copy of a validated segment's geometry: every address the
 * library and quotad compute comes from here, never from the header. */
struct qs_geom {
	char *base;
	uint64_t size;
	struct qs_header *h;
	char *quotas, *records, *clients;
	struct qs_index *index[2];
	uint32_t quota_capacity, record_capacity, index_capacity, client_capacity;
	uint64_t incompat_flags;
};

/* The size of a segment with this geometry, or 0 if out of range. */
uint64_t qs_segment_size(const struct qs_geometry *g);

/* Lay out an empty segment in @base (zeroed memory of qs_segment_size()
 * bytes): header in INITIALIZING state, no quotas. */
void qs_format(void *base, const struct qs_geometry *g);

/*
 * Validate the header of a mapped segment of @size bytes (magic, major,
 * flags, sizes, every offset, stride and capacity) and copy its geometry
 * into *@g. Returns 0, -EBADMSG, -EPROTONOSUPPORT; -EAGAIN while the state
 * is INITIALIZING (*@g is filled anyway for quotad's own use).
 */
int qs_geom_load(struct qs_geom *g, void *base, uint64_t size);

static inline struct qs_quota *qs_quota_at(const struct qs_geom *g, uint32_t id)
{
	return id < g->quota_capacity ? (struct qs_quota *)(g->quotas + (uint64_t)id * sizeof(struct qs_quota)) : 0;
}

static inline struct qs_record *qs_record_at(const struct qs_geom *g, uint32_t idx)
{
	return idx < g->record_capacity ?
		(struct qs_record *)(g->records + (uint64_t)idx * sizeof(struct qs_record)) : 0;
}

static inline struct qs_client *qs_client_at(const struct qs_geom *g, uint32_t slot)
{
	return slot < g->client_capacity ?
		(struct qs_client *)(g->clients + (uint64_t)slot * sizeof(struct qs_client)) : 0;
}

/* The number of quota ids in use, bounded by the capacity. */
static inline uint32_t qs_quota_count(const struct qs_geom *g)
{
	/* acquire: pairs with quotad's release after publishing a new id */
	uint32_t n = atomic_load_explicit(&g->h->quota_count, memory_order_acquire);
	return n < g->quota_capacity ? n : g->quota_capacity;
}

/* ---- Records (records.c) ------------------------------------------------ */

/* A configuration as plain private values (the content of a record). */
struct qs_config {
	char name[64];
	uint32_t quota_id;
	uint32_t flags;
	uint32_t nlimits;
	uint64_t context_window, max_inflight;
	uint64_t price_in_pusd, price_out_pusd;
	uint64_t budget_day_nusd, budget_month_nusd;
	struct qs_limit_src lim[QS_KINDS];
	uint32_t nlanes;
	struct qs_lane_src lanes[QS_LANES];
	uint32_t flags2;
	uint32_t alarm_over_pct;
	uint64_t alarm_held_ns;
};

/* Check a configuration's values (what a record may hold): 0 or -EBADMSG. */
int qs_config_check(const struct qs_config *cfg);

/*
 * Read the record that config word @word of quota @id points to into
 * *@out: 0; -ENOENT if @word is 0; -EAGAIN if the record changed while it
 * was copied (the caller loads the word again); -EBADMSG if the word or the
 * record is not valid (out of range, another quota's, bad values).
 */
int qs_record_read(const struct qs_geom *g, uint32_t id, uint64_t word, struct qs_config *out);

/* The quota's current configuration: loads the config word, reads, retries
 * a bounded number of times. *@ret_word gets the word read. */
int qs_config_get(const struct qs_geom *g, uint32_t id, struct qs_config *out, uint64_t *ret_word);

/* quotad: write @cfg into record @idx (one no config word points to) with
 * generation @gen, and publish it as quota @cfg->quota_id's config. */
void qs_record_publish(const struct qs_geom *g, uint32_t idx, uint64_t gen,
		       const struct qs_config *cfg);

/* quotad: the next generation (header.generation + 1, stored). */
uint64_t qs_next_generation(const struct qs_geom *g);

/* ---- Name index (index.c) ------------------------------------------------ */

/* FNV-1a, 32 bits: the index hash. */
uint32_t qs_name_hash(const char *name, size_t len);

/* quotad: build a table of the @n quotas named @names[i] with ids @ids[i]
 * into the unpublished table and publish it. -ENOSPC if it does not fit. */
int qs_index_publish(const struct qs_geom *g, const char (*names)[64], const uint32_t *ids,
		     uint32_t n);

/* Look a name up in the published table: a candidate id (the caller checks
 * the quota's record names it), -ENOENT, or -EAGAIN if quotad kept
 * republishing throughout. */
int qs_index_find(const struct qs_geom *g, const char *name);

/* ---- Copies with atomic loads and stores ----------------------------------- */

/* Copy @n bytes (a multiple of 8, both 8-aligned) from shared memory with
 * relaxed atomic loads, or into it with relaxed atomic stores: another
 * process may write the same words concurrently (C11 data-race freedom). */
static inline void qs_load_words(void *dst, const void *src, size_t n)
{
	uint64_t *d = dst;
	const uint64_t *s = src;
	for (size_t i = 0; i < n / 8; i++)
		d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
}

static inline void qs_store_words(void *dst, const void *src, size_t n)
{
	uint64_t *d = dst;
	const uint64_t *s = src;
	for (size_t i = 0; i < n / 8; i++)
		__atomic_store_n(&d[i], s[i], __ATOMIC_RELAXED);
}

#endif /* QUOTA_LAYOUT_H */
