/* SPDX-License-Identifier: MIT */
/*
 * test_learn.c - estimates that learn and alarms, on a manual clock: the
 * commits' output tokens go to the thread's decaying histogram; quotad's
 * merge (the same qc_learn_publish() its check calls) publishes the p99's
 * bucket edge; an auto_estimate quota reserves it for callers that pass 0
 * output tokens, bounded by their max_tokens and the context window;
 * alarms count long holds and commits far above their estimate; the
 * prompt and actual/estimated distributions give their p50 and p99; a
 * ticket left open shows in held_open after at most two of quotad's phase
 * flips (the same qc_held_flip() its check calls) and leaves it when
 * settled, also by another thread; the new config keys are refused with
 * the file, the key and the reason; quotas without these keys keep the
 * fast paths.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
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
 * a quota without them keeps both (held_s leaves fast() too: an admitted
 * ticket counts itself open). */
Test(learn, fast_paths_only_without_the_new_keys)
{
	static const struct { const char *json; bool fast, fast_settle; } cases[] = {
		{ "\"rpm\": 100, \"tpm\": 1000", true, true },
		{ "\"rpm\": 100, \"lanes\": {\"a\": {\"headroom\": 0.1}, \"b\": {}}", false, false },
		{ "\"rpm\": 100, \"learn\": true", true, false },
		{ "\"rpm\": 100, \"auto_estimate\": true", false, false },
		{ "\"rpm\": 100, \"alarms\": {\"held_s\": 60}", false, false },
		{ "\"rpm\": 100, \"alarms\": {\"over_estimate\": 2}", true, false },
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

/* Prompt tokens and actual/estimated output: known commits, known edges. */
Test(learn, prompt_and_ratio_distributions)
{
	char name[128];
	quota_client *c = tl_manual("lp", "\"tpm\": 100000000, \"learn\": true", name, sizeof(name));
	struct quota_ticket t;
	/* 100 commits: prompts 500 (60), 3000 (39), 200000 (1); estimated
	 * output 1000, actual 100 (60: ratio 0.1), 1200 (39: 1.2), 9000 (1) */
	for (int i = 0; i < 100; i++) {
		uint64_t in = i < 60 ? 500 : i < 99 ? 3000 : 200000;
		uint64_t out = i < 60 ? 100 : i < 99 ? 1200 : 9000;
		cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, in, 1000 }, 0, &t), 0);
		cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, in, out }), 0);
	}
	/* an output estimated 0 has no ratio */
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 10, 0 }, 0, &t), 0);
	cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 10, 5 }), 0);
	publish(c);
	struct quota_info in;
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.input_hist[0], 61);  /* < 1024: 60 x 500 and the 10 */
	cr_assert_eq(in.input_hist[3], 39);  /* 2048-3071 */
	cr_assert_eq(in.input_hist[15], 1);  /* 131072 and up */
	cr_assert_eq(in.learned_input_p50, 1023);
	cr_assert_eq(in.learned_input_p99, 3071);
	/* ratios in 1/256: 0.1 -> 25 in [24, 32); 1.2 -> 307 in [256, 384); 9 -> 2304 */
	cr_assert_eq(in.ratio_hist[2], 60);
	cr_assert_eq(in.ratio_hist[9], 39);
	cr_assert_eq(in.ratio_hist[15], 1);
	cr_assert_eq(in.learned_ratio_p50, 31, "ratio p50 %llu", (unsigned long long)in.learned_ratio_p50);
	cr_assert_eq(in.learned_ratio_p99, 383, "ratio p99 %llu", (unsigned long long)in.learned_ratio_p99);
	/* a p99 beyond the last edge: open */
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 150000, 10 }, 0, &t), 0);
		cr_assert_eq(quota_commit(c, &t, &(struct quota_cost){ 1, 150000, 100 }), 0);
	}
	publish(c);
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.learned_input_p99, UINT64_MAX);
	cr_assert_eq(in.learned_ratio_p99, UINT64_MAX);
	cr_assert_eq(in.learned_input_p50, 1023);
	printf("learned: prompt p50 <= %llu, ratio p50 <= %.3f (of %llu samples)\n",
	       (unsigned long long)in.learned_input_p50, (double)(in.learned_ratio_p50 + 1) / 256,
	       (unsigned long long)in.learned_samples);
	/* a 2.1 caller's size gets the 2.1 fields only */
	struct quota_info old;
	memset(&old, 0x5a, sizeof(old));
	size_t v21 = offsetof(struct quota_info, learned_input_p50);
	cr_assert_eq(quota_info(c, 0, &old, v21), 0);
	cr_assert_eq(old.learned_output, in.learned_output);
	cr_assert_eq(old.learned_input_p50, 0x5a5a5a5a5a5a5a5aULL, "written beyond the caller's size");
	quota_close(c);
}

