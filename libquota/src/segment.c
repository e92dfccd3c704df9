/* SPDX-License-Identifier: MIT */
/*
 * segment.c - the segment's geometry: its size, formatting, and validating a
 * header into the private copy (struct qs_geom) that every later access
 * goes through. quotad formats; every process that attaches validates here
 * first and refuses a foreign, truncated or corrupt segment. After
 * qs_geom_load() no offset, stride or capacity is read from shared memory
 * again, so a process that scribbles over the header later cannot redirect
 * anyone (layout.h).
 */
#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include "layout.h"

static uint32_t index_capacity_for(uint32_t quotas)
{
	uint32_t cap = 16;
	while (cap < 2 * quotas)
		cap <<= 1;
	return cap;
}

static uint32_t record_capacity_for(uint32_t quotas)
{
	/* Every quota's current record, plus one new record per quota for a
	 * reload that changes them all. */
	return 2 * quotas + 2;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/* Offsets of the areas of a segment with this geometry. */
struct areas {
	uint64_t quota_off, record_off, index_off, client_off, size;
	uint32_t rcap, icap;
};

static void areas_of(uint32_t quotas, uint32_t clients, struct areas *a)
{
	a->rcap = record_capacity_for(quotas);
	a->icap = index_capacity_for(quotas);
	a->quota_off = QS_HEADER_SIZE;
	a->record_off = a->quota_off + (uint64_t)quotas * sizeof(struct qs_quota);
	a->index_off = a->record_off + (uint64_t)a->rcap * sizeof(struct qs_record);
	a->client_off = align_up(a->index_off + 2ULL * a->icap * sizeof(struct qs_index), QS_CACHELINE);
	a->size = align_up(a->client_off + (uint64_t)clients * sizeof(struct qs_client), 4096);
}

uint64_t qs_segment_size(const struct qs_geometry *g)
{
	if (g->quota_capacity == 0 || g->quota_capacity > QS_MAX_QUOTAS || g->client_capacity == 0 ||
	    g->client_capacity > QS_MAX_CLIENTS)
		return 0;
	struct areas a;
	areas_of(g->quota_capacity, g->client_capacity, &a);
	return a.size;
}

void qs_format(void *base, const struct qs_geometry *g)
{
	struct qs_header *h = base;
	struct areas a;
	areas_of(g->quota_capacity, g->client_capacity, &a);

	h->magic = QS_MAGIC;
	h->major = QS_MAJOR;
	h->minor = QS_MINOR;
	h->header_size = QS_HEADER_SIZE;
	h->compat_flags = 0;
	h->incompat_flags = g->incompat_flags;
	h->segment_size = a.size;
	h->quota_capacity = g->quota_capacity;
	h->quota_stride = sizeof(struct qs_quota);
	h->quota_off = a.quota_off;
	h->record_capacity = a.rcap;
	h->record_stride = sizeof(struct qs_record);
	h->record_off = a.record_off;
	h->index_capacity = a.icap;
	h->index_stride = sizeof(struct qs_index);
	h->index_off = a.index_off;
	h->client_capacity = g->client_capacity;
	h->client_stride = sizeof(struct qs_client);
	h->client_off = a.client_off;
	h->client_rows = QS_CLIENT_ROWS;
	atomic_store_explicit(&h->state, QS_STATE_INITIALIZING, memory_order_relaxed);
}

/* Read the identity and geometry words once: a scribbler may be changing
 * them, and the checks below must judge the values that get copied. */
static void header_copy(const struct qs_header *h, struct qs_header *out)
{
	qs_load_words(out, h, offsetof(struct qs_header, state));
}

int qs_geom_load(struct qs_geom *g, void *base, uint64_t size)
{
	if (size < QS_HEADER_SIZE)
		return -EBADMSG;
	struct qs_header *live = base;
	struct qs_header h;
	header_copy(live, &h);
	/* acquire: pairs with quotad's release of READY (the header is
	 * complete); read after the copy, so an all-zero copy with state 0 is
	 * a segment being created, not a foreign one. */
	uint32_t state = atomic_load_explicit(&live->state, memory_order_acquire);
	if (state != QS_STATE_READY) {
		if (h.magic == 0 && state == QS_STATE_INITIALIZING)
			return -EAGAIN;
		header_copy(live, &h); /* READY may have come between */
	}
	if (h.magic != QS_MAGIC)
		return -EBADMSG;
	if (h.major != QS_MAJOR)
		return h.major > QS_MAJOR ? -EPROTONOSUPPORT : -EBADMSG;
	if (h.incompat_flags & ~QS_INCOMPAT_KNOWN)
		return -EPROTONOSUPPORT;
	if (h.header_size != QS_HEADER_SIZE || h.segment_size != size)
		return -EBADMSG;
	if (h.quota_capacity == 0 || h.quota_capacity > QS_MAX_QUOTAS || h.client_capacity == 0 ||
	    h.client_capacity > QS_MAX_CLIENTS)
		return -EBADMSG;
	/* Everything else follows from the two capacities: recompute it and
	 * accept only the one layout this library would have made. */
	struct areas a;
	areas_of(h.quota_capacity, h.client_capacity, &a);
	if (h.quota_stride != sizeof(struct qs_quota) || h.quota_off != a.quota_off ||
	    h.record_capacity != a.rcap || h.record_stride != sizeof(struct qs_record) ||
	    h.record_off != a.record_off || h.index_capacity != a.icap ||
	    h.index_stride != sizeof(struct qs_index) || h.index_off != a.index_off ||
	    h.client_stride != sizeof(struct qs_client) || h.client_off != a.client_off ||
	    h.client_rows != QS_CLIENT_ROWS || a.size != size)
		return -EBADMSG;
	*g = (struct qs_geom){
		.base = base,
		.size = size,
		.h = live,
		.quotas = (char *)base + a.quota_off,
		.records = (char *)base + a.record_off,
		.clients = (char *)base + a.client_off,
		.index = { (struct qs_index *)((char *)base + a.index_off),
			   (struct qs_index *)((char *)base + a.index_off) + a.icap },
		.quota_capacity = h.quota_capacity,
		.record_capacity = a.rcap,
		.index_capacity = a.icap,
		.client_capacity = h.client_capacity,
		.incompat_flags = h.incompat_flags,
	};
	/* Only a segment being created is INITIALIZING; any other value than
	 * READY is damage (quotad restores it) on a segment that validates. */
	return atomic_load_explicit(&live->state, memory_order_acquire) == QS_STATE_INITIALIZING ?
		       -EAGAIN : 0;
}
