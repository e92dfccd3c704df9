/* SPDX-License-Identifier: MIT */
/* opt-duration.c - see opt.h. Apart from opt.c because it links libquota
 * (quota_parse_duration), which quota-sim, the referee, does not. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "opt.h"
#include "quota.h"

int64_t tool_opt_duration(const char *prog, const char *name, const char *s)
{
	int64_t ns;
	int r = quota_parse_duration(s, &ns);

	if (r < 0) {
		fprintf(stderr, "%s: --%s: '%s': %s (e.g. \"30s\", \"1m30s\", \"0.5\")\n", prog, name, s,
			r == -ERANGE ? "too long" : "not a duration");
		exit(2);
	}
	return ns;
}
