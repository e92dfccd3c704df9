/* SPDX-License-Identifier: MIT */
/*
 * top-load.c - a steady load for the `quotactl top` test: attaches to a
 * segment and, about once a millisecond, reserves {1, 100, 50} on one quota
 * without waiting. Admitted tickets stay open (in flight) until HOLD of
 * them are, then the oldest is committed; with HOLD 0 each is committed at
 * once. Prints "ready" once attached, and runs until SIGTERM or SIGINT,
 * then closes its handle (quota_close gives back what it holds).
 *
 * Usage: top-load SEGMENT QUOTA [HOLD]
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quota.h"

#define HOLD_MAX 64

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4 || strcmp(argv[1], "--help") == 0) {
		fprintf(argc < 3 ? stderr : stdout, "Usage: top-load SEGMENT QUOTA [HOLD]\n");
		return argc < 3 ? 2 : 0;
	}
	int hold = argc == 4 ? atoi(argv[3]) : 0;
	if (hold < 0 || hold > HOLD_MAX) {
		fprintf(stderr, "top-load: HOLD in [0, %d]\n", HOLD_MAX);
		return 2;
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	quota_client *c;
	int r = quota_open(argv[1], &c);
	if (r < 0) {
		fprintf(stderr, "top-load: quota_open(%s): %s\n", argv[1], quota_strerror(r));
		return 1;
	}
	int q = quota_find(c, argv[2]);
	if (q < 0) {
		fprintf(stderr, "top-load: quota %s: %s\n", argv[2], quota_strerror(q));
		quota_close(c);
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	/* A ring of hold + 1 tickets: reserve into the free one, then commit
	 * the oldest if more than @hold are open. */
	static struct quota_ticket held[HOLD_MAX + 1];
	int n = 0, oldest = 0, ring = hold + 1;
	const struct quota_cost cost = { 1, 100, 50 };
	while (!stop) {
		struct quota_ticket *t = &held[(oldest + n) % ring];
		if (quota_reserve(c, q, &cost, 0, t) == 0 && ++n > hold) {
			quota_commit(c, &held[oldest], &cost);
			oldest = (oldest + 1) % ring;
			n--;
		}
		struct timespec ts = { 0, 1000000 }; /* pacing: ~1,000 attempts/s */
		nanosleep(&ts, NULL);
	}
	quota_close(c);
	return 0;
}
