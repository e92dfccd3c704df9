/* SPDX-License-Identifier: MIT */
/*
 * gcra_ref.c - per-scenario constants of the baselines' GCRA (see
 * gcra_ref.h for the algorithm and its rounding).
 */
#include <errno.h>

#include "gcra_ref.h"

#define MINUTE_NS 60000000000LL
#define DAY_NS 86400000000000LL

enum unit { U_REQ, U_TOK, U_IN, U_OUT };

static uint64_t units(const struct qb_cost *c, enum unit u)
{
	switch (u) {
	case U_REQ:
		return c->requests;
	case U_TOK:
		return c->input_tokens + c->output_tokens;
	case U_IN:
		return c->input_tokens;
	case U_OUT:
		return c->output_tokens;
	}
	return 0;
}

static int add(struct qb_gcra *g, uint64_t limit, int64_t period, enum unit u)
{
	if (limit == 0)
		return 0;
	if (g->n == QB_GCRA_MAX)
		return -EINVAL;
	unsigned __int128 p = (unsigned __int128)period;
	unsigned __int128 res = units(&qb_reserve_cost, u) * p;
	unsigned __int128 act = units(&qb_commit_cost, u) * p;
	unsigned __int128 inc = (res + limit - 1) / limit; /* ceil: charge more */
	unsigned __int128 back = act / limit;                /* floor: refund less */
	if (inc > INT64_MAX / 4 || back > inc)
		return -EINVAL;
	struct qb_gcra_limit *l = &g->l[g->n++];
	l->inc = (int64_t)inc;
	l->tau = period; /* capacity = limit (burst 1.0) */
	l->delta = act == res ? 0 : (int64_t)back - (int64_t)inc;
	return 0;
}

int qb_gcra_build(const struct qb_quota_spec *s, struct qb_gcra *g)
{
	g->n = 0;
	int r = 0;
	r = r ? r : add(g, s->rpm, MINUTE_NS, U_REQ);
	r = r ? r : add(g, s->tpm, MINUTE_NS, U_TOK);
	r = r ? r : add(g, s->itpm, MINUTE_NS, U_IN);
	r = r ? r : add(g, s->otpm, MINUTE_NS, U_OUT);
	r = r ? r : add(g, s->rpd, DAY_NS, U_REQ);
	r = r ? r : add(g, s->tpd, DAY_NS, U_TOK);
	return r;
}
