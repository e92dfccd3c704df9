/* SPDX-License-Identifier: MIT */
/*
 * proxy_bench.c - the latency quota-proxy adds: the same small chat
 * completion sent to a local upstream directly and through the proxy,
 * sequentially (one client) and from C concurrent clients, each on a
 * keep-alive libcurl handle; prints p50/p99 of each and the difference. An
 * optional third URL is a baseline proxy (another build) measured in the
 * same run. The targets take turns, ten rounds each, so that the machine's
 * load drifting during the run weighs on all of them alike.
 * bench/proxy-bench.sh starts quotad, quota-sim (no latency, no limits) and
 * the proxies, and runs this. Figures, never assertions.
 *
 * Usage: proxy-bench DIRECT-URL PROXY-URL [REQUESTS-PER-CLIENT [CLIENTS
 *        [BASELINE-PROXY-URL]]]
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../tools/opt.h"

static const char body[] = "{\"model\":\"bench\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\","
			   "\"content\":\"Say hello.\"}]}";

struct job {
	const char *url;
	int n;
	int64_t *lat; /* ns, n of them */
	int errors;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static size_t sink(char *p, size_t s, size_t n, void *u)
{
	(void)p;
	(void)u;
	return s * n;
}

static void *client(void *arg)
{
	struct job *j = arg;
	CURL *c = curl_easy_init();
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	long status;

	h = curl_slist_append(h, "Authorization: Bearer sk-bench");
	h = curl_slist_append(h, "Expect:");
	curl_easy_setopt(c, CURLOPT_URL, j->url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	for (int i = 0; i < j->n; i++) {
		int64_t t = now_ns();

		if (curl_easy_perform(c) != CURLE_OK ||
		    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK || status != 200)
			j->errors++;
		j->lat[i] = now_ns() - t;
	}
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	return NULL;
}

static int cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

/* Run @clients clients of @n requests on @url, latencies into @lat. */
static int run(const char *url, int clients, int n, int64_t *lat)
{
	pthread_t *t = calloc((size_t)clients, sizeof(*t));
	struct job *j = calloc((size_t)clients, sizeof(*j));
	int errors = 0;

	if (!t || !j)
		return -1;
	for (int i = 0; i < clients; i++) {
		j[i] = (struct job){ url, n, lat + (size_t)i * (size_t)n, 0 };
		pthread_create(&t[i], NULL, client, &j[i]);
	}
	for (int i = 0; i < clients; i++) {
		pthread_join(t[i], NULL);
		errors += j[i].errors;
	}
	free(t);
	free(j);
	return errors;
}

#define TARGETS_MAX 3
#define ROUNDS 10

static void usage(FILE *f)
{
	fprintf(f, "Usage: quota-proxy-bench DIRECT-URL PROXY-URL [REQUESTS [CLIENTS [BASELINE-PROXY-URL]]]\n"
		   "The latency quota-proxy adds: one small chat completion sent to DIRECT-URL and\n"
		   "through PROXY-URL (and BASELINE-PROXY-URL, another build), sequentially and\n"
		   "from CLIENTS concurrent clients (default 64, at most 1024), REQUESTS per client\n"
		   "(default 2000, %d to 1000000), in %d alternating rounds; prints p50/p99 and the\n"
		   "difference. bench/proxy-bench.sh starts the servers. See quota-bench(1).\n",
		10 * ROUNDS, ROUNDS);
}

int main(int argc, char **argv)
{
	static const char *const names[TARGETS_MAX] = { "direct", "proxy", "baseline" };

	if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		usage(stdout);
		return 0;
	}
	if (argc < 3 || argc > 6) {
		usage(stderr);
		return 2;
	}
	int n = argc > 3 ? (int)tool_opt_uint("quota-proxy-bench", "REQUESTS", argv[3], 10 * ROUNDS, 1000000) : 2000;
	int conc = argc > 4 ? (int)tool_opt_uint("quota-proxy-bench", "CLIENTS", argv[4], 1, 1024) : 64;
	const char *url[TARGETS_MAX] = { argv[1], argv[2], argc > 5 ? argv[5] : NULL };
	int targets = url[2] ? 3 : 2;

	int failed = 0, sent = 0;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	printf("%-26s %-9s %9s %9s %11s %11s\n", "scenario", "target", "p50", "p99", "added p50",
	       "added p99");
	for (int k = 0; k < 2; k++) {
		int clients = k ? conc : 1, per = k ? (n / 8 > 10 * ROUNDS ? n / 8 : 10 * ROUNDS) : n;
		int round_n = per / ROUNDS, total = clients * round_n * ROUNDS;

		sent += clients * (round_n + 1) * ROUNDS;
		int64_t *lat[TARGETS_MAX] = { 0 };
		double p[TARGETS_MAX][2];
		int errors[TARGETS_MAX] = { 0 };
		char name[64];

		for (int t = 0; t < targets; t++)
			lat[t] = calloc((size_t)total, sizeof(int64_t));
		/* Rounds interleave the targets, so that a change in the
		 * machine's load during the run weighs on all of them alike.
		 * Each client's connection is new each round: warm it up with
		 * the round's first request, not counted. */
		for (int r = 0; r < ROUNDS; r++)
			for (int t = 0; t < targets; t++) {
				int64_t *tmp = calloc((size_t)clients * (size_t)(round_n + 1), sizeof(int64_t));

				errors[t] += run(url[t], clients, round_n + 1, tmp);
				for (int c = 0; c < clients; c++)
					memcpy(lat[t] + ((size_t)r * (size_t)clients + (size_t)c) * (size_t)round_n,
					       tmp + (size_t)c * (size_t)(round_n + 1) + 1,
					       (size_t)round_n * sizeof(int64_t));
				free(tmp);
			}
		snprintf(name, sizeof(name), "%d client%s x %d requests", clients, clients > 1 ? "s" : "",
			 round_n * ROUNDS);
		for (int t = 0; t < targets; t++) {
			failed |= errors[t] != 0;
			qsort(lat[t], (size_t)total, sizeof(int64_t), cmp);
			p[t][0] = (double)lat[t][total / 2] / 1e3;
			p[t][1] = (double)lat[t][(size_t)total * 99 / 100] / 1e3;
			if (t == 0)
				printf("%-26s %-9s %6.0f us %6.0f us%s\n", name, names[t], p[t][0], p[t][1],
				       errors[t] ? "  (errors!)" : "");
			else
				printf("%-26s %-9s %6.0f us %6.0f us %8.0f us %8.0f us%s\n", "", names[t],
				       p[t][0], p[t][1], p[t][0] - p[0][0], p[t][1] - p[0][1],
				       errors[t] ? "  (errors!)" : "");
			free(lat[t]);
		}
	}
	printf("requests per target: %d\n", sent);
	curl_global_cleanup();
	return failed; /* 1: a request failed (the figures are still printed) */
}
