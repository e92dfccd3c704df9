/* SPDX-License-Identifier: MIT */
/*
 * feedback_parse.c - parsing what a provider says about its rate limits: the
 * duration formats of x-ratelimit-reset-* ("6m0s", "2m59.56s", "7.66s",
 * "120ms", "1h2m3s", bare seconds), retry-after (integer or decimal seconds)
 * and the integer x-ratelimit-limit-* / x-ratelimit-remaining-* values.
 * feedback.c folds the result into the shared state; this file only parses:
 * no allocation, no printing, no floating point.
 *
 * Rounding: a duration is how long to wait, so a fraction that does not fall
 * on a whole nanosecond is rounded up (the conservative side). Anything that
 * does not fit an int64_t of nanoseconds is -ERANGE; anything else that is not
 * exactly one of the formats is -EINVAL. Inputs are trusted to be NUL-
 * terminated and nothing more.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quota.h"

#define NS_PER_US INT64_C(1000)
#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)
#define NS_PER_M (60 * NS_PER_S)
#define NS_PER_H (60 * NS_PER_M)

/*
 * A unit is m * 10^e nanoseconds: that split lets a decimal fraction be
 * applied exactly, digit by digit (see scaled_value()).
 */
struct unit {
	const char *name;
	int64_t ns;
	int64_t mant; /* ns == mant * 10^exp10 */
	int exp10;
};

/* Longest names first where one is a prefix of another ("ms" before "m"). */
static const struct unit units[] = {
	{ "h", NS_PER_H, 36, 11 },
	{ "ms", NS_PER_MS, 1, 6 },
	{ "m", NS_PER_M, 6, 10 },
	{ "s", NS_PER_S, 1, 9 },
	{ "us", NS_PER_US, 1, 3 },
	{ "\xc2\xb5s", NS_PER_US, 1, 3 }, /* U+00B5 MICRO SIGN, as Go prints it */
	{ "\xce\xbcs", NS_PER_US, 1, 3 }, /* U+03BC GREEK SMALL LETTER MU */
	{ "ns", 1, 1, 0 },
};

/* A decimal number as written: digits, optionally '.' and more digits. */
struct decimal {
	const char *int_digits, *frac_digits;
	size_t int_len, frac_len;
};

/* ASCII digit (isdigit() depends on the locale). */
static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * Scan a decimal at *@p: one or more digits, then optionally '.' followed by
 * one or more digits. Advances *@p past it. -EINVAL if there is none.
 */
static int scan_decimal(const char **p, struct decimal *d)
{
	const char *s = *p;

	d->int_digits = s;
	while (is_digit(*s))
		s++;
	d->int_len = (size_t)(s - d->int_digits);
	if (d->int_len == 0)
		return -EINVAL;
	d->frac_digits = NULL;
	d->frac_len = 0;
	if (*s == '.') {
		s++;
		d->frac_digits = s;
		while (is_digit(*s))
			s++;
		d->frac_len = (size_t)(s - d->frac_digits);
		if (d->frac_len == 0)
			return -EINVAL;
	}
	*p = s;
	return 0;
}

/* *@acc = *@acc * 10 + @digit, or -ERANGE past INT64_MAX. */
static int push_digit(int64_t *acc, int digit)
{
	if (*acc > (INT64_MAX - digit) / 10)
		return -ERANGE;
	*acc = *acc * 10 + digit;
	return 0;
}

/*
 * The value of @d in units of @u, in nanoseconds, rounded up.
 *
 * With the unit written as mant * 10^exp10 ns, the first exp10 fraction
 * digits are whole multiples of mant ns and join the integer part exactly.
 * The remaining ("tail") digits are worth less than mant ns in total; up to
 * 17 of them are kept as an integer N over 10^k, any further non-zero digit
 * bumps N by one (an upper bound), and the tail adds ceil(mant * N / 10^k),
 * which fits in 64 bits because mant <= 36 and N <= 10^17.
 */
