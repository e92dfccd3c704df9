/* SPDX-License-Identifier: MIT */
/* fuzz_feedback.c - the provider header and duration parsers on arbitrary
 * bytes: "name: value" is split at the first colon. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "quota.h"

const char *const fuzz_seeds[] = {
	"x-ratelimit-reset-tokens:2m59.56s",
	"x-ratelimit-reset-requests:120ms",
	"retry-after:7.66",
	"x-ratelimit-remaining-tokens:899000",
	"x-ratelimit-limit-requests:1200",
	"1h2m3.000000001s",
	NULL,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	int64_t ns;
	int r = quota_parse_duration(s, &ns);
	if (r == 0 && ns < 0)
		abort();
	struct quota_feedback fb;
	quota_feedback_init(&fb, sizeof(fb));
	char *colon = strchr(s, ':');
	if (colon) {
		*colon = '\0';
		(void)quota_feedback_header(&fb, s, colon + 1);
	}
	free(s);
	return 0;
}
