/* SPDX-License-Identifier: MIT */
/*
 * log.c - quotad's stderr log (one line per event, with pid and level) and
 * its clocks.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "quotad.h"

int qd_verbose;

void qd_log(const char *level, const char *fmt, ...)
{
	if (strcmp(level, "debug") == 0 && !qd_verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "quotad[%d]: %s: ", getpid(), level);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

int64_t qd_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * QC_NS_PER_S + ts.tv_nsec;
}

int64_t qd_now(const struct daemon *d)
{
	if (d->g.incompat_flags & QS_INCOMPAT_MANUAL_CLOCK)
		return atomic_load_explicit(&d->h->manual_now_ns, memory_order_acquire);
	return qd_mono();
}
