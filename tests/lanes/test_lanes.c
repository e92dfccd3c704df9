/* SPDX-License-Identifier: MIT */
/*
 * test_lanes.c - priority lanes, extends and partial settles on a manual
 * clock, where every figure is exact: a lower lane stops where the headroom
 * of the lanes above begins, holds no place in line while it waits (a
 * higher lane is admitted past it), an extension is charged as the stream
 * grows and its refunds come from the last piece; and every new config key
 * is refused with the file, the key and the reason.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config.h"
#include "internal.h"
#include "testlib.h"

/* rpm 100, burst 1: b = 100 requests, T = 0.6 s; the top lane keeps 20. */
#define LANES "\"rpm\": 100, \"tpm\": 1000000, \"lanes\": " \
	"{\"interactive\": {\"headroom\": 0.2}, \"batch\": {}}"

static struct quota_reserve_opts lane_opts(uint32_t lane)
{
	struct quota_reserve_opts o;
	quota_reserve_opts_init(&o, sizeof(o));
	o.lane = lane;
	return o;
}

static const struct quota_cost ONE = { 1, 10, 10 };

Test(lanes, names_and_defaults)
{
	char name[128];
	quota_client *c = tl_manual("ln", LANES, name, sizeof(name));
	cr_assert_eq(quota_lane(c, 0, "interactive"), 0);
	cr_assert_eq(quota_lane(c, 0, "batch"), 1);
	cr_assert_eq(quota_lane(c, 0, "bulk"), -ENOENT);
	cr_assert_eq(quota_lane(c, 7, "batch"), -ENOENT);
	cr_assert_eq(quota_lane(c, 0, NULL), -EINVAL);
	struct quota_reserve_opts o = lane_opts(0);
	o.size = 4;
	struct quota_ticket t;
	cr_assert_eq(quota_reserve_ex(c, 0, &ONE, 0, &o, &t), -EINVAL);
	o = lane_opts(0);
	o.flags = 1;
	cr_assert_eq(quota_reserve_ex(c, 0, &ONE, 0, &o, &t), -EINVAL);
	quota_close(c);
}

/* The lower lane stops at b - headroom; the top lane then takes the rest;
 * the default lane (quota_reserve, opts NULL, an unknown index) is batch. */
Test(lanes, headroom_is_kept_for_the_top_lane)
{
	char name[128];
	quota_client *c = tl_manual("lh", LANES, name, sizeof(name));
	struct quota_reserve_opts batch = lane_opts(1), top = lane_opts(0), far = lane_opts(3);
	struct quota_ticket t;
	int n = 0;
	while (quota_reserve_ex(c, 0, &ONE, 0, n % 3 == 0 ? &batch : n % 3 == 1 ? &far : NULL, &t) == 0)
		n++;
	cr_assert_eq(n, 80, "the batch lane took %d of 100 (80 expected)", n);
	cr_assert_eq(quota_reserve(c, 0, &ONE, 0, &t), -EAGAIN);
	/* retry after exactly one emission interval: 0.6 s */
	cr_assert_eq(t.retry_after_ns, 600 * TL_MS);
	int m = 0;
	while (quota_reserve_ex(c, 0, &ONE, 0, &top, &t) == 0)
		m++;
	cr_assert_eq(m, 20, "the top lane took %d (20 expected)", m);
	/* a batch cost above what the lane may hold at once can never fit */
	cr_assert_eq(quota_reserve_ex(c, 0, &(struct quota_cost){ 81, 0, 0 }, 0, &batch, &t), -E2BIG);
	cr_assert_eq(quota_clock_set(c, quota_now(c) + 600 * TL_MS), 0);
	cr_assert_eq(quota_reserve_ex(c, 0, &ONE, 0, &batch, &t), -EAGAIN);
	cr_assert_eq(quota_reserve_ex(c, 0, &ONE, 0, &top, &t), 0);
	quota_close(c);
}

struct waiter {
	quota_client *c;
	uint32_t lane;
	int64_t timeout;
	struct quota_cost cost;
	_Atomic int tid, rc;
	struct quota_ticket t;
	struct quota_ticket *extend; /* extend this ticket instead of reserving */
};

