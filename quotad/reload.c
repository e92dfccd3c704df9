/* SPDX-License-Identifier: MIT */
/*
 * reload.c - apply a validated config to the live segment (SIGHUP,
 * `quotactl reload`, `quotactl set`, and a restarted quotad adopting a
 * segment), without stopping the workers and without refilling what they
 * spent.
 *
 * WHAT IS FIXED. The segment's capacity (max_quotas, max_clients) and its
 * clock are chosen when it is created; a reload that needs more quota
 * entries than are free is refused as a whole, nothing changed. Ids are
 * never reused for another name: a removed quota keeps its entry (its record
 * says REMOVED), since tickets and client rows still name it by id;
 * re-adding the same name revives that entry with its budget state.
 *
 * HOW. A quota whose configuration changes gets a new record, published
 * with one store (records.c); nothing a client may be reading is rewritten,
 * so a quotad killed at any point of a reload leaves every quota with its
 * old or its new configuration, and the next quotad adopts the segment. A
 * reload is not atomic across quotas: each switches on its own.
 *
 * LIMITS KEEP THEIR STATE. A limit's state is the TAT word of its kind,
 * the time at which everything admitted so far has been paid for at the
 * limit's rate. A reload writes no TAT: each kind keeps its word, so what
 * was spent stays spent; the backlog (TAT - now) is carried in time, which
 * with a lower limit still drains at least as slowly as the provider's
 * window and with a higher one is paid back no faster than before - never a
 * refill. A kind that is new starts from whatever its word holds: full if it
 * was never used or its backlog has passed, else the backlog it had when it
 * was removed (conservative). A reservation that read the old config and
 * takes its slots after the new one is published sees the new word in its
 * re-check and starts over (reserve.c); every admission obeys the old or the
 * new configuration. Refunds of tickets from before settle against the
 * kinds that still exist (settle.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotad.h"

/* The id of the quota named @name (active or removed), or -1. */
static int find_name(struct daemon *d, const char *name, uint32_t count)
{
	for (uint32_t id = 0; id < count; id++)
		if (d->pub[id].word && strncmp(d->pub[id].cfg.name, name, sizeof(d->pub[id].cfg.name)) == 0)
			return (int)id;
	return -1;
}

/* Mark every active quota that @cfg does not name as removed. */
static int remove_missing(struct daemon *d, const struct qd_config *cfg, const int *id_of,
			  uint32_t count, uint32_t *removed)
{
	for (uint32_t id = 0; id < count; id++) {
		if (!d->pub[id].word || (d->pub[id].cfg.flags & QS_REC_REMOVED))
			continue;
		bool keep = false;
		for (uint32_t i = 0; i < cfg->nquotas && !keep; i++)
			keep = id_of[i] == (int)id;
		if (keep)
			continue;
		struct qs_config gone = d->pub[id].cfg;
		gone.flags |= QS_REC_REMOVED;
		int r = qd_publish(d, &gone);
		if (r < 0)
			return r;
		(*removed)++;
		qd_log("info", "reload: quota %s removed (id %u kept for its tickets)", gone.name, id);
	}
	return 0;
}

/* Publish quota @i of @cfg under id @id (existing, or new when @id == count). */
static int apply_one(struct daemon *d, const struct qd_quota *qc, uint32_t id, bool is_new,
		     uint32_t *changed)
{
	struct qs_config next;
	int r = qd_quota_config(qc, id, &next);
	if (r < 0)
		return r;
	if (!is_new && memcmp(&next, &d->pub[id].cfg, sizeof(next)) == 0)
		return 0; /* unchanged: clients keep their cached copy */
	bool revived = !is_new && (d->pub[id].cfg.flags & QS_REC_REMOVED);
	if (qc->global)
		qd_global_guard(d, id, is_new ? NULL : &d->pub[id].cfg, &next);
	r = qd_publish(d, &next);
	if (r < 0)
		return r;
	if (is_new) {
		/* release: the new id's word is published before the count that
		 * makes it visible */
		atomic_store_explicit(&d->h->quota_count, id + 1, memory_order_release);
		qd_log("info", "reload: quota %s added (id %u)", qc->name, id);
	} else if (revived) {
		qd_log("info", "reload: quota %s back (id %u, budget state kept)", qc->name, id);
	}
	(*changed)++;
	return 0;
}

