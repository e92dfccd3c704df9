/* SPDX-License-Identifier: MIT */
/*
 * test_feedback_parse.c - table-driven tests of the provider-feedback parsers
 * (quota_parse_duration, quota_feedback_header, quota_feedback_init): every
 * format real providers send, with exact expected nanoseconds (fractions
 * rounded up), and malformed or out-of-range input, which must give a clear
 * error, leave the outputs untouched and never crash.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "quota.h"

#define S INT64_C(1000000000)
#define MS INT64_C(1000000)

struct dur_case {
	const char *in;
	int ret;
	int64_t ns;
};

static const struct dur_case dur_cases[] = {
	/* OpenAI / Go time.Duration formats */
	{ "6m0s", 0, 360 * S },
	{ "2m59.56s", 0, 179 * S + 560 * MS },
	{ "7.66s", 0, 7 * S + 660 * MS },
	{ "120ms", 0, 120 * MS },
	{ "1h2m3s", 0, 3723 * S },
	{ "20ms", 0, 20 * MS },
	{ "0s", 0, 0 },
	{ "1s", 0, S },
	{ "250us", 0, 250000 },
	{ "250\xc2\xb5s", 0, 250000 },
	{ "10ns", 0, 10 },
	{ "1m", 0, 60 * S },
	{ "1h", 0, 3600 * S },
	{ "1.5h", 0, 5400 * S },
	{ "0.5m", 0, 30 * S },
	{ "1s500ms", 0, 1500 * MS },
	{ "1h1ns", 0, 3600 * S + 1 },
	{ "007s", 0, 7 * S },
	/* bare seconds */
	{ "20", 0, 20 * S },
	{ "0", 0, 0 },
	{ "0.5", 0, 500 * MS },
	{ "1.000000001", 0, S + 1 },
	/* fractions below a nanosecond round up */
	{ "1.0000000001s", 0, S + 1 },
	{ "0.1ns", 0, 1 },
	{ "0.000000000000000000001s", 0, 1 },
	{ "0.0000000000000000000000000000s", 0, 0 },
	{ "1.5ns", 0, 2 },
	{ "0.3us", 0, 300 },
	{ "0.0000000001h", 0, 360 },
	{ "0.0000000000001h", 0, 1 }, /* 0.36 ns */
	{ "0.000000000001h", 0, 4 }, /* 3.6 ns */
	{ "0.00000000001h", 0, 36 },
	/* limits of int64_t nanoseconds (about 292 years) */
	{ "9223372036854775807ns", 0, INT64_MAX },
	{ "9223372036.854775807s", 0, INT64_MAX },
	{ "9223372036854775808ns", -ERANGE, 0 },
	{ "9223372036.854775808s", -ERANGE, 0 },
	{ "99999999999999999999s", -ERANGE, 0 },
	{ "99999999999999999999", -ERANGE, 0 },
	{ "2562048h", -ERANGE, 0 },
	{ "2562047h47m16.854775807s", 0, INT64_MAX },
	{ "2562047h47m16.854775808s", -ERANGE, 0 },
	{ "99999999999999999999h1x", -EINVAL, 0 },
	/* malformed */
	{ "", -EINVAL, 0 },
	{ "abc", -EINVAL, 0 },
	{ "1.2.3s", -EINVAL, 0 },
	{ "-5s", -EINVAL, 0 },
	{ "+5s", -EINVAL, 0 },
	{ "5x", -EINVAL, 0 },
	{ "s", -EINVAL, 0 },
	{ "5", 0, 5 * S },
	{ "5.", -EINVAL, 0 },
	{ ".5s", -EINVAL, 0 },
	{ "5 s", -EINVAL, 0 },
	{ " 5s", -EINVAL, 0 },
	{ "5s ", -EINVAL, 0 },
	{ "1s1m", -EINVAL, 0 },
	{ "1s1s", -EINVAL, 0 },
	{ "1m30", -EINVAL, 0 },
	{ "1e3s", -EINVAL, 0 },
	{ "0x10s", -EINVAL, 0 },
	{ "5S", -EINVAL, 0 },
	{ "5sec", -EINVAL, 0 },
	{ "1d", -EINVAL, 0 },
	{ "NaN", -EINVAL, 0 },
	{ "inf", -EINVAL, 0 },
	{ "Wed, 21 Oct 2015 07:28:00 GMT", -EINVAL, 0 },
	{ "5\xc2s", -EINVAL, 0 },
};

Test(feedback_parse, durations)
{
	for (size_t i = 0; i < sizeof(dur_cases) / sizeof(dur_cases[0]); i++) {
		const struct dur_case *c = &dur_cases[i];
		int64_t ns = -12345;
		int r = quota_parse_duration(c->in, &ns);

		cr_expect_eq(r, c->ret, "parse_duration(\"%s\") = %d, want %d", c->in, r, c->ret);
		if (c->ret == 0)
			cr_expect_eq(ns, c->ns, "parse_duration(\"%s\") = %lld ns, want %lld",
				     c->in, (long long)ns, (long long)c->ns);
		else
			cr_expect_eq(ns, -12345, "parse_duration(\"%s\") wrote its output on error",
				     c->in);
	}
}

