/* SPDX-License-Identifier: MIT */
/* opt.c - see opt.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "opt.h"

uint64_t tool_opt_uint(const char *prog, const char *name, const char *s, uint64_t lo, uint64_t hi)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!s || !*s || *s == '-' || *s == '+')
		goto bad;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		goto bad;
	return v;
bad:
	fprintf(stderr, "%s: --%s: expected an integer in [%" PRIu64 ", %" PRIu64 "], got '%s'\n", prog,
		name, lo, hi, s ? s : "");
	exit(2);
}
