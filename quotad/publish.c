/* SPDX-License-Identifier: MIT */
/*
 * publish.c - what quotad published in the segment, kept in its own memory:
 * each quota's config word and record content, which records are in use,
 * the name index word and the header's geometry. Publishing goes through
 * records.c and index.c (a new record or table, then one store), so a
 * quotad killed at any instruction leaves a consistent segment.
 *
 * DAMAGE. Every process that attaches may write the segment; a buggy one
 * may scribble over it. quotad compares the segment with its own copy every
 * QD_CHECK_NS (the header every time, QD_CHECK_QUOTAS quotas in turn): a config word or record that differs is published again from
 * the copy, a damaged header geometry is restored, a name table whose stamp
 * does not match is rebuilt, a client slot in no known state is freed. Each
 * is logged and counted (quotad_segment_damage_total). Clients never trust
 * what they read anyway (layout.h); this puts the segment back for the
 * ones that attach later.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotad.h"

int qd_pub_init(struct daemon *d)
{
	d->pub = calloc(d->g.quota_capacity, sizeof(*d->pub));
	d->rec_used = calloc(d->g.record_capacity, 1);
	if (!d->pub || !d->rec_used) {
		qd_log("error", "out of memory");
		return -ENOMEM;
	}
	qs_load_words(&d->hcopy, d->h, offsetof(struct qs_header, state));
	uint32_t count = qs_quota_count(&d->g);
	for (uint32_t id = 0; id < count; id++) {
		uint64_t w;
		struct qs_config cfg;
		int r = qs_config_get(&d->g, id, &cfg, &w);
		if (r < 0) {
			/* Left as it is: the config applied at start republishes it. */
			qd_log("warning", "quota id %u: its config record is unreadable (%s)", id, quota_strerror(r));
			continue;
		}
		d->pub[id].word = w;
		d->pub[id].cfg = cfg;
		d->rec_used[QS_CFG_IDX1(w) - 1] = 1;
	}
	d->index_word = atomic_load_explicit(&d->h->index_word, memory_order_relaxed);
	return 0;
}

void qd_pub_free(struct daemon *d)
{
	free(d->pub);
	free(d->rec_used);
	d->pub = NULL;
	d->rec_used = NULL;
}

int qd_publish(struct daemon *d, const struct qs_config *cfg)
{
	uint32_t id = cfg->quota_id;
	if (id >= d->g.quota_capacity)
		return -EINVAL;
	uint32_t idx = 0;
	while (idx < d->g.record_capacity && d->rec_used[idx])
		idx++;
	if (idx == d->g.record_capacity)
		return -ENOSPC; /* cannot happen: 2 records per quota */
	uint64_t gen = qs_next_generation(&d->g);
	qs_record_publish(&d->g, idx, gen, cfg);
	uint64_t old = d->pub[id].word;
	if (old && QS_CFG_IDX1(old) - 1 < d->g.record_capacity)
		d->rec_used[QS_CFG_IDX1(old) - 1] = 0;
	d->rec_used[idx] = 1;
	d->pub[id].word = QS_CFG_WORD(gen, idx);
	d->pub[id].cfg = *cfg;
	return 0;
}

int qd_publish_index(struct daemon *d)
{
	uint32_t count = qs_quota_count(&d->g);
	char (*names)[64] = calloc(count ? count : 1, sizeof(*names));
	uint32_t *ids = calloc(count ? count : 1, sizeof(*ids));
	uint32_t n = 0;
	int r = -ENOMEM;
	if (names && ids) {
		for (uint32_t id = 0; id < count; id++) {
			if (!d->pub[id].word || (d->pub[id].cfg.flags & QS_REC_REMOVED))
				continue;
			memcpy(names[n], d->pub[id].cfg.name, sizeof(names[n]));
			ids[n++] = id;
		}
		r = qs_index_publish(&d->g, (const char (*)[64])names, ids, n);
	}
	free(names);
	free(ids);
	if (r == 0)
		d->index_word = atomic_load_explicit(&d->h->index_word, memory_order_relaxed);
	return r;
}

