/* SPDX-License-Identifier: MIT */
/*
 * records.c - immutable configuration records: how quotad publishes a
 * quota's configuration and how everyone else reads it, such that a writer
 * killed at any instruction leaves nothing torn.
 *
 * PROTOCOL. A record is written only while no quota's config word points to
 * it. The writer stores stamp = 0, a release fence, the content (relaxed
 * atomic stores), then stamp = G with release, and finally the quota's
 * config word = (G, record) with a sequentially consistent store. G is a
 * fresh generation (header.generation + 1, never reused: a quotad that dies
 * after taking one leaves it unused). A reader loads the config word W
 * (acquire), checks stamp == gen(W) (acquire), copies the content (relaxed
 * atomic loads), an acquire fence, and checks stamp == gen(W) again.
 *
 * WHY A READER NEVER ACCEPTS A TORN OR FOREIGN RECORD. (1) The record W
 * names was complete when W was stored: its content stores happen before
 * the release store of stamp G, which happens before the store of W, which
 * the reader's acquire load of W synchronises with. (2) If quotad later
 * recycles that record (after W was replaced), its first store is stamp = 0
 * followed by a release fence; if any content load of the reader reads a
 * value stored after that fence, the reader's acquire fence makes the
 * stamp = 0 store (or a later one, G' != G since generations are unique)
 * visible to its second stamp load, which then differs from G: the copy is
 * discarded and the reader loads the config word again. (3) The decoded
 * values are checked (qs_config_check) and the limits' derived constants
 * are recomputed from their source values, so even a record that a
 * scribbler overwrote with a matching stamp yields only a configuration
 * that quotad itself could have written, never a crash.
 *
 * A WRITER THAT DIES. Before its config word store: the word still names
 * the previous, complete record, and the half-written one is referenced by
 * nothing (the next quotad finds the free records by scanning the words).
 * After it: the new record is complete. Either way every reader proceeds;
 * nothing waits for the writer.
 */
#include <errno.h>
#include <string.h>

#include "gcra.h"
#include "layout.h"

int qs_config_check(const struct qs_config *c)
{
	if (memchr(c->name, '\0', sizeof(c->name)) == NULL || c->name[0] == '\0')
		return -EBADMSG;
	if (c->flags & ~QS_REC_FLAGS_KNOWN || c->nlimits > QS_KINDS || c->max_inflight > UINT32_MAX)
		return -EBADMSG;
	uint32_t seen = 0;
	for (uint32_t k = 0; k < c->nlimits; k++) {
		const struct qs_limit_src *l = &c->lim[k];
		struct qs_limit_cfg ref;
		if (l->kind >= QS_KINDS || (seen & (1u << l->kind)))
			return -EBADMSG;
		seen |= 1u << l->kind;
		if (qg_limit_init(&ref, l->kind, l->limit, qg_period_of(l->kind), l->burst_ppm) < 0)
			return -EBADMSG;
	}
	/* Lanes: named, headrooms summing below the whole, none on the last. */
	if (c->nlanes > QS_LANES || (c->flags2 & ~QS_REC2_KNOWN))
		return -EBADMSG;
	uint64_t sum = 0;
	for (uint32_t i = 0; i < c->nlanes; i++) {
		const struct qs_lane_src *ln = &c->lanes[i];
		if (memchr(ln->name, '\0', sizeof(ln->name)) == NULL || ln->name[0] == '\0' ||
		    ln->headroom_ppm >= 1000000 || (i + 1 == c->nlanes && ln->headroom_ppm))
			return -EBADMSG;
		sum += ln->headroom_ppm;
	}
	if (sum >= 1000000)
		return -EBADMSG;
	return 0;
}

/* The content of a record: everything after the stamp up to the reserved
 * words. */
#define REC_BODY_OFF offsetof(struct qs_record, name)
#define REC_BODY_LEN (offsetof(struct qs_record, reserved) - REC_BODY_OFF)
static_assert(REC_BODY_OFF % 8 == 0 && REC_BODY_LEN % 8 == 0, "record body words");

