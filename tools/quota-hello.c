/* SPDX-License-Identifier: MIT */
/*
 * quota-hello.c - the smallest complete libquota client, and the README's
 * example: attach, find a quota, reserve before each (pretend) API call,
 * commit what the response reported.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "quota.h"

static void usage(FILE *f)
{
	fputs("Usage: quota-hello [--segment NAME] [--quota NAME] [-n COUNT] [--input N] [--output N]\n"
	      "Reserve and commit COUNT pretend API calls through libquota and print each result.\n"
	      "  -s, --segment NAME  segment (default: $QUOTA_SEGMENT, else \"quota\")\n"
	      "  -q, --quota NAME    quota (default: llama-4-scout)\n"
	      "  -n COUNT            calls to make (default 5, at most 1000000)\n"
	      "      --input N       prompt tokens per call (default 1000)\n"
	      "      --output N      max_tokens per call (default 500); half is \"used\"\n"
	      "  -h, --help          show this help\n",
	      f);
}

static int number(const char *s, long max, long *ret)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > max)
		return -1;
	*ret = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "segment", required_argument, NULL, 's' }, { "quota", required_argument, NULL, 'q' },
		{ "input", required_argument, NULL, 'i' },   { "output", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },          { 0 },
	};
	const char *segment = NULL, *quota = "llama-4-scout";
	long n = 5, in = 1000, out = 500;
	int o;
	while ((o = getopt_long(argc, argv, "s:q:n:h", opts, NULL)) != -1) {
		switch (o) {
		case 's': segment = optarg; break;
		case 'q': quota = optarg; break;
		case 'n': if (number(optarg, 1000000, &n) < 0) goto bad; break;
		case 'i': if (number(optarg, 1L << 40, &in) < 0) goto bad; break;
		case 'o': if (number(optarg, 1L << 40, &out) < 0) goto bad; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	quota_client *c;
	int r = quota_open(segment, &c);
	if (r < 0) {
		fprintf(stderr, "quota-hello: quota_open: %s\n", quota_strerror(r));
		return 1;
	}
	int id = quota_find(c, quota);
	if (id < 0) {
		fprintf(stderr, "quota-hello: quota %s: %s\n", quota, quota_strerror(id));
		quota_close(c);
		return 1;
	}
	for (long i = 0; i < n; i++) {
		struct quota_ticket t;
		struct quota_cost est = { 1, (uint64_t)in, (uint64_t)out };
		r = quota_reserve(c, id, &est, 2000000000LL, &t);
		if (r < 0) {
			printf("call %ld: refused: %s (retry after %.3f s)\n", i + 1, quota_strerror(r),
			       r == -EAGAIN ? t.retry_after_ns / 1e9 : 0.0);
			continue;
		}
		/* ... the API call would happen here ... */
		struct quota_cost used = { 1, (uint64_t)in, (uint64_t)out / 2 };
		r = quota_commit(c, &t, &used);
		printf("call %ld: admitted after %.3f ms, committed %ld+%ld tokens: %s\n", i + 1,
		       t.waited_ns / 1e6, in, out / 2, quota_strerror(r));
	}
	quota_close(c);
	return 0;
bad:
	fprintf(stderr, "quota-hello: bad number: %s\n", optarg);
	return 2;
}
