/* SPDX-License-Identifier: MIT */
/*
 * index.c - the name index: name hash -> quota id, open addressing, in two
 * tables of which the header's index word publishes one. quotad builds the
 * other one (stamp 0 while it writes, then the new generation) and
 * publishes it with one store, as records.c does for configs; a lookup
 * checks the table's stamp before and after its scan and verifies the name
 * against the quota's record, so a quotad killed mid-build, or a scribbled
 * table, yields at worst "no such quota", never a wrong id.
 */
#include <errno.h>
#include <sched.h>
#include <string.h>

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

static int insert(const struct qs_geom *g, struct qs_index *tab, const char *name, uint32_t id)
{
	uint32_t hash = qs_name_hash(name, strnlen(name, 64));
	uint32_t mask = g->index_capacity - 1;
	for (uint32_t n = 0, i = hash & mask; n < g->index_capacity; n++, i = (i + 1) & mask) {
		if (atomic_load_explicit(&tab[i].id1, memory_order_relaxed) == 0) {
			atomic_store_explicit(&tab[i].hash, hash, memory_order_relaxed);
			atomic_store_explicit(&tab[i].id1, id + 1, memory_order_relaxed);
			return 0;
		}
	}
	return -ENOSPC;
}

int qs_index_publish(const struct qs_geom *g, const char (*names)[64], const uint32_t *ids,
		     uint32_t n)
{
	struct qs_header *h = g->h;
	uint64_t cur = atomic_load_explicit(&h->index_word, memory_order_relaxed);
	uint32_t t = cur ? !(cur & 1) : 0;
	struct qs_index *tab = g->index[t];
	if (n > g->index_capacity / 2)
		return -ENOSPC;
	uint64_t gen = qs_next_generation(g);
	atomic_store_explicit(&h->index_stamp[t], 0, memory_order_relaxed);
	/* release fence: stamp 0 is visible before the table changes */
	atomic_thread_fence(memory_order_release);
	for (uint32_t i = 0; i < g->index_capacity; i++) {
		atomic_store_explicit(&tab[i].id1, 0, memory_order_relaxed);
		atomic_store_explicit(&tab[i].hash, 0, memory_order_relaxed);
	}
	for (uint32_t i = 0; i < n; i++)
		if (ids[i] < g->quota_capacity && insert(g, tab, names[i], ids[i]) < 0)
			return -ENOSPC;
	/* release: the table is complete before its stamp and the word */
	atomic_store_explicit(&h->index_stamp[t], gen, memory_order_release);
	atomic_store_explicit(&h->index_word, (gen << 1) | t, memory_order_release);
	return 0;
}

/* One scan of table @t for @name: a candidate id or -ENOENT. Candidates whose
 * record does not name @name are skipped (hash collisions, damage). */
static int scan(const struct qs_geom *g, uint32_t t, const char *name, uint32_t hash)
{
	const struct qs_index *tab = g->index[t];
	uint32_t mask = g->index_capacity - 1;
	for (uint32_t n = 0, i = hash & mask; n < g->index_capacity; n++, i = (i + 1) & mask) {
		uint32_t id1 = atomic_load_explicit(&tab[i].id1, memory_order_relaxed);
		if (id1 == 0)
			break;
		if (id1 > g->quota_capacity ||
		    atomic_load_explicit(&tab[i].hash, memory_order_relaxed) != hash)
			continue;
		struct qs_config cfg;
		if (qs_config_get(g, id1 - 1, &cfg, NULL) == 0 && !(cfg.flags & QS_REC_REMOVED) &&
		    strncmp(cfg.name, name, sizeof(cfg.name)) == 0)
			return (int)(id1 - 1);
	}
	return -ENOENT;
}

int qs_index_find(const struct qs_geom *g, const char *name)
{
	struct qs_header *h = g->h;
	size_t len = strnlen(name, QUOTA_NAME_MAX + 1);
	if (len == 0 || len > QUOTA_NAME_MAX)
		return -ENOENT;
	uint32_t hash = qs_name_hash(name, len);
	for (int attempt = 0; attempt < 1000; attempt++) {
		/* acquire: pairs with quotad's release of the word */
		uint64_t w = atomic_load_explicit(&h->index_word, memory_order_acquire);
		if (w == 0)
			return -ENOENT;
		uint32_t t = w & 1;
		uint64_t gen = w >> 1;
		/* acquire: pairs with the release of the stamp */
		if (atomic_load_explicit(&h->index_stamp[t], memory_order_acquire) != gen) {
			if (atomic_load_explicit(&h->index_word, memory_order_relaxed) == w)
				return -ENOENT; /* damaged: quotad republishes it */
			continue;
		}
		int found = scan(g, t, name, hash);
		/* acquire fence: the scan's loads complete before the re-check */
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&h->index_stamp[t], memory_order_relaxed) == gen)
			return found;
		sched_yield();
	}
	return -EAGAIN;
}
