/* SPDX-License-Identifier: MIT */
/*
 * segment.c - the segment's geometry, formatting and validation, and the
 * name index. quotad formats; every process that attaches validates here
 * first and refuses a foreign, truncated or corrupt segment: after
 * qs_validate() every offset, stride, count and index the hot path uses is
 * known to be in range.
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "gcra.h"
#include "layout.h"

uint32_t qs_name_hash(const char *name, size_t len)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)name[i];
		h *= 16777619u;
	}
	return h;
}

static uint32_t index_capacity_for(uint32_t quotas)
{
	uint32_t cap = 16;
	while (cap < 2 * quotas)
		cap <<= 1;
	return cap;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

uint64_t qs_segment_size(const struct qs_geometry *g, uint32_t *ret_index_capacity)
{
	if (g->quota_capacity == 0 || g->quota_capacity > QS_MAX_QUOTAS || g->client_capacity == 0 ||
	    g->client_capacity > QS_MAX_CLIENTS)
		return 0;
	uint32_t icap = index_capacity_for(g->quota_capacity);
	uint64_t size = QS_HEADER_SIZE;
	size += (uint64_t)g->quota_capacity * sizeof(struct qs_quota);
	size = align_up(size + (uint64_t)icap * sizeof(struct qs_index), QS_CACHELINE);
	size += (uint64_t)g->client_capacity * sizeof(struct qs_client);
	if (ret_index_capacity)
		*ret_index_capacity = icap;
	return align_up(size, 4096);
}

void qs_format(void *base, const struct qs_geometry *g)
{
	struct qs_header *h = base;
	uint32_t icap;
	uint64_t size = qs_segment_size(g, &icap);

	h->magic = QS_MAGIC;
	h->major = QS_MAJOR;
	h->minor = QS_MINOR;
	h->header_size = QS_HEADER_SIZE;
	h->compat_flags = 0;
	h->incompat_flags = g->incompat_flags;
	h->segment_size = size;
	h->quota_capacity = g->quota_capacity;
	h->quota_stride = sizeof(struct qs_quota);
	h->quota_off = QS_HEADER_SIZE;
	h->index_capacity = icap;
	h->index_stride = sizeof(struct qs_index);
	h->index_off = h->quota_off + (uint64_t)g->quota_capacity * sizeof(struct qs_quota);
	h->client_capacity = g->client_capacity;
	h->client_stride = sizeof(struct qs_client);
	h->client_off = align_up(h->index_off + (uint64_t)icap * sizeof(struct qs_index), QS_CACHELINE);
	h->client_rows = QS_CLIENT_ROWS;
	atomic_store_explicit(&h->state, QS_STATE_INITIALIZING, memory_order_relaxed);
}

static bool range_ok(uint64_t off, uint64_t n, uint64_t stride, uint64_t size)
{
	if (off > size || stride == 0)
		return false;
	if (n > (size - off) / stride)
		return false;
	return true;
}

int qs_quota_snapshot(const struct qs_quota *q, struct qs_quota *out)
{
	return qs_quota_snapshot_n(q, out, QS_RATE_KINDS);
}

int qs_quota_snapshot_n(const struct qs_quota *q, struct qs_quota *out, uint32_t nlimits)
{
	size_t bytes = offsetof(struct qs_quota, cfg) +
		       (nlimits < QS_RATE_KINDS ? nlimits : QS_RATE_KINDS) * sizeof(q->cfg[0]);
	for (int attempt = 0; attempt < 1000; attempt++) {
		/* acquire: the copy below is not hoisted above it */
		uint32_t seq = atomic_load_explicit(&q->cfg_seq, memory_order_acquire);
		if (seq & 1) {
			sched_yield();
			continue;
		}
		memcpy(out, (const void *)q, bytes);
		/* acquire fence: the copy completes before the re-check */
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&q->cfg_seq, memory_order_relaxed) == seq)
			return 0;
	}
	return -EAGAIN;
}

