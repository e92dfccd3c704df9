/* SPDX-License-Identifier: MIT */
/*
 * estimate.c - see estimate.h. Text is cut into the pieces a BPE
 * pre-tokenizer of the o200k / Llama 3 family makes (letter runs with one
 * leading space or sign, digit groups of at most 3, punctuation runs,
 * whitespace runs, other scripts), and each piece is charged an upper
 * estimate of the tokens the merges leave of it, in milli-tokens:
 *
 *  - digits: exactly ceil(n / 3) (both families split numbers in threes);
 *  - an ASCII letter run: BASE + PER_CHAR * length, never above its length
 *    (a byte-level vocabulary holds every single letter);
 *  - punctuation and whitespace runs alike, at most one token per byte;
 *  - a non-ASCII code point by its UTF-8 length and script: CJK and kana
 *    are about one token a character, rare ones two; four-byte code points
 *    (emoji) up to three; at most one token per byte in every case.
 *
 * The constants were fitted on tests/estimate/corpus against the two
 * tokenizers (tests/estimate/measure.mjs) so that no sample is
 * under-estimated; the figures are in docs/BENCHMARKS.md.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "estimate.h"

/* milli-tokens; see the comment above. */
#ifndef EST_WORD_BASE
#define EST_WORD_BASE 700
#endif
#ifndef EST_WORD_PER_CHAR
#define EST_WORD_PER_CHAR 120
#endif
#ifndef EST_PUNCT_BASE
#define EST_PUNCT_BASE 500
#endif
#ifndef EST_PUNCT_PER_CHAR
#define EST_PUNCT_PER_CHAR 600
#endif
#ifndef EST_SPACE_BASE
#define EST_SPACE_BASE 800
#endif
#ifndef EST_SPACE_PER_CHAR
#define EST_SPACE_PER_CHAR 150
#endif
#ifndef EST_LATIN2_PER_CHAR /* two-byte code points: accents, Greek, Cyrillic... */
#define EST_LATIN2_PER_CHAR 900
#endif
#ifndef EST_CJK_PER_CHAR
#define EST_CJK_PER_CHAR 1300
#endif
#ifndef EST_OTHER3_PER_CHAR /* other three-byte code points: symbols, Indic... */
#define EST_OTHER3_PER_CHAR 1800
#endif
#ifndef EST_FOUR_PER_CHAR /* emoji and the supplementary planes */
#define EST_FOUR_PER_CHAR 2600
#endif

#define EST_SATURATE (UINT64_C(1) << 62)

/* Character classes of the scanner. */
enum cls { C_LETTER, C_DIGIT, C_SPACE, C_NEWLINE, C_PUNCT, C_MULTI, C_BAD };

/* Class of the ASCII byte @c. */
static enum cls ascii_class(unsigned char c)
{
	if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
		return C_LETTER;
	if (c >= '0' && c <= '9')
		return C_DIGIT;
	if (c == ' ' || c == '\t' || c == '\v' || c == '\f')
		return C_SPACE;
	if (c == '\n' || c == '\r')
		return C_NEWLINE;
	return C_PUNCT;
}

/*
 * Length of the well-formed UTF-8 sequence at @s (at most @n bytes) and its
 * code point in *@cp, or 0 if it is not one.
 */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
	size_t len;
	uint32_t c, min;

	if (s[0] < 0xc2 || s[0] > 0xf4)
		return 0;
	if (s[0] < 0xe0)
		len = 2, c = s[0] & 0x1f, min = 0x80;
	else if (s[0] < 0xf0)
		len = 3, c = s[0] & 0x0f, min = 0x800;
	else
		len = 4, c = s[0] & 0x07, min = 0x10000;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return len;
}

/* CJK ideographs, kana, hangul, fullwidth forms: about a token apiece. */
static int is_cjk(uint32_t cp)
{
	return (cp >= 0x2e80 && cp <= 0x9fff) || (cp >= 0xac00 && cp <= 0xd7af) ||
	       (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0xff00 && cp <= 0xffef);
}

/* Milli-tokens of one non-ASCII code point of @len bytes. */
static uint64_t multi_cost(uint32_t cp, size_t len)
{
	uint64_t c;

	if (len == 2)
		c = EST_LATIN2_PER_CHAR;
	else if (len == 3)
		c = is_cjk(cp) ? EST_CJK_PER_CHAR : EST_OTHER3_PER_CHAR;
	else
		c = EST_FOUR_PER_CHAR;
	return c < 1000 * len ? c : 1000 * len;
}

