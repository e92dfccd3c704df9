/* SPDX-License-Identifier: MIT */
/* opt.h - command-line number parsing shared by the tools (quota-sim,
 * quota-worker, quota-proxy): strict, range-checked, exit status 2 on bad
 * input. */
#ifndef QUOTA_TOOLS_OPT_H
#define QUOTA_TOOLS_OPT_H

#include <stdint.h>

/* A decimal integer in [lo, hi] for option --@name of program @prog, or a
 * message on stderr and exit(2). */
uint64_t tool_opt_uint(const char *prog, const char *name, const char *s, uint64_t lo, uint64_t hi);

/* A duration in any format quota_parse_duration() accepts, in ns, for option
 * --@name of program @prog, or a message on stderr and exit(2). In
 * opt-duration.c, for the tools that link libquota. */
int64_t tool_opt_duration(const char *prog, const char *name, const char *s);

#endif