#define HELD "\"rpm\": 1000, \"alarms\": {\"held_s\": 5}"

struct flipper {
	struct qc_held_state st;
	struct qc_held_group *scratch;
};

static uint64_t flip(quota_client *c, struct flipper *f)
{
	if (!f->scratch)
		f->scratch = calloc(c->g.client_capacity, sizeof(*f->scratch));
	return qc_held_flip(&c->g, 0, &f->st, f->scratch);
}

static void *commit_elsewhere(void *arg)
{
	void **a = arg;
	cr_assert_eq(quota_commit(a[0], a[1], &(struct quota_cost){ 1, 0, 0 }), 0);
	return NULL;
}

Test(learn, held_open_after_two_flips_until_settled)
{
	char name[128];
	quota_client *c = tl_manual("lh", HELD, name, sizeof(name));
	struct flipper f = { 0 };
	struct quota_ticket a, b;
	struct quota_info in;
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 0, 0 }, 0, &a), 0);
	cr_assert(qt_priv(&a)->held & QT_OPEN_COUNTED);
	cr_assert_eq(flip(c, &f), 0, "admitted during the phase just ended: not yet");
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 0, 0 }, 0, &b), 0);
	cr_assert_eq(flip(c, &f), 1, "a: open since before the previous flip");
	cr_assert_eq(quota_info(c, 0, &in, sizeof(in)), 0);
	cr_assert_eq(in.held_open, 1);
	cr_assert_eq(in.held_flips, 2);
	cr_assert_eq(flip(c, &f), 2, "both, and a stays shown");
	cr_assert_eq(flip(c, &f), 2);
	/* a settled by another thread of the process: its row goes to -1, the
	 * process's sum stays exact */
	pthread_t th;
	void *arg[2] = { c, &a };
	cr_assert_eq(pthread_create(&th, NULL, commit_elsewhere, arg), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	struct qc_held_group g[4];
	cr_assert_eq(qc_held_sums(&c->g, 0, g), 1, "one process");
	cr_assert_eq(g[0].open[0] + g[0].open[1], 1);
	cr_assert_eq(flip(c, &f), 1, "a left at the next flip");
	cr_assert_eq(flip(c, &f), 1);
	cr_assert_eq(quota_cancel(c, &b), 0);
	cr_assert_eq(flip(c, &f), 0);
	cr_assert_eq(flip(c, &f), 0);
	/* a ticket of a handle that closed is gone with it */
	quota_client *c2;
	cr_assert_eq(quota_open(name, &c2), 0);
	cr_assert_eq(quota_reserve(c2, 0, &(struct quota_cost){ 1, 0, 0 }, 0, &a), 0);
	flip(c, &f);
	cr_assert_eq(flip(c, &f), 1);
	quota_close(c2);
	cr_assert_eq(flip(c, &f), 0);
	cr_assert_eq(qc_held_sums(&c->g, 0, g), 1);
	cr_assert_eq(g[0].open[0] + g[0].open[1], 0, "nothing folded from the closed handle");
	free(f.st.e);
	free(f.scratch);
	quota_close(c);
}

/* A quota without held_s counts nothing and keeps its tickets plain. */
Test(learn, held_open_only_with_held_s)
{
	char name[128];
	quota_client *c = tl_manual("ln", "\"rpm\": 1000, \"learn\": true", name, sizeof(name));
	struct quota_ticket t;
	cr_assert_eq(quota_reserve(c, 0, &(struct quota_cost){ 1, 0, 0 }, 0, &t), 0);
	cr_assert_eq(qt_priv(&t)->held, 0);
	struct qc_held_group g[4];
	cr_assert_eq(qc_held_sums(&c->g, 0, g), 1);
	cr_assert_eq(g[0].open[0] | g[0].open[1], 0);
	cr_assert_eq(quota_cancel(c, &t), 0);
	quota_close(c);
}