int qs_record_read(const struct qs_geom *g, uint32_t id, uint64_t word, struct qs_config *out)
{
	if (word == 0)
		return -ENOENT;
	uint64_t gen = QS_CFG_GEN(word);
	uint32_t idx1 = QS_CFG_IDX1(word);
	struct qs_record *r = idx1 ? qs_record_at(g, idx1 - 1) : NULL;
	if (!r || gen == 0)
		return -EBADMSG;
	/* acquire: pairs with the writer's release of the stamp */
	if (atomic_load_explicit(&r->stamp, memory_order_acquire) != gen)
		return -EAGAIN;
	struct qs_record copy;
	qs_load_words((char *)&copy + REC_BODY_OFF, (const char *)r + REC_BODY_OFF, REC_BODY_LEN);
	/* acquire fence: the copy's loads complete before the re-check */
	atomic_thread_fence(memory_order_acquire);
	if (atomic_load_explicit(&r->stamp, memory_order_relaxed) != gen)
		return -EAGAIN;
	memset(out, 0, sizeof(*out)); /* padding too: configs are compared whole */
	memcpy(out->name, copy.name, sizeof(out->name));
	out->quota_id = copy.quota_id;
	out->flags = copy.flags;
	out->nlimits = copy.nlimits;
	out->context_window = copy.context_window;
	out->max_inflight = copy.max_inflight;
	out->price_in_pusd = copy.price_in_pusd;
	out->price_out_pusd = copy.price_out_pusd;
	out->budget_day_nusd = copy.budget_day_nusd;
	out->budget_month_nusd = copy.budget_month_nusd;
	memcpy(out->lim, copy.lim, sizeof(out->lim));
	out->nlanes = copy.nlanes;
	memcpy(out->lanes, copy.lanes, sizeof(out->lanes));
	out->flags2 = copy.flags2;
	out->alarm_held_ns = copy.alarm_held_ns;
	out->alarm_over_pct = copy.alarm_over_pct;
	if (out->quota_id != id || qs_config_check(out) < 0)
		return -EBADMSG;
	return 0;
}

int qs_config_get(const struct qs_geom *g, uint32_t id, struct qs_config *out, uint64_t *ret_word)
{
	struct qs_quota *q = qs_quota_at(g, id);
	if (!q)
		return -ENOENT;
	/* acquire: pairs with quotad's publication of the word */
	uint64_t w = atomic_load_explicit(&q->cfg, memory_order_acquire);
	for (int attempt = 0; attempt < 64; attempt++) {
		int r = qs_record_read(g, id, w, out);
		if (r != -EAGAIN) {
			if (r == 0 && ret_word)
				*ret_word = w;
			return r;
		}
		uint64_t w2 = atomic_load_explicit(&q->cfg, memory_order_acquire);
		/* The word still names a record whose stamp is not its
		 * generation: quotad never does that; the segment is damaged. */
		if (w2 == w)
			return -EBADMSG;
		w = w2;
	}
	return -EAGAIN;
}

uint64_t qs_next_generation(const struct qs_geom *g)
{
	/* Only quotad writes it; relaxed: the publication stores order it. */
	uint64_t gen = atomic_load_explicit(&g->h->generation, memory_order_relaxed) + 1;
	if (gen > QS_GEN_MAX || gen == 0)
		gen = 1; /* after 2^40 generations: cannot happen in practice */
	atomic_store_explicit(&g->h->generation, gen, memory_order_relaxed);
	return gen;
}

void qs_record_publish(const struct qs_geom *g, uint32_t idx, uint64_t gen,
		       const struct qs_config *cfg)
{
	struct qs_record *r = qs_record_at(g, idx);
	struct qs_quota *q = qs_quota_at(g, cfg->quota_id);
	if (!r || !q)
		return;
	struct qs_record img;
	memset(&img, 0, sizeof(img));
	memcpy(img.name, cfg->name, sizeof(img.name));
	img.name[sizeof(img.name) - 1] = '\0';
	img.quota_id = cfg->quota_id;
	img.flags = cfg->flags;
	img.nlimits = cfg->nlimits;
	img.context_window = cfg->context_window;
	img.max_inflight = cfg->max_inflight;
	img.price_in_pusd = cfg->price_in_pusd;
	img.price_out_pusd = cfg->price_out_pusd;
	img.budget_day_nusd = cfg->budget_day_nusd;
	img.budget_month_nusd = cfg->budget_month_nusd;
	memcpy(img.lim, cfg->lim, sizeof(img.lim));
	img.nlanes = cfg->nlanes;
	memcpy(img.lanes, cfg->lanes, sizeof(img.lanes));
	img.flags2 = cfg->flags2;
	img.alarm_held_ns = cfg->alarm_held_ns;
	img.alarm_over_pct = cfg->alarm_over_pct;

	atomic_store_explicit(&r->stamp, 0, memory_order_relaxed);
	/* release fence: stamp 0 is visible before any content store (pairs
	 * with the reader's acquire fence) */
	atomic_thread_fence(memory_order_release);
	qs_store_words((char *)r + REC_BODY_OFF, (const char *)&img + REC_BODY_OFF,
		       sizeof(img) - REC_BODY_OFF);
	/* release: the content happens before the stamp a reader checks */
	atomic_store_explicit(&r->stamp, gen, memory_order_release);
	/* seq_cst: a reservation whose slots were taken after this store sees
	 * the new word in its re-check and starts over (reserve.c) */
	atomic_store_explicit(&q->cfg, QS_CFG_WORD(gen, idx), memory_order_seq_cst);
}
