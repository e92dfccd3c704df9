/* SPDX-License-Identifier: MIT */
/*
 * fuzz_segment.c - segment attach on corrupted images: a valid segment image
 * is built in memory, the input patches it (pairs of a 16-bit offset into
 * the header or the first quota entry or the index, and bytes), then
 * qs_validate() must refuse or accept; what it accepts must be safe to look
 * up and to read statistics from (under ASan: no out-of-bounds access).
 */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "layout.h"

/* Seeds are C strings (no NUL): offsets are stored XOR 0x0101. */
const char *const fuzz_seeds[] = {
	"\x01\x01\x08QOTASEG2",                     /* magic */
	"\x05\x01\x02\x07\x01",                       /* major */
	"\x19\x01\x08\xff\xff\xff\xff\xff\xff\xff\x7f", /* incompat flags */
	"\x29\x01\x04\xff\xff\xff\x7f",               /* quota_capacity */
	"\x81\x01\x04\x09\x01\x01\x01",               /* quota_count */
	"\x49\x11\x04\x09\x01\x01\x01",               /* first quota's nlimits */
	"\xb9\x11\x08\x01\x01\x01\x01\x01\x01\x01\x01", /* a limit's tau */
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
		struct qs_geometry g = { cfg.max_quotas, cfg.max_clients, 0 };
		sz = qs_segment_size(&g, NULL);
		base = aligned_alloc(4096, sz);
		memset(base, 0, sz);
		qs_format(base, &g);
		for (uint32_t i = 0; i < cfg.nquotas; i++) {
			qd_quota_write(base, i, &cfg.quotas[i]);
			qs_index_insert(base, cfg.quotas[i].name, i);
			atomic_store(&qs_quota_at(base, i)->state, QS_QUOTA_ACTIVE);
		}
		atomic_store(&((struct qs_header *)base)->quota_count, cfg.nquotas);
		atomic_store(&((struct qs_header *)base)->state, QS_STATE_READY);
		qd_config_free(&cfg);
	}
	*size = sz;
	return base;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t sz;
	const uint8_t *good = image(&sz);
	uint8_t *seg = aligned_alloc(4096, sz);
	if (!seg)
		return 0;
	memcpy(seg, good, sz);
	struct qs_header *h = (struct qs_header *)seg;
	/* Patches: offset (16 bits, into the interesting first 8 KiB + index),
	 * length (8 bits, at most 16), bytes. */
	size_t i = 0;
	while (i + 3 <= size) {
		uint32_t off = ((uint32_t)data[i] | (uint32_t)data[i + 1] << 8) ^ 0x0101;
		size_t len = data[i + 2] % 17;
		i += 3;
		if (off >= 8192)
			off = (uint32_t)(h->index_off + off % 256);
		for (size_t k = 0; k < len && i < size && off + k < sz; k++, i++)
			seg[off + k] = data[i];
	}
	/* A truncated mapping too, now and then. */
	uint64_t mapped = (size & 1) ? sz : sz - 4096 * (size % 3);
	if (qs_validate(seg, mapped) == 0) {
		(void)qs_index_find(seg, "a");
		(void)qs_index_find(seg, "zz");
		uint32_t n = atomic_load(&h->quota_count);
		for (uint32_t q = 0; q < n; q++) {
			struct qs_quota *e = qs_quota_at(seg, q);
			for (uint32_t k = 0; k < e->nlimits; k++)
				(void)qs_tat(e, k);
		}
	}
	free(seg);
	return 0;
}
