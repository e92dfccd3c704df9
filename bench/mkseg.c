/* SPDX-License-Identifier: MIT */
/*
 * mkseg.c - qbench-mkseg NAME: create the segment /NAME from the quotad JSON
 * config read on stdin, through quotad's own parser and segment setup
 * (qd_create_segment_json), ready to use, and exit. quota-bench runs it so
 * that the bench itself links only the shared libquota a worker links; the
 * bench removes the segment. Exit 0, 1 on a refused config or failure (with
 * quotad's message on stderr), 2 on bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int main(int argc, char **argv)
{
	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("Usage: qbench-mkseg NAME < config.json\n"
		       "Create the segment /NAME from the quotad JSON config on stdin, through\n"
		       "quotad's own parser and segment setup, and exit (the segment stays: its\n"
		       "creator removes it). See quota-bench(1).\n");
		return 0;
	}
	if (argc != 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: qbench-mkseg NAME < config.json (--help for more)\n");
		return 2;
	}
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (!buf)
			return 1;
		size_t n = fread(buf + len, 1, cap - len - 1, stdin);
		len += n;
		if (n == 0)
			break;
		if (len + 1 == cap) {
			cap *= 2;
			char *nb = realloc(buf, cap);
			if (!nb)
				free(buf);
			buf = nb;
		}
	}
	buf[len] = 0;
	char err[1024] = "";
	int r = qd_create_segment_json(buf, argv[1], err, sizeof(err));
	free(buf);
	if (r < 0) {
		fprintf(stderr, "qbench-mkseg: %s: %s (%s)\n", argv[1], err, strerror(-r));
		return 1;
	}
	return 0;
}
