/* SPDX-License-Identifier: MIT */
/*
 * bucket.c - the simulator's continuous token bucket (see bucket.h). All
 * arithmetic is in 128-bit integers; waits are rounded up to the next
 * nanosecond so the referee never promises a unit early.
 */
#include "bucket.h"

static sim_u128 scaled(const struct bucket *b, uint64_t units)
{
	return (sim_u128)units * (sim_u128)(uint64_t)b->period_ns;
}

void bucket_init(struct bucket *b, uint64_t limit, uint64_t cap, int64_t period_ns,
		 int64_t now_ns)
{
	b->limit = limit;
	b->cap = cap;
	b->period_ns = period_ns;
	b->level = scaled(b, cap);
	b->debt = 0;
	b->last_ns = now_ns;
}

void bucket_refill(struct bucket *b, int64_t now_ns)
{
	sim_u128 full = scaled(b, b->cap);

	sim_u128 acc;

	if (b->limit == 0 || now_ns <= b->last_ns)
		return;
	acc = (sim_u128)(uint64_t)(now_ns - b->last_ns) * b->limit;
	if (b->debt >= acc) {
		b->debt -= acc;
		acc = 0;
	} else {
		acc -= b->debt;
		b->debt = 0;
	}
	b->level += acc;
	if (b->level > full)
		b->level = full;
	b->last_ns = now_ns;
}

int64_t bucket_wait_ns(const struct bucket *b, uint64_t cost)
{
	sim_u128 need, w;

	if (b->limit == 0)
		return 0;
	if (cost > b->cap)
		return -1;
	need = scaled(b, cost) + b->debt;
	if (need <= b->level)
		return 0;
	w = (need - b->level + b->limit - 1) / b->limit;
	return w > (sim_u128)INT64_MAX ? INT64_MAX : (int64_t)w;
}

void bucket_take(struct bucket *b, uint64_t cost)
{
	sim_u128 need = scaled(b, cost);

	if (b->limit == 0)
		return;
	b->level = need > b->level ? 0 : b->level - need;
}

void bucket_charge(struct bucket *b, uint64_t units)
{
	sim_u128 need = scaled(b, units);

	if (b->limit == 0)
		return;
	if (need <= b->level) {
		b->level -= need;
	} else {
		b->debt += need - b->level;
		b->level = 0;
	}
}

void bucket_give(struct bucket *b, uint64_t units)
{
	sim_u128 full = scaled(b, b->cap);

	if (b->limit == 0)
		return;
	if (units > b->cap)
		units = b->cap;
	b->level += scaled(b, units);
	if (b->level > full)
		b->level = full;
}

uint64_t bucket_remaining(const struct bucket *b)
{
	if (b->limit == 0)
		return UINT64_MAX;
	return (uint64_t)(b->level / (sim_u128)(uint64_t)b->period_ns);
}

int64_t bucket_reset_ns(const struct bucket *b)
{
	sim_u128 full = scaled(b, b->cap), w;

	if (b->limit == 0 || (b->level >= full && !b->debt))
		return 0;
	w = (full - b->level + b->debt + b->limit - 1) / b->limit;
	return w > (sim_u128)INT64_MAX ? INT64_MAX : (int64_t)w;
}