/* Milli-tokens of a run of @n characters of class @k (ASCII classes). */
static uint64_t run_cost(enum cls k, uint64_t n)
{
	uint64_t c;

	switch (k) {
	case C_DIGIT:
		return 1000 * ((n + 2) / 3);
	case C_LETTER:
		c = EST_WORD_BASE + EST_WORD_PER_CHAR * n;
		break;
	case C_PUNCT:
		c = EST_PUNCT_BASE + EST_PUNCT_PER_CHAR * n;
		break;
	case C_SPACE:
	case C_NEWLINE:
		c = EST_SPACE_BASE + EST_SPACE_PER_CHAR * n;
		break;
	default:
		c = 1000 * n;
	}
	return c < 1000 * n ? c : 1000 * n;
}

uint64_t est_text(const char *text, size_t n)
{
	const unsigned char *s = (const unsigned char *)text;
	uint64_t milli = 0;
	size_t i = 0;

	while (i < n) {
		enum cls k;
		size_t j;
		uint32_t cp;

		if (s[i] >= 0x80) {
			size_t len = utf8_next(s + i, n - i, &cp);

			if (len == 0) {
				milli += 1000; /* a stray byte is a byte token */
				i++;
			} else {
				milli += multi_cost(cp, len);
				i += len;
			}
			continue;
		}
		k = ascii_class(s[i]);
		/* One space before a word or punctuation joins it, as in the
		 * pre-tokenizers (" word", " ("). */
		if (k == C_SPACE && s[i] == ' ' && i + 1 < n && s[i + 1] < 0x80 &&
		    (ascii_class(s[i + 1]) == C_LETTER || ascii_class(s[i + 1]) == C_PUNCT)) {
			i++;
			k = ascii_class(s[i]);
		}
		/* Whitespace runs take spaces and newlines together. */
		for (j = i + 1; j < n && s[j] < 0x80; j++) {
			enum cls kj = ascii_class(s[j]);

			if (kj == k || ((k == C_SPACE || k == C_NEWLINE) &&
					(kj == C_SPACE || kj == C_NEWLINE)))
				continue;
			break;
		}
		/* A whitespace run leaves its last space to the word after it. */
		if ((k == C_SPACE || k == C_NEWLINE) && j < n && j - i > 1 && s[j - 1] == ' ')
			j--;
		milli += run_cost(k, j - i);
		i = j;
		if (milli > EST_SATURATE)
			return EST_SATURATE;
	}
	return (milli + 999) / 1000;
}

/* ---- request bodies ---------------------------------------------------- */

/* a + b, saturating at EST_SATURATE. */
static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a >= EST_SATURATE || b >= EST_SATURATE - a ? EST_SATURATE : a + b;
}

/* Tokens of a JSON value written out compactly (tool definitions, schemas,
 * tool-call arguments): an upper estimate of any rendering of it. */
static uint64_t json_tokens(const cJSON *v)
{
	char *s = cJSON_PrintUnformatted(v);
	uint64_t t;

	if (!s) /* out of memory: assume the worst a JSON value can be here */
		return EST_SATURATE;
	t = est_text(s, strlen(s));
	cJSON_free(s);
	return t;
}

/* One content part of a chat message. */
static int part_tokens(const cJSON *part, int msg, uint64_t *t, char *err, size_t errsz)
{
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
	const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");

	if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
		snprintf(err, errsz, "messages[%d].content: each part must be an object with a "
				     "string 'type'", msg);
		return -EINVAL;
	}
	if (strcmp(type->valuestring, "text") == 0) {
		if (!cJSON_IsString(text)) {
			snprintf(err, errsz, "messages[%d].content: a text part needs a string "
					     "'text'", msg);
			return -EINVAL;
		}
		*t = sat_add(*t, est_text(text->valuestring, strlen(text->valuestring)));
	} else if (strcmp(type->valuestring, "image_url") == 0) {
		const cJSON *img = cJSON_GetObjectItemCaseSensitive(part, "image_url");
		const cJSON *detail = cJSON_GetObjectItemCaseSensitive(img, "detail");

		if (!cJSON_IsObject(img) && !cJSON_IsString(img)) {
			snprintf(err, errsz, "messages[%d].content: an image_url part needs "
					     "'image_url'", msg);
			return -EINVAL;
		}
		*t = sat_add(*t, cJSON_IsString(detail) && strcmp(detail->valuestring, "low") == 0
					 ? EST_IMAGE_LOW
					 : EST_IMAGE_HIGH);
	} else {
		/* Audio, files, refusals: what is known of them is their JSON. */
		*t = sat_add(*t, json_tokens(part));
	}
	return 0;
}

