/* SPDX-License-Identifier: MIT */
/*
 * test_config.c - one test per kind of bad configuration: each is refused,
 * and the message names the file, the key path and the reason.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config.h"

static void refused(const char *json, const char *want_key, const char *want_reason)
{
	struct qd_config cfg;
	char err[512] = "";
	int r = qd_config_parse(json, strlen(json), "test.json", &cfg, err, sizeof(err));
	cr_assert_eq(r, -EINVAL, "accepted: %s", json);
	cr_assert(strncmp(err, "test.json: ", 11) == 0, "no file name in: %s", err);
	cr_assert(strstr(err, want_key) != NULL, "key '%s' not named in: %s", want_key, err);
	cr_assert(strstr(err, want_reason) != NULL, "reason '%s' not in: %s", want_reason, err);
}

#define Q(body) "{\"quotas\": {\"m\": {" body "}}}"

Test(config, default_is_valid)
{
	struct qd_config cfg;
	char err[512];
	cr_assert_eq(qd_config_parse(qd_default_config, strlen(qd_default_config), "default", &cfg,
				     err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.nquotas, 1);
	cr_assert_str_eq(cfg.quotas[0].name, "llama-4-scout");
	cr_assert_eq(cfg.quotas[0].rate[QUOTA_RPM], 1200);
	cr_assert_eq(cfg.quotas[0].rate[QUOTA_TPM], 900000);
	cr_assert_eq(cfg.quotas[0].context_window, 131072);
	cr_assert_eq(cfg.quotas[0].price_in_pusd, 100000);  /* $0.10 / Mtok */
	cr_assert_eq(cfg.quotas[0].price_out_pusd, 250000); /* $0.25 / Mtok */
	cr_assert_eq(cfg.quotas[0].burst_ppm, 990000, "1 %% below the provider (config.c)");
	qd_config_free(&cfg);
}

Test(config, unknown_keys)
{
	refused("{\"quotas\": {\"m\": {\"rpm\": 1}}, \"sgement\": \"x\"}", "sgement", "unknown key");
	refused(Q("\"rpmm\": 5"), "quotas.m.rpmm", "unknown key");
	refused(Q("\"price_per_mtok\": {\"inptu\": 1}"), "quotas.m.price_per_mtok.inptu", "unknown key");
}

Test(config, wrong_types)
{
	refused(Q("\"rpm\": \"100\""), "quotas.m.rpm", "not a string");
	refused(Q("\"refund\": true"), "quotas.m.refund", "\"actual\" or \"none\"");
	refused("{\"quotas\": []}", "quotas", "not an array");
	refused("{\"quotas\": {\"m\": 5}}", "quotas.m", "must be an object");
	refused("{\"clock\": 1, \"quotas\": {\"m\": {}}}", "clock", "\"monotonic\" or \"manual\"");
	refused("[1, 2]", "test.json", "top level must be an object");
}

Test(config, negatives)
{
	refused(Q("\"tpm\": -5"), "quotas.m.tpm", "non-negative");
	refused(Q("\"price_per_mtok\": {\"input\": -0.1}"), "quotas.m.price_per_mtok.input", "non-negative");
}

Test(config, fractions_where_integers_are_required)
{
	refused(Q("\"rpm\": 1.5"), "quotas.m.rpm", "must be an integer");
	refused(Q("\"max_inflight\": 0.5"), "quotas.m.max_inflight", "must be an integer");
}

Test(config, values_that_would_overflow)
{
	refused(Q("\"tpm\": 1e13"), "quotas.m.tpm", "too large");
	refused(Q("\"tpd\": 18446744073709551616"), "quotas.m.tpd", "too large");
	refused(Q("\"budget_usd\": {\"month\": 1e9}"), "quotas.m.budget_usd.month", "too large");
	refused(Q("\"burst\": 1.5"), "quotas.m.burst", "too large");
	refused(Q("\"burst\": 0"), "quotas.m.burst", "(0, 1]");
	refused("{\"max_clients\": 100000, \"quotas\": {\"m\": {}}}", "max_clients", "too large");
}

Test(config, duplicates)
{
	refused("{\"quotas\": {\"m\": {\"rpm\": 1}, \"m\": {\"rpm\": 2}}}", "quotas.m", "duplicate");
	refused(Q("\"rpm\": 1, \"rpm\": 2"), "quotas.m.rpm", "duplicate");
}

Test(config, more_quotas_than_the_segment_holds)
{
	refused("{\"max_quotas\": 1, \"quotas\": {\"a\": {}, \"b\": {}}}", "quotas",
		"segment holds max_quotas = 1");
}

