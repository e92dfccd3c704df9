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
