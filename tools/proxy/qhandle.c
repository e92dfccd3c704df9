/* SPDX-License-Identifier: MIT */
/*
 * qhandle.c - see qhandle.h: one libquota handle for the whole process,
 * used by its event loop's thread only (so one client slot of the segment).
 */
#include <errno.h>

#include "qhandle.h"

static quota_client *handle;

int qh_init(const char *segment)
{
	return quota_open(segment, &handle);
}

quota_client *qh_get(int *err)
{
	if (!handle)
		*err = -ENOENT;
	return handle;
}

void qh_put(quota_client *c)
{
	(void)c;
}

void qh_close_all(void)
{
	quota_close(handle);
	handle = NULL;
}

void qh_feedback_init(struct quota_feedback *fb)
{
	quota_feedback_init(fb, sizeof(*fb));
}

int qh_info(quota_client *c, int quota, struct quota_info *info)
{
	return quota_info(c, quota, info, sizeof(*info));
}
