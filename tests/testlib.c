/* SPDX-License-Identifier: MIT */
/* testlib.c - see testlib.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config.h"
#include "internal.h"
#include "testlib.h"

#define TL_MAX 16
static char created[TL_MAX][QD_SEGMENT_NAME_MAX + 2];
static int ncreated;
static pid_t creator;
static unsigned counter;

void tl_name(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, "qtest-%s-%d-%u", tag, (int)getpid(), counter++);
}

void tl_cleanup(void)
{
	/* Only the process that created them: forked children must not. */
	if (getpid() != creator)
		return;
	for (int i = 0; i < ncreated; i++)
		shm_unlink(created[i]);
	ncreated = 0;
}

void tl_create(const char *name, const char *json)
{
	char err[512];
	cr_assert(ncreated < TL_MAX, "too many segments in one test");
	if (creator != getpid()) {
		creator = getpid();
		ncreated = 0;
		atexit(tl_cleanup);
	}
	int r = qd_create_segment_json(json, name, err, sizeof(err));
	cr_assert_eq(r, 0, "creating %s: %s", name, err);
	snprintf(created[ncreated++], sizeof(created[0]), "/%s", name);
}

quota_client *tl_manual(const char *tag, const char *quota_json, char *name, size_t len)
{
	char json[2048];
	tl_name(name, len, tag);
	snprintf(json, sizeof(json), "{\"clock\": \"manual\", \"quotas\": {\"q\": {%s}}}", quota_json);
	tl_create(name, json);
	quota_client *c = NULL;
	int r = quota_open(name, &c);
	cr_assert_eq(r, 0, "quota_open(%s): %s", name, quota_strerror(r));
	return c;
}

struct qs_quota *tl_quota(quota_client *c, int id)
{
	return qc_quota(c, id);
}