static int scaled_value(const struct decimal *d, const struct unit *u, int64_t *ret)
{
	int64_t whole = 0; /* value in units of 10^exp10 ns */
	int64_t tail = 0, tail_den = 1;
	int tail_more = 0;
	size_t i;
	int r;

	for (i = 0; i < d->int_len; i++) {
		r = push_digit(&whole, d->int_digits[i] - '0');
		if (r < 0)
			return r;
	}
	for (i = 0; i < (size_t)u->exp10; i++) {
		int digit = i < d->frac_len ? d->frac_digits[i] - '0' : 0;

		r = push_digit(&whole, digit);
		if (r < 0)
			return r;
	}
	for (i = (size_t)u->exp10; i < d->frac_len; i++) {
		int digit = d->frac_digits[i] - '0';

		if (tail_den < INT64_C(100000000000000000)) { /* 10^17 */
			tail = tail * 10 + digit;
			tail_den *= 10;
		} else if (digit != 0) {
			tail_more = 1;
		}
	}
	if (tail_more)
		tail++;

	if (whole > INT64_MAX / u->mant)
		return -ERANGE;
	whole *= u->mant;
	if (tail != 0) {
		int64_t extra = (tail * u->mant + tail_den - 1) / tail_den;

		if (whole > INT64_MAX - extra)
			return -ERANGE;
		whole += extra;
	}
	*ret = whole;
	return 0;
}

/* The unit named at *@p (advancing past it), or NULL. */
static const struct unit *scan_unit(const char **p)
{
	size_t i;

	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		size_t n = strlen(units[i].name);

		if (strncmp(*p, units[i].name, n) == 0) {
			*p += n;
			return &units[i];
		}
	}
	return NULL;
}

/*
 * Grammar: a bare decimal (seconds), or one or more "<decimal><unit>"
 * components with units strictly decreasing (h, m, s, ms, us, ns), each unit
 * at most once, as Go's time.Duration and OpenAI print them.
 */
int quota_parse_duration(const char *s, int64_t *ret_ns)
{
	const char *p = s;
	int64_t total = 0, prev_unit_ns = INT64_MAX;
	struct decimal d;
	int r;

	if (!s || !ret_ns || *s == '\0')
		return -EINVAL;

	r = scan_decimal(&p, &d);
	if (r < 0)
		return r;
	if (*p == '\0') {
		static const struct unit seconds = { "", NS_PER_S, 1, 9 };

		r = scaled_value(&d, &seconds, &total);
		if (r < 0)
			return r;
		*ret_ns = total;
		return 0;
	}

	for (;;) {
		const struct unit *u = scan_unit(&p);
		int64_t v;

		if (!u || u->ns >= prev_unit_ns)
			return -EINVAL;
		prev_unit_ns = u->ns;
		/* Keep scanning on overflow so that garbage after a huge value
		 * still reads as -EINVAL; remember the -ERANGE. */
		r = scaled_value(&d, u, &v);
		if (r == 0 && total > INT64_MAX - v)
			r = -ERANGE;
		if (r < 0) {
			while (*p) {
				if (scan_decimal(&p, &d) < 0 || !(u = scan_unit(&p)) ||
				    u->ns >= prev_unit_ns)
					return -EINVAL;
				prev_unit_ns = u->ns;
			}
			return -ERANGE;
		}
		total += v;
		if (*p == '\0')
			break;
		r = scan_decimal(&p, &d);
		if (r < 0)
			return r;
	}
	*ret_ns = total;
	return 0;
}

/* A non-negative decimal integer, nothing else. */
static int parse_count(const char *s, int64_t *ret)
{
	int64_t v = 0;
	int r;

	if (*s == '\0')
		return -EINVAL;
	for (; *s; s++) {
		if (!is_digit(*s))
			return -EINVAL;
		r = push_digit(&v, *s - '0');
		if (r < 0)
			return r;
	}
	*ret = v;
	return 0;
}

/* retry-after: integer or decimal seconds ("20", "0.5"); no units, no date. */
static int parse_seconds(const char *s, int64_t *ret_ns)
{
	const char *p = s;
	struct decimal d;
	static const struct unit seconds = { "", NS_PER_S, 1, 9 };
	int r;

	r = scan_decimal(&p, &d);
	if (r < 0)
		return r;
	if (*p != '\0')
		return -EINVAL;
	return scaled_value(&d, &seconds, ret_ns);
}