Test(config, empty_and_malformed)
{
	refused("", "test.json", "empty");
	refused("  \n ", "test.json", "empty");
	refused("{\"quotas\": {}}", "quotas", "at least one quota");
	refused("{}", "quotas", "missing");
	refused("{\"quotas\": {\"m\": {\"rpm\": 1,}}}", "line 1", "malformed JSON");
	refused("{\"quotas\": {\"m\": {}}} x", "test.json", "trailing");
	refused("{\"quotas\": {\"bad name\": {}}}", "quotas.bad name", "quota names");
}

Test(config, missing_and_empty_files)
{
	struct qd_config cfg;
	char err[512];
	cr_assert_eq(qd_config_load("/nonexistent/quotad.json", &cfg, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "/nonexistent/quotad.json: cannot open") != NULL, "%s", err);
	char path[] = "/tmp/qtest-config-XXXXXX";
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	close(fd);
	int r = qd_config_load(path, &cfg, err, sizeof(err));
	unlink(path);
	cr_assert_eq(r, -EINVAL);
	cr_assert(strstr(err, path) && strstr(err, "empty"), "%s", err);
}

/* Global quotas (issue 11): the redis section and the per-quota keys. */
#define R(redis, quota) "{\"redis\": " redis ", \"quotas\": {\"m\": {" quota "}}}"
#define GQ "\"rpm\": 600, \"scope\": \"global\", \"expected_hosts\": 3"

