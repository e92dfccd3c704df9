/* SPDX-License-Identifier: MIT */
/* testlib.c - see testlib.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
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

void tl_kill_children(pid_t *pids, int n)
{
	for (int i = 0; i < n; i++)
		if (pids[i] > 0) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
			pids[i] = 0;
		}
}

void tl_reap(const pid_t *pids, int n)
{
	for (int i = 0; i < n; i++) {
		int st;
		cr_assert_eq(waitpid(pids[i], &st, 0), pids[i]);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d failed (status %d)", i, st);
	}
}

int tl_child_open(const char *name, int go, quota_client **ret)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	char b;
	int err = quota_open(name, ret);
	if (err == 0 && read(go, &b, 1) != 1)
		err = -EPIPE;
	return err;
}

bool tl_until(bool (*ok)(void *arg), void *arg)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		if (ok(arg))
			return true;
		sched_yield();
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while (t.tv_sec - t0.tv_sec < 5);
	return false;
}

struct word_is {
	_Atomic int64_t *w;
	int64_t want;
};

static bool word_is(void *arg)
{
	struct word_is *x = arg;
	return atomic_load(x->w) == x->want;
}

bool tl_until_word(_Atomic int64_t *w, int64_t want)
{
	return tl_until(word_is, &(struct word_is){ w, want });
}
