/* SPDX-License-Identifier: MIT */
/*
 * bucket.h - the simulator's rate limiter: a continuous-refill token bucket
 * per limit. It is the referee that libquota is judged against, so it is
 * written independently of libquota's GCRA and shares no code with it.
 *
 * A bucket holding at most `cap` units refills at `limit` units per
 * `period_ns`, continuously. To keep that exact with integers, the level is
 * kept in "unit-nanoseconds": one unit is stored as period_ns, and each
 * elapsed nanosecond adds `limit`. 128-bit integers hold the products
 * (a day's period times 10^12 units does not fit 64 bits). Invariant: in any
 * interval of length W the units taken minus the units given back are at most
 * cap + limit * W / period_ns.
 */
#ifndef QUOTA_SIM_BUCKET_H
#define QUOTA_SIM_BUCKET_H

#include <stdint.h>

typedef unsigned __int128 sim_u128;

struct bucket {
	uint64_t limit;   /* units per period; 0 = this limit is off */
	uint64_t cap;     /* most units held at once */
	int64_t period_ns;
	sim_u128 level;   /* units * period_ns */
	sim_u128 debt;    /* charged after the fact beyond the level (bucket_charge):
			   * refills pay it before the level grows */
	int64_t last_ns;  /* time of the last refill */
};

/* A full bucket at @now_ns; @limit 0 makes a bucket that never refuses. */
void bucket_init(struct bucket *b, uint64_t limit, uint64_t cap, int64_t period_ns,
		 int64_t now_ns);
/* Add what accrued since the last refill (time going backwards adds nothing). */
void bucket_refill(struct bucket *b, int64_t now_ns);
/* Nanoseconds until @cost units are there (0 = now), or -1 if @cost > cap. */
int64_t bucket_wait_ns(const struct bucket *b, uint64_t cost);
/* Take @cost units; the caller has checked bucket_wait_ns() == 0. */
void bucket_take(struct bucket *b, uint64_t cost);
/* Charge @units after the fact (usage counted when a response ends): what
 * the level does not hold becomes debt that later refills pay first. */
void bucket_charge(struct bucket *b, uint64_t units);
/* Give @units back (a refund), never above cap. */
void bucket_give(struct bucket *b, uint64_t units);
/* Whole units available now. */
uint64_t bucket_remaining(const struct bucket *b);
/* Nanoseconds until the bucket is full again. */
int64_t bucket_reset_ns(const struct bucket *b);

#endif
