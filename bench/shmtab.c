/* SPDX-License-Identifier: MIT */
/*
 * shmtab.c - create, map and remove the baselines' shared table (shmtab.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shmtab.h"

int qb_table_create(struct qb_table *t, const char *tag, int nquotas, int mutexes)
{
	static unsigned seq;
	snprintf(t->name, sizeof(t->name), "/%s-%s-%u", qb_run_prefix, tag, seq++);
	t->nquotas = nquotas;
	uint64_t len = (uint64_t)nquotas * sizeof(struct qb_entry);
	int fd = shm_open(t->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		t->name[0] = 0;
		return -errno;
	}
	int r = 0;
	void *map = MAP_FAILED;
	if (ftruncate(fd, (off_t)len) < 0)
		r = -errno;
	else if ((map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
		r = -errno;
	close(fd);
	if (r < 0) {
		qb_table_remove(t);
		return r;
	}
	struct qb_entry *e = map;
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	for (int i = 0; i < nquotas && r == 0; i++) {
		for (int k = 0; k < QB_GCRA_MAX; k++)
			atomic_init(&e[i].tat[k], 0);
		if (mutexes)
			r = -pthread_mutex_init(&e[i].mu, &a);
	}
	pthread_mutexattr_destroy(&a);
	munmap(map, len);
	if (r < 0)
		qb_table_remove(t);
	return r;
}

struct qb_entry *qb_table_attach(const struct qb_table *t, int index, void **map, uint64_t *len)
{
	if (index < 0 || index >= t->nquotas)
		return NULL;
	int fd = shm_open(t->name, O_RDWR | O_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	*len = (uint64_t)t->nquotas * sizeof(struct qb_entry);
	*map = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (*map == MAP_FAILED)
		return NULL;
	return (struct qb_entry *)*map + index;
}

void qb_table_detach(void *map, uint64_t len)
{
	munmap(map, len);
}

void qb_table_remove(struct qb_table *t)
{
	if (t->name[0])
		shm_unlink(t->name);
	t->name[0] = 0;
}

int qb_table_state_attach(const struct qb_table *t, int index, void **state)
{
	struct qb_table_state *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->e = qb_table_attach(t, index, &s->map, &s->len);
	if (!s->e) {
		free(s);
		return -EIO;
	}
	*state = s;
	return 0;
}

void qb_table_state_detach(void *state)
{
	struct qb_table_state *s = state;
	qb_table_detach(s->map, s->len);
	free(s);
}
