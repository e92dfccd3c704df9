/* SPDX-License-Identifier: MIT */
/*
 * shmtab.h - the baselines' shared table: a POSIX shm object holding one
 * 128-byte entry per quota (a robust process-shared mutex, used by the mutex
 * baseline only, and the tat words of up to QB_GCRA_MAX limits). The mutex
 * and lock-free reference baselines both use it, each with its own object.
 */
#ifndef QBENCH_SHMTAB_H
#define QBENCH_SHMTAB_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "gcra_ref.h"

struct qb_entry {
	pthread_mutex_t mu;                 /* robust, process-shared */
	_Atomic int64_t tat[QB_GCRA_MAX];   /* ns, CLOCK_MONOTONIC */
} __attribute__((aligned(128)));
_Static_assert(sizeof(struct qb_entry) == 128, "entry size");

struct qb_table {
	char name[96];   /* shm object name, "" when none */
	int nquotas;
	struct qb_gcra g; /* the scenario's constants (inherited by workers) */
};

/* Create the shm object for @nquotas zeroed entries, initialize the mutexes
 * when @mutexes. Returns 0 or a negative errno. */
int qb_table_create(struct qb_table *t, const char *tag, int nquotas, int mutexes);
/* Map the table in the calling process (a worker): entry @index, or NULL. */
struct qb_entry *qb_table_attach(const struct qb_table *t, int index, void **map, uint64_t *len);
void qb_table_detach(void *map, uint64_t len);
/* Remove the shm object (idempotent). */
void qb_table_remove(struct qb_table *t);

/* A worker's handle on one entry: the per-process state of every baseline
 * built on the table (floor, mutex, refcas). */
struct qb_table_state {
	void *map;
	uint64_t len;
	struct qb_entry *e;
};
/* Map @t and allocate a state for entry @index: 0, -ENOMEM or -EIO. */
int qb_table_state_attach(const struct qb_table *t, int index, void **state);
/* Unmap and free a state from qb_table_state_attach(). */
void qb_table_state_detach(void *state);

#endif /* QBENCH_SHMTAB_H */
