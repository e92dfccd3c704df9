/* SPDX-License-Identifier: MIT */
/*
 * bpe.c - see bpe.h. The pre-tokenizer is o200k's split pattern on PCRE2
 * (Unicode properties, JIT when available); each piece is then merged the
 * byte-pair way: start from single bytes, repeatedly join the adjacent pair
 * whose concatenation has the lowest rank, until no pair is in the
 * vocabulary; the count is the number of parts left. The vocabulary is an
 * open-addressing hash table of byte strings (FNV-1a) over one arena.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"

#define TOKEN_MAX 1024 /* longest token accepted in a rank file */

static const char o200k_split[] =
	"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
	"(?:'(?:[sS]|[dD]|[mM]|[tT]|[lL][lL]|[vV][eE]|[rR][eE]))?"
	"|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
	"(?:'(?:[sS]|[dD]|[mM]|[tT]|[lL][lL]|[vV][eE]|[rR][eE]))?"
	"|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct slot {
	uint32_t off, rank; /* rank UINT32_MAX: empty */
	uint16_t len;
};

struct bpe {
	unsigned char *arena;
	size_t arena_len, ntokens;
	struct slot *table;
	size_t mask;
	pcre2_code *re;
};

static uint64_t fnv1a(const unsigned char *s, size_t n)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325);

	for (size_t i = 0; i < n; i++)
		h = (h ^ s[i]) * UINT64_C(0x100000001b3);
	return h;
}

/* Rank of the byte string @s, or UINT32_MAX. */
static uint32_t rank_of(const struct bpe *b, const unsigned char *s, size_t n)
{
	for (size_t i = fnv1a(s, n) & b->mask;; i = (i + 1) & b->mask) {
		const struct slot *e = &b->table[i];

		if (e->rank == UINT32_MAX)
			return UINT32_MAX;
		if (e->len == n && memcmp(b->arena + e->off, s, n) == 0)
			return e->rank;
	}
}

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decode base64 @s (@n chars) into @out; its length, or -1. */
static long b64decode(const char *s, size_t n, unsigned char *out, size_t cap)
{
	size_t o = 0;
	uint32_t acc = 0;
	int bits = 0;

	for (size_t i = 0; i < n; i++) {
		int v;

		if (s[i] == '=')
			break;
		v = b64val((unsigned char)s[i]);
		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o >= cap)
				return -1;
			out[o++] = (unsigned char)(acc >> bits);
		}
	}
	return (long)o;
}

void bpe_free(struct bpe *b)
{
	if (!b)
		return;
	pcre2_code_free(b->re);
	free(b->arena);
	free(b->table);
	free(b);
}

/* Insert @n bytes at arena offset @off with @rank; -1 if already there. */
static int insert(struct bpe *b, uint32_t off, size_t n, uint32_t rank)
{
	const unsigned char *s = b->arena + off;

	for (size_t i = fnv1a(s, n) & b->mask;; i = (i + 1) & b->mask) {
		struct slot *e = &b->table[i];

		if (e->rank == UINT32_MAX) {
			e->off = off;
			e->len = (uint16_t)n;
			e->rank = rank;
			return 0;
		}
		if (e->len == n && memcmp(b->arena + e->off, s, n) == 0)
			return -1;
	}
}

struct bpe *bpe_load(const char *path, char *err, size_t errsz)
{
	FILE *f = fopen(path, "r");
	struct bpe *b = calloc(1, sizeof(*b));
	char line[4 * TOKEN_MAX];
	size_t lines = 0, cap = 1 << 16, slots;
	unsigned long lineno = 0;
	int ec;
	PCRE2_SIZE eo;

