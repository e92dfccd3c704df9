/* SPDX-License-Identifier: MIT */
/*
 * proxy_bench.c - the latency quota-proxy adds: the same small chat
 * completion sent to a local upstream directly and through the proxy,
 * sequentially (one client) and from C concurrent clients, each on a
 * keep-alive libcurl handle; prints p50/p99 of both and their difference.
 * bench/proxy-bench.sh starts quotad, quota-sim (no latency, no limits) and
 * the proxy, and runs this. Figures, never assertions.
 *
 * Usage: proxy-bench DIRECT-URL PROXY-URL [REQUESTS-PER-CLIENT [CLIENTS]]
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* Run @clients clients of @n requests on @url; p50 and p99 in *@p. */
static int run(const char *url, int clients, int n, double p[2])
{
	pthread_t *t = calloc((size_t)clients, sizeof(*t));
	struct job *j = calloc((size_t)clients, sizeof(*j));
	int64_t *all = calloc((size_t)clients * (size_t)n, sizeof(*all));
	int errors = 0;

	if (!t || !j || !all)
		return -1;
	for (int i = 0; i < clients; i++) {
		j[i] = (struct job){ url, n, all + (size_t)i * (size_t)n, 0 };
		pthread_create(&t[i], NULL, client, &j[i]);
	}
	for (int i = 0; i < clients; i++) {
		pthread_join(t[i], NULL);
		errors += j[i].errors;
	}
	/* The first tenth of each client's requests warms connections up. */
	qsort(all, (size_t)clients * (size_t)n, sizeof(*all), cmp);
	p[0] = (double)all[(size_t)clients * (size_t)n / 2] / 1e3;
	p[1] = (double)all[(size_t)clients * (size_t)n * 99 / 100] / 1e3;
	free(t);
	free(j);
	free(all);
	return errors;
}

int main(int argc, char **argv)
{
	int n = argc > 3 ? atoi(argv[3]) : 2000, conc = argc > 4 ? atoi(argv[4]) : 64;

	if (argc < 3 || n < 10 || conc < 1) {
		fprintf(stderr, "usage: proxy-bench DIRECT-URL PROXY-URL [REQUESTS [CLIENTS]]\n");
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	printf("%-28s %12s %12s %12s %12s\n", "scenario", "direct p50", "proxy p50", "direct p99",
	       "proxy p99");
	for (int k = 0; k < 2; k++) {
		int clients = k ? conc : 1, per = k ? (n / 8 > 10 ? n / 8 : 10) : n;
		double d[2], p[2];
		int e = run(argv[1], clients, per, d) + run(argv[2], clients, per, p);
		char name[64];

		snprintf(name, sizeof(name), "%d client%s x %d requests", clients, clients > 1 ? "s" : "",
			 per);
		printf("%-28s %9.0f us %9.0f us %9.0f us %9.0f us   added: p50 %.0f us, p99 %.0f us%s\n",
		       name, d[0], p[0], d[1], p[1], p[0] - d[0], p[1] - d[1],
		       e ? "  (errors!)" : "");
	}
	curl_global_cleanup();
	return 0;
}
