/* SPDX-License-Identifier: MIT */
/* fuzz_config.c - quotad's JSON config parser on arbitrary bytes: it must
 * accept or refuse with a message, never crash, leak or read out of bounds;
 * whatever it accepts respects the segment's capacity. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"

const char *const fuzz_seeds[] = {
	"{\"quotas\": {\"m\": {\"rpm\": 60, \"tpm\": 1000, \"burst\": 0.5}}}",
	"{\"segment\": \"x\", \"clock\": \"manual\", \"max_quotas\": 2, \"max_clients\": 3, "
	"\"quotas\": {\"a\": {\"rpd\": 1, \"itpm\": 5, \"otpd\": 7, \"max_inflight\": 2, "
	"\"context_window\": 100, \"refund\": \"none\", \"price_per_mtok\": {\"input\": 0.1, "
	"\"output\": 0.25}, \"budget_usd\": {\"day\": 1, \"month\": 10}}, \"b\": {}}}",
	"{\"quotas\": {\"m\": {\"rpm\": 1e3, \"tpm\": 1099511627776}}}",
	"{\"quotas\": {\"m\": {\"rpm\": -1}}, \"quotas\": 5}",
	"{\"redis\": {\"url\": \"unix:///r.sock\", \"host_id\": \"h1\"}, \"quotas\": {\"g\": {\"rpm\": 600, "
	"\"max_inflight\": 6, \"scope\": \"global\", \"expected_hosts\": 3, \"inflight_lease_s\": 600, "
	"\"outage\": \"static_share\", \"global_key\": \"k\"}}}",
	"{\"redis\": {\"url\": \"redis://h:6379\"}, \"quotas\": {\"g\": {\"budget_usd\": {\"day\": 2, \"month\": 40}, "
	"\"price_per_mtok\": {\"input\": 1, \"output\": 2}, \"scope\": \"global\", \"expected_hosts\": 2}}}",
	NULL,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	struct qd_config cfg;
	char err[512];
	if (qd_config_parse(text, size, "fuzz", &cfg, err, sizeof(err)) == 0) {
		if (cfg.nquotas == 0 || cfg.nquotas > cfg.max_quotas)
			abort();
		qd_config_free(&cfg);
	} else if (err[0] == '\0') {
		abort(); /* a refusal always says why */
	}
	free(text);
	return 0;
}