static void *wait_thread(void *arg)
{
	struct waiter *w = arg;
	struct quota_reserve_opts o = lane_opts(w->lane);
	struct quota_ticket warm;
	/* First use: claims this thread's client slot, so that the call below
	 * blocks nowhere but in its wait for the clock. */
	quota_reserve(w->c, 0, &(struct quota_cost){ 1000000, 0, 0 }, 0, &warm);
	atomic_store(&w->tid, (int)syscall(SYS_gettid));
	int r = w->extend ? quota_extend(w->c, w->extend, &w->cost, w->timeout) :
		quota_reserve_ex(w->c, 0, &w->cost, w->timeout, &o, &w->t);
	atomic_store(&w->rc, r + 1000);
	return NULL;
}

/* Start @w and return once its thread sleeps (state S in /proc: after the
 * warm-up the only place it can block is the wait on the manual clock). */
static void start_waiter(pthread_t *th, struct waiter *w)
{
	atomic_store(&w->tid, 0);
	atomic_store(&w->rc, 0);
	cr_assert_eq(pthread_create(th, NULL, wait_thread, w), 0);
	while (!atomic_load(&w->tid))
		sched_yield();
	char path[128], buf[512];
	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", atomic_load(&w->tid));
	for (;;) {
		FILE *f = fopen(path, "r");
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
		if (f)
			fclose(f);
		buf[n] = '\0';
		char *p = strrchr(buf, ')');
		if (atomic_load(&w->rc) || (p && p[1] == ' ' && p[2] == 'S'))
			return;
		sched_yield();
	}
}

/* A batch waiter holds no place: the top lane is admitted past it at once,
 * and the waiter is admitted when the clock reaches its lane's turn. */
Test(lanes, lower_lane_waits_without_a_place)
{
	char name[128];
	quota_client *c = tl_manual("lw", LANES, name, sizeof(name));
	struct quota_reserve_opts batch = lane_opts(1), top = lane_opts(0);
	struct quota_ticket t;
	for (int i = 0; i < 80; i++)
		cr_assert_eq(quota_reserve_ex(c, 0, &ONE, 0, &batch, &t), 0);
	int64_t tat = atomic_load(qs_tat(tl_quota(c, 0), QUOTA_RPM));
	struct waiter w = { .c = c, .lane = 1, .timeout = 60 * TL_S, .cost = ONE };
	pthread_t th;
	start_waiter(&th, &w);
	cr_assert_eq(atomic_load(&w.rc), 0, "the batch reservation did not wait");
	cr_assert_eq(atomic_load(qs_tat(tl_quota(c, 0), QUOTA_RPM)), tat, "a batch waiter took a place");
	for (int i = 0; i < 20; i++)
		cr_assert_eq(quota_reserve_ex(c, 0, &ONE, 0, &top, &t), 0, "top lane refused at %d", i);
	/* The batch lane's turn: one emission interval after the top lane's
	 * last unit, plus the 20 it took: 21 intervals. */
	int64_t t0 = quota_now(c);
	cr_assert_eq(quota_clock_set(c, t0 + 20 * 600 * TL_MS), 0);
	cr_assert_eq(quota_clock_set(c, t0 + 21 * 600 * TL_MS - 1), 0);
	cr_assert_eq(quota_clock_set(c, t0 + 21 * 600 * TL_MS), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(atomic_load(&w.rc), 1000, "batch waiter: %s", quota_strerror(atomic_load(&w.rc) - 1000));
	cr_assert_eq(quota_ticket_time(&w.t), t0 + 21 * 600 * TL_MS, "admitted at %+lld ns of its turn",
		     (long long)(quota_ticket_time(&w.t) - (t0 + 21 * 600 * TL_MS)));
	quota_close(c);
}

/* A top-lane waiter takes its place at once (first come, first served in
 * its lane), so a batch reservation after it waits for it too. */
Test(lanes, top_lane_waiter_keeps_its_place)
{
	char name[128];
	quota_client *c = tl_manual("lt", LANES, name, sizeof(name));
	struct quota_reserve_opts batch = lane_opts(1), top = lane_opts(0);
	struct quota_ticket t;
	for (int i = 0; i < 100; i++)
		cr_assert_eq(quota_reserve_ex(c, 0, &ONE, 0, i < 80 ? &batch : &top, &t), 0);
	int64_t t0 = quota_now(c), tat = atomic_load(qs_tat(tl_quota(c, 0), QUOTA_RPM));
	struct waiter w = { .c = c, .lane = 0, .timeout = 10 * TL_S, .cost = ONE };
	pthread_t th;
	start_waiter(&th, &w);
	/* its place is taken before it sleeps: the TAT moved by one interval */
	while (atomic_load(qs_tat(tl_quota(c, 0), QUOTA_RPM)) == tat)
		sched_yield();
	cr_assert_eq(quota_reserve_ex(c, 0, &ONE, 0, &batch, &t), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 22 * 600 * TL_MS, "batch retry after %lld ms",
		     (long long)(t.retry_after_ns / TL_MS));
	cr_assert_eq(quota_clock_set(c, t0 + 600 * TL_MS), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(atomic_load(&w.rc), 1000);
	cr_assert_eq(quota_ticket_time(&w.t), t0 + 600 * TL_MS);
	quota_close(c);
}

/* tpm 6000, burst 1: b = 6000 tokens, 10 ms each. */
#define STREAM "\"tpm\": 6000, \"context_window\": 5000"

static uint64_t avail(quota_client *c)
{
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	return in.rate[QUOTA_TPM].available;
}

/* A stream is charged as it grows; its commit refunds from the last piece,
 * and settles at exactly what was used. */
Test(extend, charged_as_it_grows)
{
	char name[128];
	quota_client *c = tl_manual("ex", STREAM, name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 100, 200 }, 0, &t), 0);
	cr_assert_eq(avail(c), 5700);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 500 }, 0), 0);
	cr_assert_eq(avail(c), 5200);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 500 }, 0), 0);
	cr_assert_eq(avail(c), 4700);
	/* used 100 + 1000 of 1300: the last piece gives back 200 */
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 100, 1000 }), 0);
	cr_assert_eq(avail(c), 4900);
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.admitted, 1);
	cr_assert_eq(in.admitted_output_tokens, 1000);
	/* a refund never reaches into the pieces before the last: used 300 of
	 * 1200 leaves 200 + 500 charged (the last piece, 500, back whole) */
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 100, 200 }, 0, &t), 0);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 500 }, 0), 0);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 500 }, 0), 0);
	cr_assert_eq(avail(c), 4900 - 1300);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 100, 200 }), 0);
	cr_assert_eq(avail(c), 4900 - 800);
	quota_close(c);
}