Test(config, global_quotas_accepted)
{
	struct qd_config cfg;
	char err[512];
	const char *j = "{\"segment\": \"s1\", \"redis\": {\"url\": \"redis://127.0.0.1:6379\"}, \"quotas\": {"
			"\"m\": {\"rpm\": 600, \"tpm\": 90000, \"scope\": \"global\", \"expected_hosts\": 4},"
			"\"d\": {\"rpd\": 1000, \"scope\": \"global\", \"global_key\": \"key:d\", \"expected_hosts\": 2},"
			"\"h\": {\"rpm\": 10}}}";
	cr_assert_eq(qd_config_parse(j, strlen(j), "t", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert(cfg.redis.enabled);
	cr_assert_str_eq(cfg.redis.host, "127.0.0.1");
	cr_assert_eq(cfg.redis.port, 6379);
	cr_assert(strstr(cfg.redis.host_id, "/s1") != NULL, "default host_id %s", cfg.redis.host_id);
	cr_assert(cfg.quotas[0].global);
	cr_assert_str_eq(cfg.quotas[0].global_key, "m");
	cr_assert_eq(cfg.quotas[0].outage, QD_OUTAGE_STATIC_SHARE, "per-minute: static_share");
	cr_assert_eq(cfg.quotas[1].outage, QD_OUTAGE_FAIL_CLOSED, "per-day: fail_closed");
	cr_assert_str_eq(cfg.quotas[1].global_key, "key:d");
	cr_assert(!cfg.quotas[2].global);
	/* The local record holds the static share. */
	cr_assert_eq(qd_local_rate(&cfg.quotas[0], QUOTA_RPM), 150);
	cr_assert_eq(qd_local_rate(&cfg.quotas[0], QUOTA_TPM), 22500);
	cr_assert_eq(qd_local_rate(&cfg.quotas[2], QUOTA_RPM), 10);
	qd_config_free(&cfg);
	j = R("{\"url\": \"redis://h:1\"}", GQ ", \"max_inflight\": 6");
	cr_assert_eq(qd_config_parse(j, strlen(j), "t", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.quotas[0].max_inflight, 6);
	cr_assert_eq(cfg.quotas[0].inflight_lease_ns, 1800 * 1000000000ULL);
	qd_config_free(&cfg);
	j = R("{\"url\": \"redis://h:1\"}", "\"budget_usd\": {\"day\": 3}, \"scope\": \"global\", \"expected_hosts\": 2");
	cr_assert_eq(qd_config_parse(j, strlen(j), "t", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.quotas[0].outage, QD_OUTAGE_FAIL_CLOSED, "money fails closed by default");
	cr_assert_eq(qd_local_budget(&cfg.quotas[0], cfg.quotas[0].budget_day_nusd), 375000000ULL);
	qd_config_free(&cfg);
	j = R("{\"url\": \"redis://h:1\"}", "\"max_inflight\": 6, \"scope\": \"global\", \"expected_hosts\": 2, "
	      "\"inflight_lease_s\": 2.5");
	cr_assert_eq(qd_config_parse(j, strlen(j), "t", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.quotas[0].inflight_lease_ns, 2500000000ULL);
	qd_config_free(&cfg);
	j = R("{\"url\": \"unix:///run/redis.sock\", \"host_id\": \"web-1\"}", GQ);
	cr_assert_eq(qd_config_parse(j, strlen(j), "t", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(cfg.redis.unix_path, "/run/redis.sock");
	cr_assert_str_eq(cfg.redis.host_id, "web-1");
	qd_config_free(&cfg);
	j = R("{\"sentinels\": [\"10.0.0.1:26379\", \"s2:26379\"], \"master\": \"mymaster\"}", GQ);
	cr_assert_eq(qd_config_parse(j, strlen(j), "t", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.redis.nsentinels, 2);
	qd_config_free(&cfg);
}

Test(config, global_quotas_refused)
{
	refused(Q(GQ), "quotas.m.scope", "needs the top-level \"redis\"");
	refused(R("{\"url\": \"redis://h:1\"}", "\"rpm\": 6, \"scope\": \"world\""), "quotas.m.scope",
		"\"host\" or \"global\"");
	refused(R("{\"url\": \"redis://h:1\"}", "\"rpm\": 6, \"scope\": \"global\""),
		"quotas.m.expected_hosts", "missing");
	refused(R("{\"url\": \"redis://h:1\"}", GQ ", \"outage\": \"open\""), "quotas.m.outage",
		"\"static_share\" or \"fail_closed\"");
	refused(R("{\"url\": \"redis://h:1\"}", "\"rpm\": 6, \"scope\": \"global\", \"expected_hosts\": 0"),
		"quotas.m.expected_hosts", "at least 1");
	refused(R("{\"url\": \"redis://h:1\"}", "\"rpm\": 6, \"scope\": \"global\", \"expected_hosts\": 1e6"),
		"quotas.m.expected_hosts", "too large");
	refused(R("{\"url\": \"redis://h:1\"}", GQ ", \"global_key\": \"a b\""), "quotas.m.global_key",
		"global keys");
	refused(R("{\"url\": \"redis://h:1\"}", "\"rpm\": 6, \"outage\": \"fail_closed\""),
		"quotas.m.outage", "only for a quota with \"scope\": \"global\"");
	refused(R("{\"url\": \"redis://h:1\"}", GQ ", \"inflight_lease_s\": 60"), "quotas.m.inflight_lease_s",
		"only for a global quota with max_inflight");
	refused(R("{\"url\": \"redis://h:1\"}", GQ ", \"max_inflight\": 4, \"inflight_lease_s\": 1"),
		"quotas.m.inflight_lease_s", "at least 2 s");
	refused(R("{\"url\": \"redis://h:1\"}", GQ ", \"max_inflight\": 4, \"inflight_lease_s\": \"1h\""),
		"quotas.m.inflight_lease_s", "must be a number");
	refused(R("{\"url\": \"redis://h:1\"}", GQ ", \"max_inflight\": 4, \"inflight_lease_s\": 1e7"),
		"quotas.m.inflight_lease_s", "too large");
	refused(R("{\"url\": \"redis://h:1\"}", "\"max_inflight\": 4, \"inflight_lease_s\": 60"),
		"quotas.m.inflight_lease_s", "only for a quota with \"scope\": \"global\"");
	refused(R("{\"url\": \"redis://h:1\"}", "\"scope\": \"global\", \"expected_hosts\": 2"),
		"quotas.m.scope", "at least one rate limit, max_inflight or budget_usd");
	refused("{\"redis\": {\"url\": \"redis://h:1\"}, \"quotas\": {\"a\": {" GQ "}, \"b\": {" GQ
		", \"global_key\": \"a\"}}}", "quotas.b.global_key", "also the global key of quota a");
	refused(R("{\"url\": \"http://h:1\"}", GQ), "redis.url", "\"redis://HOST:PORT\" or");
	refused(R("{\"url\": \"redis://h:0\"}", GQ), "redis.url", "port 1 to 65535");
	refused(R("{\"url\": \"redis://h\"}", GQ), "redis.url", "redis://HOST:PORT");
	refused(R("{\"url\": \"unix://rel/path\"}", GQ), "redis.url", "unix:///ABSOLUTE/PATH");
	refused(R("{\"url\": 5}", GQ), "redis.url", "must be a string");
	refused(R("{}", GQ), "redis.url", "missing");
	refused(R("{\"url\": \"redis://h:1\", \"db\": 2}", GQ), "redis.db", "unknown key");
	refused(R("{\"sentinels\": [\"h:1\"]}", GQ), "redis.master", "missing");
	refused(R("{\"url\": \"redis://h:1\", \"master\": \"m\"}", GQ), "redis.sentinels", "missing");
	refused(R("{\"sentinels\": [\"h\"], \"master\": \"m\"}", GQ), "redis.sentinels", "HOST:PORT");
	refused(R("{\"url\": \"redis://h:1\", \"host_id\": \"\"}", GQ), "redis.host_id", "1 to");
	refused(R("[1]", GQ), "redis", "must be an object");
	refused("{\"clock\": \"manual\", \"redis\": {\"url\": \"redis://h:1\"}, \"quotas\": {\"m\": {" GQ "}}}",
		"quotas.m.scope", "needs the monotonic clock");
}