	if (!f || !b) {
		snprintf(err, errsz, "%s: %s", path, strerror(errno));
		goto fail;
	}
	while (fgets(line, sizeof(line), f))
		lines++;
	rewind(f);
	for (slots = 1024; slots < 2 * lines; slots *= 2)
		;
	b->table = malloc(slots * sizeof(*b->table));
	b->arena = malloc(cap);
	if (!b->table || !b->arena) {
		snprintf(err, errsz, "%s: out of memory", path);
		goto fail;
	}
	memset(b->table, 0xff, slots * sizeof(*b->table));
	b->mask = slots - 1;
	while (fgets(line, sizeof(line), f)) {
		char *sp = strchr(line, ' '), *end;
		unsigned long rank;
		long len;

		lineno++;
		if (!sp)
			goto bad;
		errno = 0;
		rank = strtoul(sp + 1, &end, 10);
		if (errno || (*end && *end != '\n') || rank >= UINT32_MAX)
			goto bad;
		if (b->arena_len + TOKEN_MAX > cap) {
			unsigned char *p = realloc(b->arena, cap * 2);

			if (!p) {
				snprintf(err, errsz, "%s: out of memory", path);
				goto fail;
			}
			b->arena = p;
			cap *= 2;
		}
		len = b64decode(line, (size_t)(sp - line), b->arena + b->arena_len, TOKEN_MAX);
		if (len <= 0)
			goto bad;
		if (insert(b, (uint32_t)b->arena_len, (size_t)len, (uint32_t)rank) < 0) {
			snprintf(err, errsz, "%s:%lu: the same token twice", path, lineno);
			goto fail;
		}
		b->arena_len += (size_t)len;
		b->ntokens++;
	}
	if (b->ntokens < 256) {
		snprintf(err, errsz, "%s: %zu tokens; a byte-level vocabulary has at least 256", path,
			 b->ntokens);
		goto fail;
	}
	for (int c = 0; c < 256; c++) {
		unsigned char byte = (unsigned char)c;

		if (rank_of(b, &byte, 1) == UINT32_MAX) {
			snprintf(err, errsz, "%s: byte 0x%02x is not a token (not a byte-level BPE "
					     "vocabulary)", path, c);
			goto fail;
		}
	}
	b->re = pcre2_compile((PCRE2_SPTR)o200k_split, PCRE2_ZERO_TERMINATED,
			      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
	if (!b->re) {
		snprintf(err, errsz, "the pre-tokenizer pattern does not compile (error %d)", ec);
		goto fail;
	}
	pcre2_jit_compile(b->re, PCRE2_JIT_COMPLETE); /* optional: slower without */
	fclose(f);
	return b;
bad:
	snprintf(err, errsz, "%s:%lu: expected '<base64> <rank>'", path, lineno);
fail:
	if (f)
		fclose(f);
	bpe_free(b);
	return NULL;
}

size_t bpe_size(const struct bpe *b)
{
	return b->ntokens;
}

/* Tokens of one pre-tokenized piece: byte-pair merges by rank. */
static uint64_t piece_tokens(const struct bpe *b, const unsigned char *s, size_t n)
{
	size_t stack_bounds[65], *start = stack_bounds, parts = n;
	uint64_t count;

	if (n <= 1 || rank_of(b, s, n) != UINT32_MAX)
		return n ? 1 : 0;
	if (n + 1 > sizeof(stack_bounds) / sizeof(stack_bounds[0])) {
		start = malloc((n + 1) * sizeof(*start));
		if (!start)
			return n; /* every byte a token: the most it can be */
	}
	for (size_t i = 0; i <= n; i++)
		start[i] = i; /* part i is s[start[i] .. start[i + 1]) */
	while (parts > 1) {
		uint32_t best = UINT32_MAX;
		size_t at = 0;

		for (size_t i = 0; i + 1 < parts; i++) {
			uint32_t r = rank_of(b, s + start[i], start[i + 2] - start[i]);

			if (r < best) {
				best = r;
				at = i;
			}
		}
		if (best == UINT32_MAX)
			break;
		memmove(&start[at + 1], &start[at + 2], (parts - at - 1) * sizeof(*start));
		parts--;
	}
	count = parts;
	if (start != stack_bounds)
		free(start);
	return count;
}

uint64_t bpe_count(const struct bpe *b, const char *text, size_t n)
{
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(b->re, NULL);
	const unsigned char *s = (const unsigned char *)text;
	size_t off = 0;
	uint64_t count = 0;

	if (!md)
		return n; /* out of memory: a byte a token, the most it can be */
	while (off < n) {
		int rc = pcre2_match(b->re, (PCRE2_SPTR)s, n, off, 0, md, NULL);
		PCRE2_SIZE *ov;

		if (rc < 0) { /* nothing more matches: stray bytes, a token each */
			count += n - off;
			break;
		}
		ov = pcre2_get_ovector_pointer(md);
		count += ov[0] - off; /* bytes skipped (invalid UTF-8) */
		if (ov[1] == ov[0]) {
			off = ov[0] + 1;
			count++;
			continue;
		}
		count += piece_tokens(b, s + ov[0], ov[1] - ov[0]);
		off = ov[1];
	}
	pcre2_match_data_free(md);
	return count;
}