Test(extend, refused_and_waiting)
{
	char name[128];
	quota_client *c = tl_manual("ew", STREAM, name, sizeof(name));
	struct quota_ticket t, t2;
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 100, 100 }, 0, &t), 0);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 1, 0, 100 }, 0), -EINVAL);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 0 }, 0), -EINVAL);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 4801 }, 0), -E2BIG); /* context */
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 0, 5000 }, 0, &t2), 0);
	/* 800 left: 1000 more waits 200 tokens = 2 s */
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 1000 }, 0), -EAGAIN);
	cr_assert_eq(t.retry_after_ns, 2 * TL_S);
	cr_assert_eq(avail(c), 800, "a refused extension charged something");
	struct waiter w = { .c = c, .timeout = 10 * TL_S, .cost = { 0, 0, 1000 }, .extend = &t };
	pthread_t th;
	int64_t t0 = quota_now(c);
	start_waiter(&th, &w);
	cr_assert_eq(quota_clock_set(c, t0 + 2 * TL_S), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(atomic_load(&w.rc), 1000, "extend: %s", quota_strerror(atomic_load(&w.rc) - 1000));
	cr_assert_eq(t.waited_ns, 2 * TL_S);
	cr_assert_eq(avail(c), 0);
	cr_assert_eq(quota_cancel(c, &t2), 0);
	cr_assert_eq(quota_cancel(c, &t), 0);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 1 }, 0), -EINVAL);
	cr_assert_eq(avail(c), 6000);
	quota_close(c);
}

/* Mid-stream, what is known unused goes back; the ticket stays open with
 * its in-flight slot; commit then settles the rest. */