/* See quota.h. */
void quota_feedback_init(struct quota_feedback *fb, size_t size)
{
	if (!fb || size < offsetof(struct quota_feedback, reserved_))
		return;
	/* Only as much as the caller's struct holds. */
	size_t n = size < sizeof(*fb) ? size : sizeof(*fb);
	memset(fb, 0xff, n); /* every int64_t field -1 */
	fb->size = (uint32_t)n;
	fb->flags = 0;
}

/* The caller's struct holds the field at @off. */
static int has_field(const struct quota_feedback *fb, size_t off)
{
	return fb->size >= off + sizeof(int64_t) && fb->size <= sizeof(*fb) + 4096;
}

/* ASCII lower case, whatever the locale. */
static int ascii_lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Case-insensitive ASCII equality with a lower-case literal. */
static int name_is(const char *name, const char *lower)
{
	for (; *name && *lower; name++, lower++)
		if (ascii_lower((unsigned char)*name) != *lower)
			return 0;
	return *name == '\0' && *lower == '\0';
}

enum value_kind { V_COUNT, V_DURATION, V_SECONDS };

/* Longest header value worth reading: real ones are a dozen characters. */
#define VALUE_MAX 127

/* See quota.h. A value is parsed only when the name is a rate-limit header. */
int quota_feedback_header(struct quota_feedback *fb, const char *name, const char *value)
{
	static const struct {
		const char *name;
		enum value_kind kind;
		size_t field; /* offset in struct quota_feedback */
	} headers[] = {
		{ "retry-after", V_SECONDS, offsetof(struct quota_feedback, retry_after_ns) },
		{ "x-ratelimit-limit-requests", V_COUNT,
		  offsetof(struct quota_feedback, limit_requests) },
		{ "x-ratelimit-remaining-requests", V_COUNT,
		  offsetof(struct quota_feedback, remaining_requests) },
		{ "x-ratelimit-reset-requests", V_DURATION,
		  offsetof(struct quota_feedback, reset_requests_ns) },
		{ "x-ratelimit-limit-tokens", V_COUNT,
		  offsetof(struct quota_feedback, limit_tokens) },
		{ "x-ratelimit-remaining-tokens", V_COUNT,
		  offsetof(struct quota_feedback, remaining_tokens) },
		{ "x-ratelimit-reset-tokens", V_DURATION,
		  offsetof(struct quota_feedback, reset_tokens_ns) },
	};
	char buf[VALUE_MAX + 1];
	const char *start, *end;
	int64_t v = 0;
	size_t i, n;
	int r;

	if (!fb || !name || !value)
		return -EINVAL;
	for (i = 0; i < sizeof(headers) / sizeof(headers[0]); i++)
		if (name_is(name, headers[i].name))
			break;
	if (i == sizeof(headers) / sizeof(headers[0]))
		return 0;
	if (!has_field(fb, headers[i].field))
		return -EINVAL; /* not initialised by quota_feedback_init() */

	/* Optional whitespace around a field value is not part of it (RFC
	 * 9110 5.5); copy the rest so the parsers see exactly the value. */
	start = value;
	while (*start == ' ' || *start == '\t')
		start++;
	end = start;
	n = 0;
	while (end[n] && n <= VALUE_MAX)
		n++;
	if (n > VALUE_MAX)
		return -EINVAL; /* far longer than any real value */
	while (n > 0 && (end[n - 1] == ' ' || end[n - 1] == '\t' || end[n - 1] == '\r' ||
			 end[n - 1] == '\n'))
		n--;
	if (n == 0)
		return -EINVAL;
	memcpy(buf, start, n);
	buf[n] = '\0';

	switch (headers[i].kind) {
	case V_COUNT:
		r = parse_count(buf, &v);
		break;
	case V_DURATION:
		r = quota_parse_duration(buf, &v);
		break;
	case V_SECONDS:
	default:
		r = parse_seconds(buf, &v);
		break;
	}
	if (r < 0)
		return -EINVAL; /* documented: a malformed or out-of-range value */
	memcpy((char *)fb + headers[i].field, &v, sizeof(v));
	return 1;
}
