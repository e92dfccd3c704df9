/* SPDX-License-Identifier: MIT */
/*
 * clock.c - time outside the hot path's single clock read: the UTC day and
 * month that spend budgets are counted in, and process start times (which
 * tell a process from a later one that reuses its pid).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Days since 1970-01-01 -> months since 1970-01 (proleptic Gregorian). */
static uint32_t month_of_day(int64_t z)
{
	/* Shift the epoch to 0000-03-01 so that leap days end a year. */
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t y = yoe + era * 400;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	int64_t m = mp < 10 ? mp + 3 : mp - 9;
	if (m <= 2)
		y++;
	int64_t months = (y - 1970) * 12 + (m - 1);
	return months < 0 ? 0 : (uint32_t)months;
}

void qc_periods_of(int64_t realtime_ns, uint32_t *day, uint32_t *month)
{
	int64_t d = realtime_ns >= 0 ? realtime_ns / QC_DAY_NS : 0;
	*day = (uint32_t)d;
	*month = month_of_day(d);
}

void qc_periods(const struct quota_client *c, int64_t now, uint32_t *day, uint32_t *month)
{
	int64_t off = atomic_load_explicit(&c->g.h->realtime_offset_ns, memory_order_relaxed);
	qc_periods_of(now + off, day, month);
}

uint64_t qc_proc_starttime(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: fields resume after
	 * the last ')'. starttime is field 22, the 20th after it. */
	char *p = strrchr(buf, ')');
	if (!p)
		return 0;
	p++;
	for (int field = 3; field < 22; field++) {
		p = strchr(p + 1, ' ');
		if (!p)
			return 0;
	}
	return strtoull(p + 1, NULL, 10);
}
