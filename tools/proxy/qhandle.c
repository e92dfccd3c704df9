/* SPDX-License-Identifier: MIT */
/*
 * qhandle.c - see qhandle.h. A LIFO stack of idle handles under a mutex:
 * the most recently used handle (warm in cache) goes out first; handles are
 * opened lazily, so a quiet proxy holds one client slot of the segment.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "qhandle.h"

static struct {
	pthread_mutex_t lock;
	pthread_cond_t freed;
	const char *segment;
	quota_client **idle;
	unsigned nidle, opened, max;
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER, .freed = PTHREAD_COND_INITIALIZER };

int qh_init(const char *segment, unsigned max)
{
	quota_client *c;
	int r;

	pool.idle = calloc(max ? max : 1, sizeof(*pool.idle));
	if (!pool.idle)
		return -ENOMEM;
	r = quota_open(segment, &c);
	if (r < 0) {
		free(pool.idle);
		pool.idle = NULL;
		return r;
	}
	pool.segment = segment;
	pool.max = max ? max : 1;
	pool.idle[pool.nidle++] = c;
	pool.opened = 1;
	return 0;
}

quota_client *qh_get(int *err)
{
	quota_client *c = NULL;
	int r;

	pthread_mutex_lock(&pool.lock);
	while (!pool.nidle && pool.opened >= pool.max)
		pthread_cond_wait(&pool.freed, &pool.lock);
	if (pool.nidle) {
		c = pool.idle[--pool.nidle];
		pthread_mutex_unlock(&pool.lock);
		return c;
	}
	pool.opened++; /* reserve the place, open outside the lock */
	pthread_mutex_unlock(&pool.lock);
	r = quota_open(pool.segment, &c);
	if (r < 0) {
		pthread_mutex_lock(&pool.lock);
		pool.opened--;
		pthread_cond_signal(&pool.freed);
		pthread_mutex_unlock(&pool.lock);
		*err = r;
		return NULL;
	}
	return c;
}

void qh_put(quota_client *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&pool.lock);
	pool.idle[pool.nidle++] = c;
	pthread_cond_signal(&pool.freed);
	pthread_mutex_unlock(&pool.lock);
}

void qh_close_all(void)
{
	pthread_mutex_lock(&pool.lock);
	while (pool.nidle)
		quota_close(pool.idle[--pool.nidle]);
	pool.opened = 0;
	pthread_mutex_unlock(&pool.lock);
	free(pool.idle);
	pool.idle = NULL;
}

void qh_feedback_init(struct quota_feedback *fb)
{
	quota_feedback_init(fb);
}

int qh_info(quota_client *c, int quota, struct quota_info *info)
{
	return quota_info(c, quota, info);
}