int qs_validate_quota(const struct qs_header *h, const struct qs_quota *live)
{
	(void)h;
	uint32_t st = atomic_load_explicit(&live->state, memory_order_acquire);
	if (st == QS_QUOTA_FREE)
		return 0;
	/* Validate a consistent copy: quotad may be reloading this quota. */
	struct qs_quota copy;
	if (qs_quota_snapshot(live, &copy) < 0)
		return -EAGAIN;
	const struct qs_quota *q = &copy;
	if (st != QS_QUOTA_ACTIVE && st != QS_QUOTA_REMOVED)
		return -EBADMSG;
	if (memchr(q->name, '\0', sizeof(q->name)) == NULL || q->name[0] == '\0')
		return -EBADMSG;
	if (q->nlimits > QS_RATE_KINDS || (q->flags & ~QS_QUOTA_REFUND_ACTUAL))
		return -EBADMSG;
	for (uint32_t k = 0; k < q->nlimits; k++) {
		const struct qs_limit_cfg *l = &q->cfg[k];
		/* Recompute what the hot path relies on; anything else is foreign. */
		struct qs_limit_cfg ref;
		if (l->kind >= QS_RATE_KINDS || l->limit == 0)
			return -EBADMSG;
		if (qg_limit_init(&ref, l->kind, l->limit, l->period_ns, 1000000) < 0)
			return -EBADMSG;
		if (l->t_int != ref.t_int || l->t_frac != ref.t_frac || l->fast_cmax != ref.fast_cmax)
			return -EBADMSG;
		if (l->tau_ns <= 0 || l->tau_ns > ref.tau_ns || l->capacity == 0 ||
		    l->capacity > ref.capacity || qg_charge(l, l->capacity) > (uint64_t)l->tau_ns)
			return -EBADMSG;
	}
	if (q->max_inflight > UINT32_MAX)
		return -EBADMSG;
	return 0;
}

int qs_validate(const void *base, uint64_t size)
{
	const struct qs_header *h = base;
	if (size < QS_HEADER_SIZE)
		return -EBADMSG;
	/* quotad sizes the object before it writes the header: all zeroes is
	 * a segment being created, not a foreign one. */
	if (h->magic == 0 && atomic_load_explicit(&h->state, memory_order_acquire) == 0)
		return -EAGAIN;
	if (h->magic != QS_MAGIC)
		return -EBADMSG;
	if (h->major != QS_MAJOR)
		return h->major > QS_MAJOR ? -EPROTONOSUPPORT : -EBADMSG;
	if (h->incompat_flags & ~QS_INCOMPAT_KNOWN)
		return -EPROTONOSUPPORT;
	if (atomic_load_explicit(&h->state, memory_order_acquire) != QS_STATE_READY)
		return -EAGAIN;
	if (h->header_size != QS_HEADER_SIZE || h->segment_size != size)
		return -EBADMSG;
	if (h->quota_capacity == 0 || h->quota_capacity > QS_MAX_QUOTAS ||
	    h->quota_stride != sizeof(struct qs_quota) || h->quota_off < QS_HEADER_SIZE ||
	    h->quota_off % QS_CACHELINE || !range_ok(h->quota_off, h->quota_capacity, h->quota_stride, size))
		return -EBADMSG;
	if (h->index_capacity != index_capacity_for(h->quota_capacity) ||
	    h->index_stride != sizeof(struct qs_index) || h->index_off % 8 ||
	    h->index_off < h->quota_off + (uint64_t)h->quota_capacity * h->quota_stride ||
	    !range_ok(h->index_off, h->index_capacity, h->index_stride, size))
		return -EBADMSG;
	if (h->client_capacity == 0 || h->client_capacity > QS_MAX_CLIENTS ||
	    h->client_stride != sizeof(struct qs_client) || h->client_rows != QS_CLIENT_ROWS ||
	    h->client_off % QS_CACHELINE ||
	    h->client_off < h->index_off + (uint64_t)h->index_capacity * h->index_stride ||
	    !range_ok(h->client_off, h->client_capacity, h->client_stride, size))
		return -EBADMSG;
	uint32_t count = atomic_load_explicit(&h->quota_count, memory_order_acquire);
	if (count > h->quota_capacity)
		return -EBADMSG;
	for (uint32_t i = 0; i < h->quota_capacity; i++) {
		const struct qs_quota *q = (const struct qs_quota *)((const char *)base + h->quota_off +
								     (uint64_t)i * h->quota_stride);
		int r = qs_validate_quota(h, q);
		if (r < 0)
			return r;
		if (i >= count && atomic_load_explicit(&q->state, memory_order_relaxed) != QS_QUOTA_FREE)
			return -EBADMSG;
	}
	const struct qs_index *ix = (const struct qs_index *)((const char *)base + h->index_off);
	for (uint32_t i = 0; i < h->index_capacity; i++)
		if (ix[i].id1 > count)
			return -EBADMSG;
	return 0;
}

