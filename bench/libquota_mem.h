/* SPDX-License-Identifier: MIT */
/*
 * libquota_mem.h - libquota's memory figures (impl_libquota.c).
 */
#ifndef QBENCH_LIBQUOTA_MEM_H
#define QBENCH_LIBQUOTA_MEM_H

#include <stdint.h>

struct qb_libquota_mem {
	uint32_t quotas, clients;         /* the segment's capacities */
	uint64_t segment_bytes;           /* st_size of /dev/shm/NAME */
	uint64_t rss_open_bytes;          /* RSS added by quota_open() */
	uint64_t rss_first_reserve_bytes; /* ... and by a first reserve + cancel */
	uint64_t private_open_bytes;      /* of rss_open_bytes, not shared (heap, handle) */
};

/* 0, -ENOSYS when built without libquota, or another negative errno. */
int qb_libquota_memory(struct qb_libquota_mem *m);

#endif /* QBENCH_LIBQUOTA_MEM_H */
