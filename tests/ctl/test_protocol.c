/* SPDX-License-Identifier: MIT */
/*
 * test_protocol.c - a deterministic mutation fuzzer for the control
 * protocol: tens of thousands of requests derived from valid ones (bytes
 * flipped, inserted, deleted, spliced) go through qd_control_handle() on a
 * real segment, privileged and not. Every reply must be exactly one line of
 * JSON, an object whose "ok" is a boolean; unprivileged requests never
 * change the segment. Run under ASan+UBSan by the suite's sanitizer pass.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>

#include "ctllib.h"
#include "quotad.h"

#define ROUNDS 30000

static const char *seeds[] = {
	"{\"cmd\":\"status\"}",
	"{\"cmd\":\"clients\"}",
	"{\"cmd\":\"metrics\"}",
	"{\"cmd\":\"backoff\",\"quota\":\"q\",\"seconds\":1.5}",
	"{\"cmd\":\"backoff\",\"quota\":\"nosuch\",\"seconds\":2}",
	"{\"cmd\":\"reload\"}",
	"{\"cmd\":\"set\",\"quota\":\"q\",\"key\":\"rpm\",\"value\":120}",
	"{\"cmd\": \"status\", \"extra\": [1, 2, {\"x\": null}]}",
	"[\"cmd\", \"status\"]",
	"\"status\"",
};

static const char alphabet[] = "{}[]\":,.-+0123456789eEtrufalsn \\\t\x01\xff\xc3\xa9";

static size_t mutate(char *buf, size_t len, size_t cap, uint64_t *x)
{
	int n = 1 + (int)(*x % 4);
	for (int i = 0; i < n; i++) {
		*x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
		size_t at = len ? (size_t)(*x >> 8) % (len + 1) : 0;
		switch ((*x >> 4) % 5) {
		case 0: /* flip */
			if (len && at < len)
				buf[at] ^= (char)(1u << ((*x >> 32) % 8));
			break;
		case 1: /* insert */
			if (len + 1 < cap) {
				memmove(buf + at + 1, buf + at, len - at);
				buf[at] = alphabet[(*x >> 40) % (sizeof(alphabet) - 1)];
				len++;
			}
			break;
		case 2: /* delete a run */
			if (at < len) {
				size_t k = 1 + (*x >> 40) % 8;
				if (k > len - at)
					k = len - at;
				memmove(buf + at, buf + at + k, len - at - k);
				len -= k;
			}
			break;
		case 3: { /* splice another seed in */
			const char *s = seeds[(*x >> 40) % (sizeof(seeds) / sizeof(seeds[0]))];
			size_t k = strlen(s) / 2;
			if (len + k < cap) {
				memmove(buf + at + k, buf + at, len - at);
				memcpy(buf + at, s + (*x >> 50) % (strlen(s) - k + 1), k);
				len += k;
			}
			break;
		}
		default: /* a huge number or a long string */
			if (len + 40 < cap) {
				memmove(buf + at + 24, buf + at, len - at);
				memcpy(buf + at, (*x >> 45) & 1 ? "1e999999999999999999999" : "\"aaaaaaaaaaaaaaaaaaaaaa\"",
				       24);
				len += 24;
			}
			break;
		}
	}
	return len;
}

static void check_reply(const char *reply, const char *req, size_t len)
{
	cr_assert(reply, "no reply to %.*s", (int)len, req);
	size_t n = strlen(reply);
	cr_assert(n > 0 && reply[n - 1] == '\n' && memchr(reply, '\n', n - 1) == NULL,
		  "reply is not one line: %s", reply);
	cJSON *r = cJSON_Parse(reply);
	cr_assert(cJSON_IsObject(r) && cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(r, "ok")),
		  "reply is not {\"ok\": bool, ...}: %s", reply);
	cJSON_Delete(r);
}

Test(protocol, mutated_requests_get_one_json_line, .timeout = 120)
{
	struct cl_env e;
	cl_env(&e, "pf");
	char err[512];
	cr_assert_eq(qd_create_segment_json("{\"quotas\": {\"q\": {\"rpm\": 60}}}", e.seg, err, sizeof(err)), 0,
		     "%s", err);
	quota_client *c = cl_open(e.seg);
	static struct daemon d;
	d.g = c->g; /* the validated geometry, as quotad holds it */
	d.h = c->g.h;
	d.obs = c;
	cr_assert_eq(qd_pub_init(&d), 0, "what the segment publishes");
	snprintf(d.segment, sizeof(d.segment), "/%s", e.seg);
	/* reload applies this file: the same quota, so the segment stays usable */
	d.config_path = cl_file(&e, "q.json", "{\"quotas\": {\"q\": {\"rpm\": 60}}}");
	d.lfd = d.segfd = d.sigfd = -1;

	/* quotad logs what it does (backoffs, reloads): keep it out of the way */
	int saved = dup(2), null = open("/dev/null", O_WRONLY);
	dup2(null, 2);
	char buf[4096];
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	uint64_t gen0 = atomic_load(&d.h->generation);
	for (int round = 0; round < ROUNDS; round++) {
		const char *seed = seeds[round % (sizeof(seeds) / sizeof(seeds[0]))];
		size_t len = strlen(seed);
		memcpy(buf, seed, len);
		if (round >= (int)(sizeof(seeds) / sizeof(seeds[0])))
			len = mutate(buf, len, sizeof(buf), &x);
		bool privileged = round & 1;
		int64_t paused = atomic_load(&qc_quota(c, 0)->paused_until);
		uint64_t gen = atomic_load(&d.h->generation);
		uint64_t cfgw = atomic_load(&qc_quota(c, 0)->cfg), idxw = atomic_load(&d.h->index_word);
		char *reply = qd_control_handle(&d, buf, len, privileged);
		check_reply(reply, buf, len);
		if (!privileged) {
			cr_assert_eq(atomic_load(&qc_quota(c, 0)->paused_until), paused, "unprivileged backoff: %.*s",
				     (int)len, buf);
			cr_assert_eq(atomic_load(&d.h->generation), gen, "unprivileged reload: %.*s", (int)len, buf);
			cr_assert_eq(atomic_load(&qc_quota(c, 0)->cfg), cfgw, "unprivileged config change: %.*s",
				     (int)len, buf);
			cr_assert_eq(atomic_load(&d.h->index_word), idxw, "unprivileged index change: %.*s",
				     (int)len, buf);
		}
		free(reply);
	}
	dup2(saved, 2);
	close(saved);
	close(null);
	fprintf(stderr, "control protocol: %d requests, %llu reloads applied, %llu publications, every reply "
		"one JSON line\n", ROUNDS, (unsigned long long)d.st.reloads_ok,
		(unsigned long long)(atomic_load(&d.h->generation) - gen0));
	cr_assert_eq(quota_find(c, "q"), 0, "the segment is still whole");
	struct qs_config cfg;
	cr_assert_eq(qs_config_get(&c->g, 0, &cfg, NULL), 0, "its config record is readable");
	qd_pub_free(&d);
	quota_close(c);
}
