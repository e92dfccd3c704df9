/* SPDX-License-Identifier: MIT */
/* v2lib.c - see v2lib.h. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ctllib.h"
#include "v2lib.h"

int64_t v2_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * V2_S + ts.tv_nsec;
}

uint64_t v2_rand(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ULL;
	x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

void v2_print_timings(const char *what, int64_t *ns, size_t n)
{
	if (n == 0) {
		printf("%s: no samples\n", what);
		return;
	}
	qsort(ns, n, sizeof(ns[0]), cmp_i64);
	size_t p95 = (n * 95 + 99) / 100;
	printf("%s: n=%zu median %.3f ms, p95 %.3f ms, max %.3f ms (min %.3f ms)\n", what, n,
	       ns[n / 2] / 1e6, ns[p95 ? p95 - 1 : 0] / 1e6, ns[n - 1] / 1e6, ns[0] / 1e6);
	fflush(stdout);
}

int64_t v2_runq_ns(void)
{
	static __thread int fd = -2;
	if (fd == -2)
		fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	char buf[128];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	unsigned long long run, wait;
	if (sscanf(buf, "%llu %llu", &run, &wait) != 2)
		return -1;
	return (int64_t)wait;
}

double v2_metric(const char *sock, const char *name)
{
	char *reply = cl_request(sock, "{\"cmd\":\"metrics\"}");
	if (!reply)
		return -1;
	cJSON *root = cJSON_Parse(reply);
	free(reply);
	const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
	double v = -1;
	size_t len = strlen(name);
	if (cJSON_IsString(text)) {
		for (const char *p = text->valuestring; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
			if (strncmp(p, name, len) == 0 && p[len] == ' ') {
				v = strtod(p + len + 1, NULL);
				break;
			}
		}
	}
	cJSON_Delete(root);
	return v;
}

long v2_env_long(const char *name, long def)
{
	const char *s = getenv(name);
	if (!s || !*s)
		return def;
	char *end;
	long v = strtol(s, &end, 10);
	return *end ? def : v;
}

void v2_spin(int64_t ns)
{
	int64_t until = v2_now() + ns;
	while (v2_now() < until)
		;
}
