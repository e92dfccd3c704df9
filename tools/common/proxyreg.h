/* SPDX-License-Identifier: MIT */
/*
 * proxyreg.h - how a running quota-proxy makes itself visible to quotactl:
 * each proxy process keeps a small record in a POSIX shm object named
 * after the segment it serves, "/SEGMENT.proxy.PID" (/dev/shm), with where
 * it listens, its upstream (scheme, host, port and path only: never user
 * info, a query or any header) and its counters. The proxy's event loop is
 * the only writer; quotactl maps it read-only. The object is removed when
 * the proxy stops; one left by a killed proxy is recognised (its pid is
 * gone, or is another process now) and removed by the next proxy that
 * registers on the same segment. Mode 0640, group of the segment.
 */
#ifndef QUOTA_TOOLS_PROXYREG_H
#define QUOTA_TOOLS_PROXYREG_H

#include <stdatomic.h>
#include <stdint.h>

#define PROXYREG_MAGIC UINT64_C(0x3159584f52505141) /* "AQPROXY1" little-endian */
#define PROXYREG_VERSION 1

struct proxyreg {
	_Atomic uint64_t magic;     /* stored last (release): the record is complete */
	uint32_t version, size;     /* PROXYREG_VERSION, sizeof(struct proxyreg) */
	int64_t pid;
	uint64_t start_ticks;       /* /proc/PID/stat starttime: tells a reused pid */
	int64_t started_unix;       /* CLOCK_REALTIME seconds */
	char segment[256];
	char listen[80];            /* "ADDR:PORT" */
	char upstream[256];         /* scheme://host[:port][/path] */
	uint32_t workers;           /* --workers of its supervisor (1: alone) */
	uint32_t reserved0;
	/* Counters, written by the proxy's event loop only (relaxed: a reader
	 * wants a recent snapshot, no ordering between them). */
	_Atomic uint64_t requests;       /* requests received */
	_Atomic uint64_t relayed;        /* forwarded upstream (metered or not) */
	_Atomic uint64_t refused;        /* refused locally for budget: 429, insufficient_quota,
					  * context_length_exceeded */
	_Atomic uint64_t bad;            /* refused as malformed or unknown (400, 404, 413) */
	_Atomic uint64_t upstream_429;   /* 429s from the upstream (passed on) */
	_Atomic uint64_t upstream_failed; /* no answer from the upstream (502) */
	_Atomic uint64_t in_flight;      /* at the upstream now */
	_Atomic uint64_t waiting;        /* waiting for budget now */
	_Atomic uint64_t connections;    /* client connections open now */
	uint64_t reserved[7];
};

_Static_assert(sizeof(struct proxyreg) == 768, "struct proxyreg layout");

/*
 * Register this process for @segment (NULL: $QUOTA_SEGMENT, else "quota").
 * @upstream is cleaned (proxyreg_clean_url) before it is stored. Removes the
 * records of dead proxies of the same segment first. 0 and *@ret, or a
 * negative errno (-ENAMETOOLONG for a segment name too long to suffix).
 */
int proxyreg_open(const char *segment, const char *listen, const char *upstream,
		  unsigned workers, struct proxyreg **ret);

/* Unregister (remove the record) and unmap. NULL is fine. */
void proxyreg_close(struct proxyreg *r);

/* Relaxed counter updates (single writer). */
static inline void proxyreg_add(_Atomic uint64_t *c, int64_t d)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + (uint64_t)d,
			      memory_order_relaxed);
}

/* @url without user info, query or fragment, into @out (@size bytes). */
void proxyreg_clean_url(const char *url, char *out, unsigned long size);

/* One record as quotactl sees it: a copy, and whether its process runs. */
struct proxyreg_entry {
	struct proxyreg r;  /* counters copied with relaxed loads */
	int alive;          /* 0: the process is gone (a stale record) */
	char name[300];     /* the shm object, "/SEGMENT.proxy.PID" */
};

/*
 * The records of @segment's proxies, sorted by pid: a malloc'ed array in
 * *@ret (free() it), their number returned, or a negative errno. Records
 * that are not readable or not well-formed are skipped.
 */
int proxyreg_list(const char *segment, struct proxyreg_entry **ret);

#endif
