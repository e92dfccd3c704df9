/* SPDX-License-Identifier: MIT */
/* format.h - the simulator's header formats (format.c). */
#ifndef QUOTA_SIM_FORMAT_H
#define QUOTA_SIM_FORMAT_H

#include <stddef.h>
#include <stdint.h>

/*
 * @ns as OpenAI prints x-ratelimit-reset-*: "0s"; "120ms" below a second
 * (rounded up to the millisecond); else "7.66s", "2m59.56s", "6m0s",
 * "1h2m3s" (rounded up to the hundredth of a second). 32 bytes suffice.
 */
void sim_fmt_reset(int64_t ns, char *buf, size_t size);

#endif
