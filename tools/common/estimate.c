/* SPDX-License-Identifier: MIT */
/*
 * estimate.c - see estimate.h. Text is cut into the pieces a BPE
 * pre-tokenizer of the o200k / Llama 3 family makes, and each piece is
 * charged an upper estimate of the tokens the merges leave of it, in
 * milli-tokens:
 *
 *  - digits: exactly ceil(n / 3) (both families split numbers in threes);
 *  - an ASCII word (with the one space or sign before it that joins it):
 *    one token up to 3 letters, then growing with the square of the length
 *    (common words are one token, long ones split into more), then
 *    linearly; capital after lower case starts a new word ("getWeather");
 *  - punctuation and whitespace runs: one token, and a little per further
 *    character (the vocabularies hold most short runs whole);
 *  - a non-ASCII code point by its script: accented Latin, Cyrillic and
 *    the like well under a token, CJK about one, symbols and emoji more;
 *  - never more than one token per byte (every byte is in the vocabulary),
 *  - and a final margin of 2 %.
 *
 * The constants were fitted on tests/estimate/corpus against o200k_base
 * and Llama 3 (tests/estimate/measure.mjs): no sample under-estimated, the
 * mean ratio about 1.15; figures in docs/BENCHMARKS.md. A change here must
 * keep `meson test estimate_corpus` passing.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "estimate.h"

/* milli-tokens; see the comment above. */
#define EST_WORD_SHORT 3         /* ASCII words this long or shorter: one token */
#define EST_WORD_GROWTH 25       /* then 1000 + GROWTH * (n - SHORT)^2 ... */
#define EST_WORD_LONG 12         /* ... up to this length, then linear: */
#define EST_WORD_PER_CHAR 330
#define EST_PUNCT_FIRST 1000     /* a punctuation run: its first character */
#define EST_PUNCT_MORE 200       /* each further one */
#define EST_SPACE_FIRST 1000     /* a whitespace run */
#define EST_SPACE_MORE 35
#define EST_ACCENTED 700         /* Latin letters with diacritics (Latin-1..Ext-B, Vietnamese) */
#define EST_ALPHABETIC 330       /* Greek, Cyrillic, Armenian, Hebrew, Arabic */
#define EST_OTHER2 700           /* other two-byte code points */
#define EST_HAN 940              /* CJK ideographs */
#define EST_KANA 800
#define EST_HANGUL 700
#define EST_CJK_PUNCT 1000       /* CJK and fullwidth punctuation */
#define EST_OTHER3_LETTER 520    /* Indic, Thai and other three-byte scripts */
#define EST_SYMBOL3 1300         /* three-byte symbols: dingbats, arrows, math */
#define EST_JOINER 1000          /* zero-width joiner and variation selectors */
#define EST_FOUR 2500            /* emoji and other supplementary-plane code points */

#define EST_MARGIN_PCT 2
#define EST_SATURATE (UINT64_C(1) << 62)

/* Character classes of the scanner. */
enum cls { C_LETTER, C_DIGIT, C_SPACE, C_NEWLINE, C_PUNCT };

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

/* Milli-tokens of one non-ASCII code point of @len bytes, never above one
 * token per byte. */
static uint64_t multi_cost(uint32_t cp, size_t len)
{
	uint64_t c;

	if (cp == 0x200d || (cp >= 0xfe00 && cp <= 0xfe0f))
		c = EST_JOINER;
	else if ((cp >= 0xc0 && cp <= 0x24f) || (cp >= 0x1e00 && cp <= 0x1eff))
		c = EST_ACCENTED;
	else if (cp >= 0x370 && cp <= 0x6ff)
		c = EST_ALPHABETIC;
	else if (len == 2)
		c = EST_OTHER2;
	else if ((cp >= 0x3400 && cp <= 0x9fff) || (cp >= 0xf900 && cp <= 0xfaff))
		c = EST_HAN;
	else if (cp >= 0x3040 && cp <= 0x30ff)
		c = EST_KANA;
	else if ((cp >= 0xac00 && cp <= 0xd7af) || (cp >= 0x1100 && cp <= 0x11ff))
		c = EST_HANGUL;
	else if ((cp >= 0x3000 && cp <= 0x303f) || (cp >= 0xff00 && cp <= 0xffef))
		c = EST_CJK_PUNCT;
	else if (cp >= 0x2000 && cp <= 0x2bff)
		c = EST_SYMBOL3;
	else if (len == 3)
		c = EST_OTHER3_LETTER;
	else
		c = EST_FOUR;
	return c < 1000 * len ? c : 1000 * len;
}

/* Milli-tokens of an ASCII word of @n letters: common short words are one
 * token; longer ones split more the longer they are. */
static uint64_t word_cost(uint64_t n)
{
	uint64_t d, c;

	if (n <= EST_WORD_SHORT)
		return 1000;
	if (n <= EST_WORD_LONG) {
		d = n - EST_WORD_SHORT;
		c = 1000 + EST_WORD_GROWTH * d * d;
	} else {
		d = EST_WORD_LONG - EST_WORD_SHORT;
		c = 1000 + EST_WORD_GROWTH * d * d + EST_WORD_PER_CHAR * (n - EST_WORD_LONG);
	}
	return c < 1000 * n ? c : 1000 * n;
}

/* Milli-tokens of a run of @n characters of ASCII class @k. */
static uint64_t run_cost(enum cls k, uint64_t n)
{
	switch (k) {
	case C_DIGIT:
		return 1000 * ((n + 2) / 3);
	case C_LETTER:
		return word_cost(n);
	case C_PUNCT:
		return EST_PUNCT_FIRST + EST_PUNCT_MORE * (n - 1);
	default:
		return EST_SPACE_FIRST + EST_SPACE_MORE * (n - 1);
	}
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
		/* One character before a word joins it (" word", "_word",
		 * ".word"), and one space before punctuation (" ("), as in the
		 * pre-tokenizers. */
		if ((k == C_SPACE || k == C_PUNCT) && i + 1 < n && s[i + 1] < 0x80 &&
		    (ascii_class(s[i + 1]) == C_LETTER ||
		     (s[i] == ' ' && ascii_class(s[i + 1]) == C_PUNCT))) {
			i++;
			k = ascii_class(s[i]);
		}
		/* Whitespace runs take spaces and newlines together. */
		for (j = i + 1; j < n && s[j] < 0x80; j++) {
			enum cls kj = ascii_class(s[j]);

			/* A lower-case letter then a capital starts a new word
			 * ("getWeather"), as the o200k pre-tokenizer splits. */
			if (k == C_LETTER && kj == C_LETTER && s[j] < 'a' && s[j - 1] >= 'a')
				break;
			/* ... and so does the last punctuation before a word. */
			if (k == C_PUNCT && kj == C_PUNCT && j + 1 < n && s[j + 1] < 0x80 &&
			    ascii_class(s[j + 1]) == C_LETTER)
				break;
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
		if (milli > EST_SATURATE / 2)
			return EST_SATURATE;
	}
	/* A last margin of EST_MARGIN_PCT %, rounded to the nearest token
	 * (the pieces' costs are upper estimates already), at least 1. */
	milli = (milli * (100 + EST_MARGIN_PCT) / 100 + 500) / 1000;
	return milli ? milli : n > 0;
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