static void damaged(struct daemon *d, const char *what)
{
	d->st.damage++;
	qd_log("warning", "segment %s damaged: %s (something with write access scribbled over it); "
	       "repaired from quotad's copy", d->segment, what);
}

/* The header's identity and geometry, and the published index word. */
static void check_header(struct daemon *d)
{
	struct qs_header now;
	qs_load_words(&now, d->h, offsetof(struct qs_header, state));
	if (memcmp(&now, &d->hcopy, offsetof(struct qs_header, state)) != 0) {
		qs_store_words(d->h, &d->hcopy, offsetof(struct qs_header, state));
		damaged(d, "header identity or geometry");
	}
	if (atomic_load_explicit(&d->h->state, memory_order_relaxed) != QS_STATE_READY) {
		/* release: as when the segment was first published */
		atomic_store_explicit(&d->h->state, QS_STATE_READY, memory_order_release);
		damaged(d, "header state word");
	}
	uint32_t count = 0;
	for (uint32_t id = 0; id < d->g.quota_capacity; id++)
		if (d->pub[id].word)
			count = id + 1;
	if (atomic_load_explicit(&d->h->quota_count, memory_order_relaxed) != count) {
		atomic_store_explicit(&d->h->quota_count, count, memory_order_release);
		damaged(d, "quota count");
	}
	uint64_t w = atomic_load_explicit(&d->h->index_word, memory_order_relaxed);
	uint64_t stamp = atomic_load_explicit(&d->h->index_stamp[w & 1], memory_order_relaxed);
	if (w != d->index_word || stamp != w >> 1) {
		damaged(d, "name index");
		if (qd_publish_index(d) < 0)
			qd_log("error", "cannot rebuild the name index");
	}
}

/* The config words and records of up to QD_CHECK_QUOTAS quotas, round
 * robin (a segment of 65,536 quotas is checked in 16 s). */
static void check_quotas(struct daemon *d)
{
	uint32_t count = qs_quota_count(&d->g);
	for (uint32_t i = 0; i < count && i < QD_CHECK_QUOTAS; i++) {
		uint32_t id = d->check_cursor++ % count;
		if (!d->pub[id].word)
			continue;
		struct qs_quota *q = qs_quota_at(&d->g, id);
		uint64_t w = atomic_load_explicit(&q->cfg, memory_order_relaxed);
		struct qs_config cfg;
		if (w == d->pub[id].word && qs_record_read(&d->g, id, w, &cfg) == 0 &&
		    memcmp(&cfg, &d->pub[id].cfg, sizeof(cfg)) == 0)
			continue;
		char what[128];
		snprintf(what, sizeof(what), "config of quota %.64s (id %u)", d->pub[id].cfg.name, id);
		damaged(d, what);
		struct qs_config keep = d->pub[id].cfg;
		if (qd_publish(d, &keep) < 0)
			qd_log("error", "cannot republish quota id %u", id);
	}
}

/* Client slots in no known state: freed (a live owner keeps working; its
 * slot is simply no longer watched). */
static void check_clients(struct daemon *d)
{
	for (uint32_t s = 0; s < d->g.client_capacity; s++) {
		struct qs_client *cs = qs_client_at(&d->g, s);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_relaxed);
		if (QS_CLIENT_STATUS(w) <= QS_CLIENT_RECLAIMING)
			continue;
		if (atomic_compare_exchange_strong_explicit(&cs->state, &w,
							    QS_CLIENT_WORD(QS_CLIENT_GEN(w), 0, QS_CLIENT_FREE),
							    memory_order_release, memory_order_relaxed)) {
			char what[64];
			snprintf(what, sizeof(what), "client slot %u state word", s);
			damaged(d, what);
		}
	}
}

void qd_check(struct daemon *d)
{
	check_header(d);
	check_quotas(d);
	check_clients(d);
}