Test(feedback_parse, duration_null_and_long)
{
	int64_t ns = 7;
	char buf[4096];

	cr_expect_eq(quota_parse_duration(NULL, &ns), -EINVAL);
	cr_expect_eq(quota_parse_duration("5s", NULL), -EINVAL);
	cr_expect_eq(ns, 7);

	/* A long run of zeros is a valid, small number. */
	memset(buf, '0', sizeof(buf) - 3);
	strcpy(buf + sizeof(buf) - 3, "5s");
	cr_expect_eq(quota_parse_duration(buf, &ns), 0);
	cr_expect_eq(ns, 5 * S);

	/* A long fraction is read to the end and rounded up. */
	buf[0] = '1';
	buf[1] = '.';
	memset(buf + 2, '0', sizeof(buf) - 5);
	strcpy(buf + sizeof(buf) - 3, "1s");
	cr_expect_eq(quota_parse_duration(buf, &ns), 0);
	cr_expect_eq(ns, S + 1);

	/* Long digit garbage. */
	memset(buf, '9', sizeof(buf) - 1);
	buf[sizeof(buf) - 1] = '\0';
	cr_expect_eq(quota_parse_duration(buf, &ns), -ERANGE);
}

struct hdr_case {
	const char *name, *value;
	int ret;
	size_t field; /* offsetof the field expected to change, when ret == 1 */
	int64_t v;
};

#define F(x) offsetof(struct quota_feedback, x)

static const struct hdr_case hdr_cases[] = {
	{ "retry-after", "20", 1, F(retry_after_ns), 20 * S },
	{ "Retry-After", "0.5", 1, F(retry_after_ns), 500 * MS },
	{ "RETRY-AFTER", " 7 ", 1, F(retry_after_ns), 7 * S },
	{ "retry-after", "0", 1, F(retry_after_ns), 0 },
	{ "retry-after", "1.0000000001", 1, F(retry_after_ns), S + 1 },
	{ "x-ratelimit-limit-requests", "1200", 1, F(limit_requests), 1200 },
	{ "X-RateLimit-Limit-Tokens", "900000", 1, F(limit_tokens), 900000 },
	{ "x-ratelimit-remaining-requests", "0", 1, F(remaining_requests), 0 },
	{ "x-ratelimit-remaining-tokens", "149984", 1, F(remaining_tokens), 149984 },
	{ "x-ratelimit-remaining-tokens", "\t42\r\n", 1, F(remaining_tokens), 42 },
	{ "x-ratelimit-reset-requests", "2m59.56s", 1, F(reset_requests_ns), 179560 * MS },
	{ "x-ratelimit-reset-tokens", "7.66s", 1, F(reset_tokens_ns), 7660 * MS },
	{ "x-ratelimit-reset-tokens", "120ms", 1, F(reset_tokens_ns), 120 * MS },
	{ "x-ratelimit-reset-requests", "6m0s", 1, F(reset_requests_ns), 360 * S },
	{ "x-ratelimit-reset-requests", "1h2m3s", 1, F(reset_requests_ns), 3723 * S },
	{ "x-ratelimit-reset-tokens", "0s", 1, F(reset_tokens_ns), 0 },
	{ "x-ratelimit-reset-tokens", "20ms", 1, F(reset_tokens_ns), 20 * MS },
	{ "x-ratelimit-reset-tokens", "3", 1, F(reset_tokens_ns), 3 * S },
	/* not rate-limit headers */
	{ "content-type", "application/json", 0, 0, 0 },
	{ "x-ratelimit-reset", "12", 0, 0, 0 },
	{ "x-ratelimit-limit-requestsx", "1", 0, 0, 0 },
	{ "retry-after-", "1", 0, 0, 0 },
	{ "", "1", 0, 0, 0 },
	{ "retry-after ", "1", 0, 0, 0 },
	/* malformed values of rate-limit headers */
	{ "retry-after", "", -EINVAL, 0, 0 },
	{ "retry-after", "   ", -EINVAL, 0, 0 },
	{ "retry-after", "abc", -EINVAL, 0, 0 },
	{ "retry-after", "-5", -EINVAL, 0, 0 },
	{ "retry-after", "5s", -EINVAL, 0, 0 },
	{ "retry-after", "1.2.3", -EINVAL, 0, 0 },
	{ "retry-after", "Wed, 21 Oct 2015 07:28:00 GMT", -EINVAL, 0, 0 },
	{ "retry-after", "99999999999999999999", -EINVAL, 0, 0 },
	{ "x-ratelimit-limit-requests", "1.5", -EINVAL, 0, 0 },
	{ "x-ratelimit-limit-requests", "-1", -EINVAL, 0, 0 },
	{ "x-ratelimit-limit-requests", "12 34", -EINVAL, 0, 0 },
	{ "x-ratelimit-remaining-tokens", "99999999999999999999", -EINVAL, 0, 0 },
	{ "x-ratelimit-remaining-tokens", "9223372036854775807", 1, F(remaining_tokens),
	  INT64_MAX },
	{ "x-ratelimit-remaining-tokens", "1e6", -EINVAL, 0, 0 },
	{ "x-ratelimit-reset-tokens", "5x", -EINVAL, 0, 0 },
	{ "x-ratelimit-reset-tokens", "-5s", -EINVAL, 0, 0 },
	{ "x-ratelimit-reset-tokens", "1.2.3s", -EINVAL, 0, 0 },
	{ "x-ratelimit-reset-tokens", "99999999999999999999s", -EINVAL, 0, 0 },
};