int qs_index_insert(void *base, const char *name, uint32_t id)
{
	struct qs_header *h = base;
	struct qs_index *ix = qs_index_at(base);
	size_t len = strnlen(name, QUOTA_NAME_MAX + 1);
	uint32_t hash = qs_name_hash(name, len);
	uint32_t mask = h->index_capacity - 1;
	for (uint32_t n = 0, i = hash & mask; n < h->index_capacity; n++, i = (i + 1) & mask) {
		if (ix[i].id1 == 0) {
			ix[i].hash = hash;
			ix[i].id1 = id + 1;
			return 0;
		}
		if (ix[i].hash == hash && strcmp(qs_quota_at(base, ix[i].id1 - 1)->name, name) == 0)
			return -EEXIST;
	}
	return -ENOSPC;
}

void qs_index_rebuild(void *base)
{
	struct qs_header *h = base;
	memset(qs_index_at(base), 0, (size_t)h->index_capacity * sizeof(struct qs_index));
	uint32_t count = atomic_load_explicit(&h->quota_count, memory_order_relaxed);
	for (uint32_t i = 0; i < count; i++) {
		struct qs_quota *q = qs_quota_at(base, i);
		if (atomic_load_explicit(&q->state, memory_order_relaxed) == QS_QUOTA_ACTIVE)
			(void)qs_index_insert(base, q->name, i);
	}
}

int qs_index_find(void *base, const char *name)
{
	struct qs_header *h = base;
	const volatile struct qs_index *ix = qs_index_at(base);
	size_t len = strnlen(name, QUOTA_NAME_MAX + 1);
	if (len == 0 || len > QUOTA_NAME_MAX)
		return -ENOENT;
	uint32_t hash = qs_name_hash(name, len);
	uint32_t mask = h->index_capacity - 1;
	uint32_t count = atomic_load_explicit(&h->quota_count, memory_order_acquire);
	for (int attempt = 0; attempt < 1000; attempt++) {
		/* acquire: pairs with quotad's release when it finishes a rewrite */
		uint32_t seq = atomic_load_explicit(&h->index_seq, memory_order_acquire);
		if (seq & 1) {
			sched_yield(); /* quotad is rewriting the index (reload) */
			continue;
		}
		int found = -ENOENT;
		for (uint32_t n = 0, i = hash & mask; n < h->index_capacity; n++, i = (i + 1) & mask) {
			uint32_t id1 = ix[i].id1;
			if (id1 == 0)
				break;
			if (id1 > count || ix[i].hash != hash)
				continue;
			struct qs_quota *q = qs_quota_at(base, id1 - 1);
			if (atomic_load_explicit(&q->state, memory_order_acquire) == QS_QUOTA_ACTIVE &&
			    strncmp(q->name, name, sizeof(q->name)) == 0) {
				found = (int)(id1 - 1);
				break;
			}
		}
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&h->index_seq, memory_order_relaxed) == seq)
			return found;
	}
	return -EAGAIN;
}
