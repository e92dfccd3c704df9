/* SPDX-License-Identifier: MIT */
/*
 * test_learn.c - estimates that learn and alarms, on a manual clock: the
 * commits' output tokens go to the thread's decaying histogram; quotad's
 * merge (the same qc_learn_publish() its check calls) publishes the p99's
 * bucket edge; an auto_estimate quota reserves it for callers that pass 0
 * output tokens, bounded by their max_tokens and the context window;
 * alarms count long holds and commits far above their estimate; the new
 * config keys are refused with the file, the key and the reason; quotas
 * without these keys keep the fast paths.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "config.h"
#include "internal.h"
#include "testlib.h"

#define AUTO "\"tpm\": 10000000, \"context_window\": 10000, \"auto_estimate\": true, " \
	"\"alarms\": {\"held_s\": 5, \"over_estimate\": 2}"

static uint64_t reserved_out(quota_client *c, uint64_t max_out, struct quota_ticket *t)
{
	struct quota_reserve_opts o;
	quota_reserve_opts_init(&o, sizeof(o));
	o.max_output_tokens = max_out;
	cr_assert_eq(quota_reserve_ex(c, 0, &(struct quota_cost){ 1, 10, 0 }, 0, &o, t), 0);
	return qt_priv(t)->output_tokens;
}

static void publish(quota_client *c)
{
	uint8_t learns[1] = { 1 };
	uint64_t scratch[QC_LEARN_SCRATCH(1)];
	qc_learn_publish(&c->g, learns, 1, scratch);
}

static void commit_out(quota_client *c, uint64_t out)
{
	struct quota_ticket t;
	reserved_out(c, 0, &t);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 10, out }), 0);
}

Test(learn, auto_estimate_reserves_the_learned_p99)
{
	char name[128];
	quota_client *c = tl_manual("la", AUTO, name, sizeof(name));
	struct quota_ticket t;
	/* nothing learned yet: the bound (context window - input, or max_tokens) */
	cr_assert_eq(reserved_out(c, 0, &t), 9990);
	cr_assert_eq(quota_cancel(c, &t), 0);
	cr_assert_eq(reserved_out(c, 500, &t), 500);
	cr_assert_eq(quota_cancel(c, &t), 0);
	/* a skewed workload: 150 answers of 100 tokens, 48 of 300, 2 of 3000 */
	for (int i = 0; i < 200; i++)
		commit_out(c, i < 150 ? 100 : i < 198 ? 300 : 3000);
	publish(c);
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.learn, 2);
	cr_assert_eq(in.learned_samples, 200);
	cr_assert_eq(in.output_hist[6], 150); /* [96, 128) */
	cr_assert_eq(in.output_hist[9], 48);  /* [256, 384) */
	cr_assert_eq(in.output_hist[15], 2);  /* 2048 and up */
	cr_assert_eq(in.learned_output, 383, "learned %llu", (unsigned long long)in.learned_output);
	cr_assert_eq(reserved_out(c, 0, &t), 383);
	cr_assert_eq(quota_cancel(c, &t), 0);
	cr_assert_eq(reserved_out(c, 300, &t), 300);
	cr_assert_eq(quota_cancel(c, &t), 0);
	/* an explicit output is kept as it is */
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 42 }, 0, &t), 0);
	cr_assert_eq(qt_priv(&t)->output_tokens, 42);
	cr_assert_eq(quota_cancel(c, &t), 0);
	/* the histogram decays: counts stay within 8 bits */
	for (int i = 0; i < 300; i++)
		commit_out(c, 100);
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_leq(in.output_hist[6], 255);
	cr_assert_gt(in.output_hist[6], 127);
	printf("learned: output p99 edge %llu from %llu samples; after decay bucket [96,128) holds %llu\n",
	       (unsigned long long)in.learned_output, (unsigned long long)in.learned_samples,
	       (unsigned long long)in.output_hist[6]);
	/* a p99 in the last bucket has no edge: the caller's bound */
	for (int i = 0; i < 300; i++)
		commit_out(c, 5000);
	publish(c);
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.learned_output, UINT64_MAX);
	cr_assert_eq(reserved_out(c, 700, &t), 700);
	cr_assert_eq(quota_cancel(c, &t), 0);
	cr_assert_eq(reserved_out(c, 0, &t), 9990);
	cr_assert_eq(quota_cancel(c, &t), 0);
	quota_close(c);
}

/* The buckets' edges (layout.h): every value falls in the bucket whose
 * range holds it, the p99's edge is never below the value. */
