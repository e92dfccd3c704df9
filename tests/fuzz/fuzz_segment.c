/* SPDX-License-Identifier: MIT */
/*
 * fuzz_segment.c - segment attach on corrupted images: a valid segment image
 * is built in memory the way quotad builds one (records published, then the
 * name index), the input patches it (pairs of a 16-bit offset into the
 * header, the quota entries or the config records, or into the name tables,
 * and bytes), then qs_geom_load() must refuse or accept; in what it accepts,
 * every lookup, record read, decode and in-flight audit must be safe (under
 * ASan: no out-of-bounds access) and may only refuse with an errno.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "internal.h"
#include "layout.h"

/* Seeds are C strings (no NUL): offsets are stored XOR 0x0101. Offsets are
 * those of the image below (4 quotas, 2 clients): header at 0, quota
 * entries at 4096, config records at 6144 (quota "a"'s is record 0). */
const char *const fuzz_seeds[] = {
	"\x01\x01\x08QOTASEG2",                        /* magic */
	"\x09\x01\x02\x03\x01",                          /* major */
	"\x19\x01\x08\xff\xff\xff\xff\xff\xff\xff\x7f",  /* incompat flags */
	"\x29\x01\x04\xff\xff\xff\x7f",                  /* quota_capacity */
	"\x85\x01\x04\x09\x01\x01\x01",                  /* quota_count */
	"\x91\x01\x02\x07\x02",                          /* index_word */
	"\x01\x11\x01\x09",                              /* quota 0's config word: record 8 */
	"\x09\x19\x10" "xxxxxxxxxxxxxxxx",               /* record 0's name */
	"\x49\x19\x01\x02",                              /* record 0's quota_id */
	"\x51\x19\x04\x09\x01\x01\x01",                  /* record 0's nlimits */
	"\x8d\x19\x04\x01\x01\x01\x7f",                  /* record 0's first burst_ppm */
	"\x91\x19\x08\xff\xff\xff\xff\xff\xff\xff\xff",  /* record 0's first limit */
	"\x05\x21\x08\x05\x05\x05\x05\x05\x05\x05\x05",  /* a name table entry */
	NULL,
};

static void *image(uint64_t *size)
{
	static void *base;
	static uint64_t sz;
	static char err[256];
	if (!base) {
		struct qd_config cfg;
		const char *json = "{\"max_quotas\": 4, \"max_clients\": 2, \"quotas\": {\"a\": {\"rpm\": 60, "
				   "\"tpm\": 900000, \"max_inflight\": 3}, \"b\": {\"rpd\": 5}}}";
		if (qd_config_parse(json, strlen(json), "seed", &cfg, err, sizeof(err)) < 0)
			abort();
		struct qs_geometry geo = { cfg.max_quotas, cfg.max_clients, 0 };
		sz = qs_segment_size(&geo);
		base = aligned_alloc(4096, sz);
		if (!base)
			abort();
		memset(base, 0, sz);
		qs_format(base, &geo);
		struct qs_geom g;
		if (qs_geom_load(&g, base, sz) != -EAGAIN) /* formatted, not READY yet */
			abort();
		char names[4][64];
		uint32_t ids[4];
		for (uint32_t i = 0; i < cfg.nquotas; i++) {
			struct qs_config qc;
			if (qd_quota_config(&cfg.quotas[i], i, &qc) < 0)
				abort();
			qs_record_publish(&g, i, qs_next_generation(&g), &qc);
			memcpy(names[i], qc.name, sizeof(names[i]));
			ids[i] = i;
		}
		if (qs_index_publish(&g, (const char (*)[64])names, ids, cfg.nquotas) < 0)
			abort();
		atomic_store(&g.h->quota_count, cfg.nquotas);
		atomic_store(&g.h->state, QS_STATE_READY);
		qd_config_free(&cfg);
	}
	*size = sz;
	return base;
}

/* What a client and quotad read of an accepted segment. */
static void use(const struct qs_geom *g)
{
	(void)qs_index_find(g, "a");
	(void)qs_index_find(g, "b");
	(void)qs_index_find(g, "zz");
	uint32_t n = qs_quota_count(g);
	for (uint32_t id = 0; id < n + 2; id++) {
		struct qs_config cfg;
		uint64_t word;
		int r = qs_config_get(g, id, &cfg, &word);
		if (r == 0) {
			/* A record read back is one quotad could have written. */
			if (cfg.quota_id != id || cfg.nlimits > QS_KINDS || qs_config_check(&cfg) < 0)
				abort();
			struct qs_quota *q = qs_quota_at(g, id);
			struct qc_cfg cf;
			if (qc_cfg_decode(&cfg, word, q, &cf) < 0)
				abort();
			for (uint32_t k = 0; k < cf.n; k++) {
				int64_t tat = qg_tat_clamp(atomic_load(qs_tat(q, cf.lim[k].kind)));
				(void)qg_available(&cf.lim[k], tat, 0);
			}
		} else if (r != -ENOENT && r != -EBADMSG && r != -EAGAIN) {
			abort();
		}
	}
	uint32_t cursor = 0;
	struct qc_reclaim_counts counts = { 0 };
	(void)qc_audit_some(g, &cursor, 8, &counts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t sz;
	const uint8_t *good = image(&sz);
	uint8_t *seg = aligned_alloc(4096, sz);
	if (!seg)
		return 0;
	memcpy(seg, good, sz);
	const struct qs_header *h = (const struct qs_header *)(const void *)good;
	/* Patches: offset (16 bits: the first 8 KiB, header, quota entries and
	 * records, else into the two name tables), length (8 bits, at most
	 * 16), bytes. */
	uint64_t index_len = 2ULL * h->index_capacity * sizeof(struct qs_index);
	size_t i = 0;
	while (i + 3 <= size) {
		uint32_t off = ((uint32_t)data[i] | (uint32_t)data[i + 1] << 8) ^ 0x0101;
		size_t len = data[i + 2] % 17;
		i += 3;
		if (off >= 8192)
			off = (uint32_t)(h->index_off + off % index_len);
		for (size_t k = 0; k < len && i < size && off + k < sz; k++, i++)
			seg[off + k] = data[i];
	}
	/* A truncated mapping too, now and then. */
	uint64_t mapped = (size & 1) ? sz : sz - 4096 * (size % 3);
	struct qs_geom g;
	int r = qs_geom_load(&g, seg, mapped);
	if (r == 0)
		use(&g);
	else if (r != -EBADMSG && r != -EPROTONOSUPPORT && r != -EAGAIN)
		abort();
	free(seg);
	return 0;
}