/* messages[]: overhead, role, name, content (string or parts), tool calls. */
static int chat_tokens(const cJSON *root, uint64_t *ret, char *err, size_t errsz)
{
	const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages"), *m;
	static const char *const extra[] = { "tools", "functions", "tool_choice",
					     "response_format", NULL };
	uint64_t t = EST_REPLY_PRIMING;
	int i = 0;

	if (!cJSON_IsArray(msgs) || !msgs->child) {
		snprintf(err, errsz, "'messages' must be a non-empty array");
		return -EINVAL;
	}
	cJSON_ArrayForEach(m, msgs)
	{
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
		const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
		const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");

		if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
			snprintf(err, errsz, "messages[%d] must be an object with a string 'role'", i);
			return -EINVAL;
		}
		t = sat_add(t, EST_MESSAGE_OVERHEAD);
		if (cJSON_IsString(content)) {
			t = sat_add(t, est_text(content->valuestring, strlen(content->valuestring)));
		} else if (cJSON_IsArray(content)) {
			const cJSON *part;

			cJSON_ArrayForEach(part, content)
				if (part_tokens(part, i, &t, err, errsz) < 0)
					return -EINVAL;
		} else if (content && !cJSON_IsNull(content)) {
			snprintf(err, errsz, "messages[%d].content must be a string, an array or null",
				 i);
			return -EINVAL;
		}
		if (cJSON_IsString(name))
			t = sat_add(t, 1 + est_text(name->valuestring, strlen(name->valuestring)));
		if (calls)
			t = sat_add(t, json_tokens(calls));
		i++;
	}
	/* Tool definitions and schemas reach the model as text of their own. */
	for (int k = 0; extra[k]; k++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, extra[k]);

		if (v && !cJSON_IsNull(v))
			t = sat_add(t, json_tokens(v));
	}
	*ret = t;
	return 0;
}

/*
 * A completion prompt or an embedding input: a string, an array of strings,
 * an array of token ids, or an array of arrays of token ids (counted exactly).
 */
static int input_tokens(const cJSON *in, const char *field, uint64_t *ret, char *err,
			size_t errsz)
{
	const cJSON *e;
	uint64_t t = 0;

	if (cJSON_IsString(in)) {
		*ret = est_text(in->valuestring, strlen(in->valuestring));
		return 0;
	}
	if (!cJSON_IsArray(in) || !in->child)
		goto bad;
	cJSON_ArrayForEach(e, in)
	{
		if (cJSON_IsString(e)) {
			t = sat_add(t, est_text(e->valuestring, strlen(e->valuestring)));
		} else if (cJSON_IsNumber(e)) {
			t = sat_add(t, 1);
		} else if (cJSON_IsArray(e)) {
			const cJSON *id;

			cJSON_ArrayForEach(id, e)
			{
				if (!cJSON_IsNumber(id))
					goto bad;
				t = sat_add(t, 1);
			}
		} else {
			goto bad;
		}
	}
	*ret = t;
	return 0;
bad:
	snprintf(err, errsz, "'%s' must be a string, an array of strings, an array of token ids "
			     "or an array of arrays of token ids", field);
	return -EINVAL;
}

int est_request(const cJSON *root, enum est_endpoint endpoint, uint64_t *ret, char *err,
		size_t errsz)
{
	uint64_t t = 0;
	int r;

	if (!cJSON_IsObject(root)) {
		snprintf(err, errsz, "the request body must be a JSON object");
		return -EINVAL;
	}
	switch (endpoint) {
	case EST_CHAT:
		r = chat_tokens(root, &t, err, errsz);
		break;
	case EST_COMPLETION:
		r = input_tokens(cJSON_GetObjectItemCaseSensitive(root, "prompt"), "prompt", &t,
				 err, errsz);
		break;
	case EST_EMBEDDING:
		r = input_tokens(cJSON_GetObjectItemCaseSensitive(root, "input"), "input", &t, err,
				 errsz);
		break;
	default:
		snprintf(err, errsz, "unknown endpoint");
		return -EINVAL;
	}
	if (r < 0)
		return r;
	*ret = t;
	return 0;
}