Test(learn, bucket_edges)
{
	for (uint64_t x = 0; x < 100000; x++) {
		uint32_t b = qs_hist_bucket(x);
		cr_assert(b == QS_HIST_BUCKETS - 1 || x <= qs_hist_top(b), "%llu above bucket %u",
			  (unsigned long long)x, b);
		cr_assert(b == 0 || x > qs_hist_top(b - 1), "%llu below bucket %u", (unsigned long long)x, b);
	}
	cr_assert_eq(qs_hist_top(12), 1023);
	cr_assert_eq(qs_hist_bucket(2048), 15);
	cr_assert_eq(qs_hist_bucket(UINT64_MAX), 15);
}

Test(learn, alarms)
{
	char name[128];
	quota_client *c = tl_manual("al", AUTO, name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 100 }, 0, &t), 0);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 10, 200 }), 0); /* 2x: not above */
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 100 }, 0, &t), 0);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 10, 201 }), 0);
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 100 }, 0, &t), 0);
	cr_assert_eq(quota_clock_set(c, quota_now(c) + 5 * TL_S + 1), 0);
	cr_assert_eq(quota_cancel(c, &t), 0);
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.alarm_over, 1);
	cr_assert_eq(in.alarm_held, 1);
	cr_assert_eq(in.alarm_held_ns, 5 * TL_S);
	cr_assert_eq(in.alarm_over_pct, 200);
	quota_close(c);
	/* folded into the quota's totals when the client leaves */
	cr_assert_eq(quota_open(name, &c), 0);
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.alarm_over, 1);
	cr_assert_eq(in.alarm_held, 1);
	quota_close(c);
}

/* Lanes, learning and alarms leave the fast paths to the general ones;
 * a quota without them keeps both. */
Test(learn, fast_paths_only_without_the_new_keys)
{
	static const struct { const char *json; bool fast, fast_settle; } cases[] = {
		{ "\"rpm\": 100, \"tpm\": 1000", true, true },
		{ "\"rpm\": 100, \"lanes\": {\"a\": {\"headroom\": 0.1}, \"b\": {}}", false, false },
		{ "\"rpm\": 100, \"learn\": true", true, false },
		{ "\"rpm\": 100, \"auto_estimate\": true", false, false },
		{ "\"rpm\": 100, \"alarms\": {\"held_s\": 60}", true, false },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char name[128];
		quota_client *c = tl_manual("lf", cases[i].json, name, sizeof(name));
		struct qc_thread *t;
		struct qc_cfg *cf;
		cr_assert_eq(qc_writer(c, &t), 0);
		cr_assert_eq(qc_cfg_get(t, 0, tl_quota(c, 0), &cf), 0);
		cr_assert_eq(cf->fast, cases[i].fast, "%s: fast", cases[i].json);
		cr_assert_eq(cf->fast_settle, cases[i].fast_settle, "%s: fast_settle", cases[i].json);
		quota_close(c);
	}
}

static void refused(const char *body, const char *expect)
{
	char json[1024], err[512];
	struct qd_config cfg;
	snprintf(json, sizeof(json), "{\"quotas\": {\"q\": {\"rpm\": 100, %s}}}", body);
	int r = qd_config_parse(json, strlen(json), "f.json", &cfg, err, sizeof(err));
	cr_assert_eq(r, -EINVAL, "accepted: %s", body);
	cr_assert(strstr(err, expect) != NULL, "for %s: got \"%s\", expected \"%s\"", body, err, expect);
	printf("refused: %-44s -> %s\n", body, err);
}

Test(learn, config_keys)
{
	refused("\"learn\": 1", "f.json: quotas.q.learn: must be true or false, not a number");
	refused("\"auto_estimate\": \"yes\"", "quotas.q.auto_estimate: must be true or false, not a string");
	refused("\"alarms\": 5", "quotas.q.alarms: must be an object {\"held_s\": ..., \"over_estimate\": ...}");
	refused("\"alarms\": {\"held\": 5}", "quotas.q.alarms.held: unknown key (expected \"held_s\" or \"over_estimate\")");
	refused("\"alarms\": {\"held_s\": -5}", "quotas.q.alarms.held_s: must be a non-negative number");
	refused("\"alarms\": {\"over_estimate\": 0.5}", "quotas.q.alarms: over_estimate must be at least 1");
	refused("\"alarms\": {\"over_estimate\": 5000}", "quotas.q.alarms: over_estimate must be at most 1000");
}