int qd_reload_apply(struct daemon *d, const struct qd_config *cfg, char *err, size_t errlen)
{
	bool manual = (d->g.incompat_flags & QS_INCOMPAT_MANUAL_CLOCK) != 0;
	if (cfg->manual_clock != manual) {
		snprintf(err, errlen, "clock: the segment uses the %s clock, fixed when it was created",
			 manual ? "manual" : "monotonic");
		return -EINVAL;
	}
	uint32_t count = qs_quota_count(&d->g);
	int *id_of = calloc(cfg->nquotas ? cfg->nquotas : 1, sizeof(*id_of));
	if (!id_of) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	uint32_t need = 0;
	for (uint32_t i = 0; i < cfg->nquotas; i++) {
		/* Every record is checked before anything is published. */
		struct qs_config check;
		int r = qd_quota_config(&cfg->quotas[i], 0, &check);
		if (r < 0) {
			snprintf(err, errlen, "quota %s: limits out of range: %s", cfg->quotas[i].name,
				 strerror(-r));
			free(id_of);
			return r;
		}
		id_of[i] = find_name(d, cfg->quotas[i].name, count);
		if (id_of[i] < 0)
			need++;
	}
	if (count + need > d->g.quota_capacity) {
		uint32_t left = d->g.quota_capacity - count;
		snprintf(err, errlen, "quotas: %u new quota%s but the segment has %u free entr%s of %u "
			 "(max_quotas is fixed when the segment is created and removed quotas keep "
			 "their entries): restart on a new segment to grow it", need, need == 1 ? "" : "s",
			 left, left == 1 ? "y" : "ies", d->g.quota_capacity);
		free(id_of);
		return -ENOSPC;
	}
	if (cfg->max_quotas != d->g.quota_capacity || cfg->max_clients != d->g.client_capacity)
		qd_log("warning", "max_quotas %u / max_clients %u of the config differ from the segment's "
		       "%u / %u, which are fixed at creation: the segment's stay", cfg->max_quotas,
		       cfg->max_clients, d->g.quota_capacity, d->g.client_capacity);

	uint32_t removed = 0, changed = 0, before = count;
	int r = remove_missing(d, cfg, id_of, count, &removed);
	for (uint32_t i = 0; i < cfg->nquotas && r == 0; i++) {
		bool is_new = id_of[i] < 0;
		uint32_t id = is_new ? count++ : (uint32_t)id_of[i];
		r = apply_one(d, &cfg->quotas[i], id, is_new, &changed);
	}
	free(id_of);
	if (r == 0 && (removed || count != before || changed))
		r = qd_publish_index(d);
	if (r < 0) {
		snprintf(err, errlen, "applying the config: %s", strerror(-r));
		return r;
	}
	if (qd_global_apply(d, cfg) < 0)
		qd_log("error", "global quotas not served");
	qd_log("info", "config applied: %u quota%s (%u published anew, %u added, %u removed)",
	       cfg->nquotas, cfg->nquotas == 1 ? "" : "s", changed, count - before, removed);
	return 0;
}

int qd_reload(struct daemon *d, char *err, size_t errlen)
{
	struct qd_config cfg;
	int r = d->config_path ? qd_config_load(d->config_path, &cfg, err, errlen) :
				 qd_config_parse(qd_default_config, strlen(qd_default_config),
						 "<embedded default>", &cfg, err, errlen);
	if (r == 0) {
		r = qd_reload_apply(d, &cfg, err, errlen);
		qd_config_free(&cfg);
	}
	if (r < 0) {
		d->st.reloads_failed++;
	} else {
		d->st.reloads_ok++;
		d->noverrides = 0; /* `set` changes end: back to what the source says */
	}
	return r;
}