Test(extend, partial_settle)
{
	char name[128];
	quota_client *c = tl_manual("ep", "\"tpm\": 6000, \"max_inflight\": 1", name, sizeof(name));
	struct quota_ticket t, t2;
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 100, 1000 }, 0, &t), 0);
	cr_assert_eq(quota_settle_partial(c, &t, &(struct quota_cost){ 1, 100, 1001 }), -EINVAL);
	cr_assert_eq(quota_settle_partial(c, &t, &(struct quota_cost){ 2, 100, 100 }), -EINVAL);
	cr_assert_eq(quota_settle_partial(c, &t, &(struct quota_cost){ 1, 100, 600 }), 0);
	cr_assert_eq(avail(c), 5300);
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.inflight, 1);
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 1, 1 }, 0, &t2), -EAGAIN);
	cr_assert_eq(quota_extend(c, &t, &(struct quota_cost){ 0, 0, 300 }, 0), 0);
	cr_assert_eq(avail(c), 5000);
	cr_assert_eq(quota_settle_partial(c, &t, &(struct quota_cost){ 1, 100, 800 }), 0);
	cr_assert_eq(avail(c), 5100);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 100, 500 }), 0);
	cr_assert_eq(avail(c), 5300, "a refund reached before the last piece");
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.inflight, 0);
	cr_assert_eq(in.admitted_output_tokens, 500);
	quota_close(c);
}

/* "refund": "none": the estimate stays until the end. */
Test(extend, partial_settle_refund_none)
{
	char name[128];
	quota_client *c = tl_manual("en", "\"tpm\": 6000, \"refund\": \"none\"", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 100, 1000 }, 0, &t), 0);
	cr_assert_eq(quota_settle_partial(c, &t, &(struct quota_cost){ 1, 100, 600 }), 0);
	cr_assert_eq(avail(c), 4900);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 100, 600 }), 0);
	cr_assert_eq(avail(c), 4900);
	quota_close(c);
}

/* Every new key refused with the file, the key and the reason. */
static void refused(const char *lanes, const char *expect)
{
	char json[1024], err[512];
	struct qd_config cfg;
	snprintf(json, sizeof(json), "{\"quotas\": {\"q\": {\"rpm\": 100, \"lanes\": %s}}}", lanes);
	int r = qd_config_parse(json, strlen(json), "f.json", &cfg, err, sizeof(err));
	cr_assert_eq(r, -EINVAL, "accepted: %s", lanes);
	cr_assert(strstr(err, expect) != NULL, "for %s: got \"%s\", expected \"%s\"", lanes, err, expect);
	printf("refused: %-60s -> %s\n", lanes, err);
}

Test(lanes, config_keys)
{
	refused("[1]", "f.json: quotas.q.lanes: must be an object of named lanes");
	refused("{\"a\": {}}", "quotas.q.lanes: 1 lanes: give 2 to 4");
	refused("{\"a\": {}, \"b\": {}, \"c\": {}, \"d\": {}, \"e\": {}}", "5 lanes");
	refused("{\"a\": {\"headroom\": 0.2}, \"a\": {}}", "quotas.q.lanes.a: duplicate key");
	refused("{\"a b\": {}, \"c\": {}}", "quotas.q.lanes.a b: lane names are 1 to 15");
	refused("{\"a\": 3, \"b\": {}}", "quotas.q.lanes.a: must be an object");
	refused("{\"a\": {\"share\": 1}, \"b\": {}}", "quotas.q.lanes.a.share: unknown key");
	refused("{\"a\": {\"headroom\": \"x\"}, \"b\": {}}", "quotas.q.lanes.a.headroom: must be a number");
	refused("{\"a\": {\"headroom\": 1}, \"b\": {}}", "quotas.q.lanes.a.headroom: must be below 1");
	refused("{\"a\": {\"headroom\": -0.1}, \"b\": {}}", "must be a non-negative number");
	refused("{\"a\": {\"headroom\": 0.2}, \"b\": {\"headroom\": 0.1}}",
		"quotas.q.lanes.b.headroom: the lowest lane has no lane below");
	refused("{\"a\": {\"headroom\": 0.6}, \"b\": {\"headroom\": 0.5}, \"c\": {}}",
		"quotas.q.lanes: the headrooms add up to 1.1");
	refused("{\"a\": {\"headroom\": 0.999}, \"b\": {}}", "quotas.q.lanes.b: the headroom above leaves this lane no capacity");
	char err[512];
	struct qd_config cfg;
	const char *ok = "{\"quotas\": {\"q\": {\"rpm\": 100, \"lanes\": {\"i\": {\"headroom\": 0.2}, \"b\": {}}}}}";
	cr_assert_eq(qd_config_parse(ok, strlen(ok), "f.json", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.quotas[0].nlanes, 2);
	cr_assert_eq(cfg.quotas[0].lanes[0].headroom_ppm, 200000);
	qd_config_free(&cfg);
}