static int64_t field_of(const struct quota_feedback *fb, size_t off)
{
	int64_t v;

	memcpy(&v, (const char *)fb + off, sizeof(v));
	return v;
}

Test(feedback_parse, headers)
{
	for (size_t i = 0; i < sizeof(hdr_cases) / sizeof(hdr_cases[0]); i++) {
		const struct hdr_case *c = &hdr_cases[i];
		struct quota_feedback fb, before;
		int r;

		quota_feedback_init(&fb, sizeof(fb));
		before = fb;
		r = quota_feedback_header(&fb, c->name, c->value);
		cr_expect_eq(r, c->ret, "header(\"%s\", \"%s\") = %d, want %d", c->name, c->value,
			     r, c->ret);
		if (c->ret == 1) {
			cr_expect_eq(field_of(&fb, c->field), c->v,
				     "header(\"%s\", \"%s\") set %lld, want %lld", c->name, c->value,
				     (long long)field_of(&fb, c->field), (long long)c->v);
			/* and nothing else */
			memcpy((char *)&before + c->field, &c->v, sizeof(c->v));
		}
		cr_expect(memcmp(&fb, &before, sizeof(fb)) == 0,
			  "header(\"%s\", \"%s\") touched other fields", c->name, c->value);
	}
}

Test(feedback_parse, header_null_and_long)
{
	struct quota_feedback fb;
	char big[1024];

	quota_feedback_init(&fb, sizeof(fb));
	cr_expect_eq(quota_feedback_header(NULL, "retry-after", "1"), -EINVAL);
	cr_expect_eq(quota_feedback_header(&fb, NULL, "1"), -EINVAL);
	cr_expect_eq(quota_feedback_header(&fb, "retry-after", NULL), -EINVAL);
	cr_expect_eq(fb.retry_after_ns, -1);

	/* A value too long to be real, even if it ends in spaces. */
	memset(big, '1', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	cr_expect_eq(quota_feedback_header(&fb, "x-ratelimit-remaining-tokens", big), -EINVAL);
	memset(big + 100, ' ', sizeof(big) - 101);
	cr_expect_eq(quota_feedback_header(&fb, "x-ratelimit-remaining-tokens", big), -EINVAL);
	cr_expect_eq(fb.remaining_tokens, -1);
}

Test(feedback_parse, init)
{
	struct quota_feedback fb;

	memset(&fb, 0x5a, sizeof(fb));
	quota_feedback_init(&fb, sizeof(fb));
	cr_expect_eq(fb.limit_requests, -1);
	cr_expect_eq(fb.remaining_requests, -1);
	cr_expect_eq(fb.reset_requests_ns, -1);
	cr_expect_eq(fb.limit_tokens, -1);
	cr_expect_eq(fb.remaining_tokens, -1);
	cr_expect_eq(fb.reset_tokens_ns, -1);
	cr_expect_eq(fb.retry_after_ns, -1);
	quota_feedback_init(NULL, 0); /* no crash */
}

/* Every prefix and every one-byte mutation of real values: no crash, and
 * the result is either a value or one of the two documented errors. */
Test(feedback_parse, mutations)
{
	static const char *seeds[] = { "2m59.56s", "1h2m3s", "7.66s", "120ms", "0.5" };
	static const char alphabet[] = "0123456789.hmsun -+xe\xc2\xb5";

	for (size_t k = 0; k < sizeof(seeds) / sizeof(seeds[0]); k++) {
		char buf[32];
		size_t n = strlen(seeds[k]);

		for (size_t pos = 0; pos < n; pos++) {
			for (size_t a = 0; a < sizeof(alphabet) - 1; a++) {
				int64_t ns = -1;
				int r;

				strcpy(buf, seeds[k]);
				buf[pos] = alphabet[a];
				r = quota_parse_duration(buf, &ns);
				cr_expect(r == 0 || r == -EINVAL || r == -ERANGE, "\"%s\": %d", buf,
					  r);
				cr_expect(r != 0 || ns >= 0, "\"%s\": negative %lld", buf,
					  (long long)ns);
			}
			strcpy(buf, seeds[k]);
			buf[pos] = '\0';
			{
				int64_t ns = -1;
				int r = quota_parse_duration(buf, &ns);

				cr_expect(r == 0 || r == -EINVAL, "\"%s\": %d", buf, r);
			}
		}
	}
}
