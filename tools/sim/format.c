/* SPDX-License-Identifier: MIT */
/*
 * format.c - how the simulator writes durations in its rate-limit headers,
 * the way OpenAI does. Rounded up, so a client never retries early.
 */
#include <inttypes.h>
#include <stdio.h>

#include "format.h"

#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)

/*
 * A duration as OpenAI prints x-ratelimit-reset-*: "120ms" below a second
 * (rounded up to the millisecond), else "7.66s", "2m59.56s", "6m0s",
 * "1h2m3s" (rounded up to the hundredth of a second).
 */
void sim_fmt_reset(int64_t ns, char *buf, size_t size)
{
	int64_t cs, h, m, s, frac;
	size_t n = 0;

	if (ns <= 0) {
		snprintf(buf, size, "0s");
		return;
	}
	if (ns <= NS_PER_S - NS_PER_MS) {
		snprintf(buf, size, "%" PRId64 "ms", (ns + NS_PER_MS - 1) / NS_PER_MS);
		return;
	}
	cs = ns / (NS_PER_S / 100) + (ns % (NS_PER_S / 100) != 0);
	h = cs / 360000;
	m = cs / 6000 % 60;
	s = cs / 100 % 60;
	frac = cs % 100;
	buf[0] = '\0';
	if (h)
		n += (size_t)snprintf(buf + n, size - n, "%" PRId64 "h", h);
	if ((h || m) && n < size)
		n += (size_t)snprintf(buf + n, size - n, "%" PRId64 "m", m);
	if (n >= size)
		return;
	if (frac == 0)
		snprintf(buf + n, size - n, "%" PRId64 "s", s);
	else if (frac % 10 == 0)
		snprintf(buf + n, size - n, "%" PRId64 ".%" PRId64 "s", s, frac / 10);
	else
		snprintf(buf + n, size - n, "%" PRId64 ".%02" PRId64 "s", s, frac);
}
