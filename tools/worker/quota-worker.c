/* SPDX-License-Identifier: MIT */
/*
 * quota-worker.c - a real LLM API worker: it sends chat completion requests
 * one after another, and before each one reserves its budget from libquota's
 * shared segment, so that every worker on the host together stays within the
 * provider's limits. With --naive it does what workers do without libquota:
 * send, and on 429 sleep a fixed 5 s and retry.
 *
 * Per request (libquota mode):
 *   estimate prompt tokens (tools/common/estimate.c, conservative against
 *   real BPE; --estimate sim-rule: quota-sim's 4 + ceil(bytes/4) per message,
 *   for a simulator run without --vocab) -> quota_reserve({1, prompt,
 *   max_tokens}, timeout) -> POST ->
 *   200: quota_commit({1, usage.prompt_tokens, usage.completion_tokens});
 *   429: quota_backoff(retry-after) + quota_feedback_apply(headers),
 *        quota_cancel, retry; transport error: quota_cancel (or, if the
 *        request had gone out in full, commit the estimate), retry.
 *
 * Every request is logged as one CSV line (see quota-worker(1)), with
 * CLOCK_MONOTONIC nanosecond times that compare across processes.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "estimate.h"
#include "httpbody.h"
#include "opt.h"
#include "quota.h"

#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)
#define BODY_MAX (16u << 20)       /* largest response body read */
#define TRANSPORT_RETRIES 5        /* transport errors before giving up a request */

/* Log status codes beside HTTP statuses. */
#define ST_ABANDONED 0   /* the run's deadline or a signal came first */
#define ST_TRANSPORT -1  /* transport errors TRANSPORT_RETRIES times in a row */
#define ST_TOO_BIG -2    /* quota_reserve: -E2BIG */
#define ST_BUDGET -3     /* quota_reserve: -EDQUOT */

static struct config {
	char url[1024];
	const char *key, *model, *quota, *segment, *log_path;
	uint64_t requests;
	int64_t duration_ns, reserve_timeout_ns, naive_sleep_ns;
	uint64_t prompt_min, prompt_max, max_tokens, seed;
	int id, naive, feedback, quiet;
	int sim_rule; /* --estimate sim-rule */
	int auto_estimate; /* --auto-estimate: reserve 0 output tokens (the learned estimate) */
	int64_t retry_max_ns; /* --retry-max: sleep at most this long after -EAGAIN (0: retry_after) */
} cfg = {
	.key = NULL,
	.model = NULL,
	.quota = "llama-4-scout",
	.segment = NULL,
	.log_path = NULL,
	.requests = 0,
	.duration_ns = 0,
	.reserve_timeout_ns = 60 * NS_PER_S,
	.naive_sleep_ns = 5 * NS_PER_S,
	.prompt_min = 100,
	.prompt_max = 700,
	.max_tokens = 1000,
	.seed = 1,
	.id = 0,
};

static volatile sig_atomic_t stopping;

/* SIGTERM/SIGINT: end the run at the next check (sleeps are cut short). */
static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

/* CLOCK_MONOTONIC in nanoseconds, the log's time line. */
static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Sleep @ns (a signal cuts it short). */
static void sleep_ns(int64_t ns)
{
	struct timespec ts;

	if (ns <= 0)
		return;
	ts.tv_sec = ns / NS_PER_S;
	ts.tv_nsec = ns % NS_PER_S;
	nanosleep(&ts, NULL);
}

/* One warning line on stderr, unless --quiet. */
static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn(const char *fmt, ...)
{
	va_list ap;

	if (cfg.quiet)
		return;
	va_start(ap, fmt);
	fprintf(stderr, "quota-worker[%d]: ", cfg.id);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* Report what quota_feedback_apply() said: an error, or (once) that the
 * provider enforces a lower limit than the quota is configured with. */
static void feedback_result(int ret)
{
	static bool told;

	if (ret < 0)
		warn("quota_feedback_apply: %s", quota_strerror(ret));
	else if (ret == 1 && !told) {
		told = true;
		warn("the provider reports a lower rate limit than the quota's configuration: "
		     "fix the configuration (feedback can only tighten what is left now)");
	}
}

/* splitmix64: reproducible prompt sizes from --seed. */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* ---- HTTP ------------------------------------------------------------- */

struct http {
	CURL *curl;
	struct curl_slist *headers;
	char *body;
	size_t len, cap;
	int overflow;
	struct quota_feedback fb;
	int bad_headers; /* rate-limit headers quota_feedback_header refused */
	int body_sent;   /* after a transport error: the whole request went out */
};

/* libcurl write callback: the response body, up to BODY_MAX; past it, read
 * and dropped (the request fails as unparsable). */
static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct http *h = arg;
	size_t bytes = size * n;

	if (httpbody_append(&h->body, &h->len, &h->cap, &h->overflow, BODY_MAX, data, bytes) < 0)
		return 0; /* curl reports a write error */
	return bytes;
}

/* One header line: "Name: value\r\n". Folds rate-limit headers into h->fb. */
static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
	struct http *h = arg;
	size_t bytes = size * n, nl, vl;
	char name[128], value[256];
	const char *colon;

	if (bytes >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		/* A new response (after a 100 Continue, say): start over. */
		quota_feedback_init(&h->fb, sizeof(h->fb));
		h->bad_headers = 0;
		return bytes;
	}
	colon = memchr(data, ':', bytes);
	if (!colon)
		return bytes;
	nl = (size_t)(colon - data);
	vl = bytes - nl - 1;
	if (nl == 0 || nl >= sizeof(name) || vl >= sizeof(value))
		return bytes;
	memcpy(name, data, nl);
	name[nl] = '\0';
	memcpy(value, colon + 1, vl);
	value[vl] = '\0';
	if (quota_feedback_header(&h->fb, name, value) < 0)
		h->bad_headers++;
	return bytes;
}

/* libcurl progress callback: aborts the transfer once a signal came. */
static int on_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	(void)arg;
	(void)a;
	(void)b;
	(void)c;
	(void)d;
	return stopping ? 1 : 0; /* non-zero aborts the transfer */
}

/* One keep-alive libcurl handle for the whole run. */
static int http_init(struct http *h)
{
	char auth[512];

	memset(h, 0, sizeof(*h));
	h->curl = curl_easy_init();
	if (!h->curl)
		return -ENOMEM;
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", cfg.key);
	h->headers = curl_slist_append(h->headers, "Content-Type: application/json");
	h->headers = curl_slist_append(h->headers, auth);
	h->headers = curl_slist_append(h->headers, "Expect:"); /* no 100-continue round trip */
	if (!h->headers)
		return -ENOMEM;
	curl_easy_setopt(h->curl, CURLOPT_URL, cfg.url);
	curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, h->headers);
	curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, h);
	curl_easy_setopt(h->curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h->curl, CURLOPT_HEADERDATA, h);
	curl_easy_setopt(h->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h->curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h->curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, 600000L);
	return 0;
}

/* Free what http_init() set up. */
static void http_free(struct http *h)
{
	curl_easy_cleanup(h->curl);
	curl_slist_free_all(h->headers);
	free(h->body);
}

/* POST @req; returns the HTTP status, or -1 on a transport error. */
static long http_post(struct http *h, const char *req, size_t req_len)
{
	long status = 0;
	CURLcode rc;

	h->len = 0;
	h->overflow = 0;
	h->bad_headers = 0;
	h->body_sent = 0;
	quota_feedback_init(&h->fb, sizeof(h->fb));
	curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, req);
	curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req_len);
	rc = curl_easy_perform(h->curl);
	if (rc != CURLE_OK) {
		curl_off_t up = 0;

		/* Sent in full, the provider may have counted it even if we never
		 * saw the answer. */
		if (curl_easy_getinfo(h->curl, CURLINFO_SIZE_UPLOAD_T, &up) == CURLE_OK &&
		    up >= (curl_off_t)req_len)
			h->body_sent = 1;
		if (!stopping)
			warn("POST %s: %s", cfg.url, curl_easy_strerror(rc));
		return -1;
	}
	curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
	return status;
}

/* usage.prompt_tokens and usage.completion_tokens of a 200 body. */
static int parse_usage(const struct http *h, uint64_t *prompt, uint64_t *completion)
{
	cJSON *root, *usage, *p, *c;
	int ret = -EBADMSG;

	if (h->overflow || !h->body)
		return -EBADMSG;
	root = cJSON_ParseWithLength(h->body, h->len);
	usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
	p = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
	c = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
	if (cJSON_IsNumber(p) && cJSON_IsNumber(c) && p->valuedouble >= 0 &&
	    c->valuedouble >= 0 && p->valuedouble < 1e12 && c->valuedouble < 1e12) {
		*prompt = (uint64_t)p->valuedouble;
		*completion = (uint64_t)c->valuedouble;
		ret = 0;
	}
	cJSON_Delete(root);
	return ret;
}

/* ---- one request ------------------------------------------------------ */

struct record {
	uint64_t seq;
	int64_t start_ns, admit_ns, sent_ns, end_ns, reserve_waited_ns;
	long status;
	unsigned attempts, n429;
	uint64_t prompt_tokens, completion_tokens;
};

/*
 * The request body: one user message of 4 * (prompt - 4) bytes, so that the
 * documented rule counts exactly @prompt tokens. Returns its length.
 */
static char *make_body(uint64_t prompt, size_t *len)
{
	static const char words[] = "the quick brown fox jumps over a lazy dog ";
	size_t content = (size_t)(4 * (prompt - 4)), cap = content + 512, n;
	char *b = malloc(cap);

	if (!b)
		return NULL;
	n = (size_t)snprintf(b, cap,
			     "{\"model\":\"%s\",\"max_tokens\":%" PRIu64
			     ",\"messages\":[{\"role\":\"user\",\"content\":\"",
			     cfg.model, cfg.max_tokens);
	for (size_t i = 0; i < content; i++)
		b[n + i] = words[i % (sizeof(words) - 1)];
	n += content;
	n += (size_t)snprintf(b + n, cap - n, "\"}]}");
	*len = n;
	return b;
}

/*
 * Prompt tokens to reserve for @body: the estimator's count (conservative
 * against real BPE), or with --estimate sim-rule the size the body was made
 * for (@sim_prompt, exact under quota-sim's rule). 0 if the body does not
 * parse (a bug: it is ours).
 */
static uint64_t estimate_prompt(const char *body, size_t len, uint64_t sim_prompt)
{
	cJSON *root;
	uint64_t t = 0;
	char err[256];

	if (cfg.sim_rule)
		return sim_prompt;
	root = cJSON_ParseWithLength(body, len);
	if (est_request(root, EST_CHAT, &t, err, sizeof(err)) < 0)
		warn("estimating the prompt: %s", err);
	cJSON_Delete(root);
	return t;
}

/* The deadline of the run (INT64_MAX when there is none). */
static int64_t deadline_ns;

/* Nanoseconds until the run's deadline (INT64_MAX: none). */
static int64_t time_left(void)
{
	return deadline_ns == INT64_MAX ? INT64_MAX : deadline_ns - now_ns();
}

/* Naive mode: send; on 429 or a transport error sleep a fixed time, retry. */
static void run_naive(struct http *h, const char *body, size_t len, struct record *r)
{
	for (;;) {
		long st;

		if (stopping || time_left() <= 0) {
			r->status = ST_ABANDONED;
			return;
		}
		r->sent_ns = now_ns();
		r->attempts++;
		st = http_post(h, body, len);
		if (st == 200) {
			if (parse_usage(h, &r->prompt_tokens, &r->completion_tokens) < 0)
				warn("request %" PRIu64 ": no usage in the response", r->seq);
			r->status = 200;
			return;
		}
		if (st != 429 && st != -1) {
			r->status = st;
			return;
		}
		if (st == 429)
			r->n429++;
		sleep_ns(cfg.naive_sleep_ns < time_left() ? cfg.naive_sleep_ns : time_left());
	}
}

static quota_client *qc;
static int qid;

/* quota_reserve @cost; with --auto-estimate, the quota's learned estimate of
 * the output instead, bounded by max_tokens. */
static int reserve(struct quota_cost *cost, int64_t timeout, struct quota_ticket *t)
{
	if (cfg.auto_estimate) {
		struct quota_reserve_opts o;

		quota_reserve_opts_init(&o, sizeof(o));
		o.max_output_tokens = cfg.max_tokens;
		cost->output_tokens = 0;
		return quota_reserve_ex(qc, qid, cost, timeout, &o, t);
	}
	return quota_reserve(qc, qid, cost, timeout, t);
}

/* After -EAGAIN: sleep until the ticket's retry_after, at most --retry-max. */
static void wait_retry(const struct quota_ticket *t)
{
	int64_t d = t->retry_after_ns > 0 ? t->retry_after_ns : NS_PER_MS;

	/* refunds may free budget before retry_after: look again sooner */
	if (cfg.retry_max_ns && d > cfg.retry_max_ns)
		d = cfg.retry_max_ns;

	sleep_ns(d < time_left() ? d : time_left());
}

/* 200: commit the usage the answer reports (the estimate if it reports
 * none), and with --feedback fold its rate-limit headers. */
static void on_served(struct http *h, struct quota_ticket *t, uint64_t prompt, struct record *r)
{
	struct quota_cost used = { 1, prompt, cfg.max_tokens };
	int ret;

	if (parse_usage(h, &used.input_tokens, &used.output_tokens) < 0)
		warn("request %" PRIu64 ": no usage in the response; committing the "
		     "estimate", r->seq);
	ret = quota_commit(qc, t, &used);
	if (ret < 0)
		warn("quota_commit: %s", quota_strerror(ret));
	if (cfg.feedback) {
		ret = quota_feedback_apply(qc, qid, &h->fb);
		feedback_result(ret);
	}
	r->prompt_tokens = used.input_tokens;
	r->completion_tokens = used.output_tokens;
	r->status = 200;
}

/* 429: the provider did not count it: give it all back, and make the whole
 * host wait as long as the provider says. */
static void on_throttled(struct http *h, struct quota_ticket *t, struct record *r)
{
	int64_t ra = h->fb.retry_after_ns >= 0 ? h->fb.retry_after_ns : NS_PER_S;
	int ret;

	r->n429++;
	if (h->bad_headers)
		warn("429 with %d malformed rate-limit header(s)", h->bad_headers);
	ret = quota_backoff(qc, qid, ra);
	if (ret < 0)
		warn("quota_backoff: %s", quota_strerror(ret));
	ret = quota_feedback_apply(qc, qid, &h->fb);
	feedback_result(ret);
	quota_cancel(qc, t);
}

/* Any other end of the exchange (HTTP @st, or -1: a transport error): give
 * the reservation back, unless the request reached the provider and the
 * answer was lost: it may have been charged, so settle at the estimate
 * rather than give back what may be spent. */
static void on_failed(const struct http *h, struct quota_ticket *t, uint64_t prompt, long st)
{
	if (st == -1 && h->body_sent) {
		struct quota_cost est = { 1, prompt, cfg.max_tokens };

		quota_commit(qc, t, &est);
	} else {
		quota_cancel(qc, t);
	}
}

/* libquota mode: reserve, send, commit; on 429 back off, cancel, retry. */
static int run_quota(struct http *h, const char *body, size_t len, uint64_t prompt,
		     struct record *r)
{
	struct quota_cost cost = { 1, prompt, cfg.max_tokens };
	unsigned transport_errors = 0;

	for (;;) {
		struct quota_ticket t;
		int64_t left = time_left();
		long st;
		int ret;

		if (stopping || left <= 0) {
			r->status = ST_ABANDONED;
			return 0;
		}
		ret = reserve(&cost, cfg.reserve_timeout_ns < left ? cfg.reserve_timeout_ns : left, &t);
		if (ret == -EAGAIN) {
			wait_retry(&t);
			continue;
		}
		if (ret == -E2BIG || ret == -EDQUOT) {
			warn("request %" PRIu64 " (%" PRIu64 " + %" PRIu64 " tokens): %s", r->seq,
			     prompt, cfg.max_tokens, quota_strerror(ret));
			r->status = ret == -E2BIG ? ST_TOO_BIG : ST_BUDGET;
			return ret == -EDQUOT ? ret : 0;
		}
		if (ret < 0) {
			warn("quota_reserve: %s", quota_strerror(ret));
			return ret;
		}
		r->reserve_waited_ns += t.waited_ns;
		r->admit_ns = quota_ticket_time(&t);
		r->sent_ns = now_ns();
		r->attempts++;
		st = http_post(h, body, len);
		if (st == 200) {
			on_served(h, &t, prompt, r);
			return 0;
		}
		if (st == 429) {
			on_throttled(h, &t, r);
			continue;
		}
		on_failed(h, &t, prompt, st);
		if (st == -1) {
			if (++transport_errors >= TRANSPORT_RETRIES || stopping) {
				r->status = stopping ? ST_ABANDONED : ST_TRANSPORT;
				return 0;
			}
			/* Back off before trying a connection again. */
			sleep_ns(100 * NS_PER_MS * transport_errors);
			continue;
		}
		warn("request %" PRIu64 ": HTTP %ld", r->seq, st);
		r->status = st;
		return 0;
	}
}

/* ---- options ---------------------------------------------------------- */

/* --help. */
static void usage(FILE *f)
{
	fprintf(f,
		"Usage: quota-worker [OPTION]...\n"
		"Send chat completion requests one at a time, sharing the provider's limits\n"
		"with every other worker on the host through libquota. See quota-worker(1).\n"
		"\n"
		"  -u, --url URL            endpoint, or a base URL (default http://127.0.0.1:8080/v1)\n"
		"  -k, --key KEY            API key (default $OPENAI_API_KEY, else sk-quota-demo)\n"
		"  -m, --model NAME         model in the requests (default: the quota name)\n"
		"  -n, --requests N         stop after N requests (default 0: no count limit)\n"
		"  -d, --duration DUR       stop starting requests after DUR (\"30s\", \"1m\", \"20\")\n"
		"  -P, --prompt-tokens A[-B]  prompt size, uniform in [A, B] tokens (default 100-700)\n"
		"  -M, --max-tokens N       max_tokens of each request (default 1000)\n"
		"  -s, --seed N             seed for prompt sizes (default 1)\n"
		"  -q, --quota NAME         quota to reserve from (default llama-4-scout)\n"
		"  -S, --segment NAME       segment (default $QUOTA_SEGMENT, else \"quota\")\n"
		"      --reserve-timeout DUR  longest wait in quota_reserve (default 60s)\n"
		"      --feedback           also fold the x-ratelimit headers of 200 answers\n"
		"      --auto-estimate      reserve 0 output tokens: the quota's learned estimate\n"
		"                           (\"auto_estimate\": true), at most --max-tokens\n"
		"      --retry-max DUR      after a refusal, sleep at most DUR (default: the whole\n"
		"                           retry-after; refunds may free budget sooner)\n"
		"      --estimate library|sim-rule  prompt estimate: the token estimator (default),\n"
		"                           or quota-sim's 4 + ceil(bytes/4) rule (a sim without --vocab)\n"
		"      --naive              no libquota: on 429 sleep --naive-sleep and retry\n"
		"      --naive-sleep DUR    (default 5s)\n"
		"  -l, --log FILE           one CSV line per request (\"-\" = stdout)\n"
		"  -i, --id N               worker number written in the log (default 0)\n"
		"      --quiet              no warnings on stderr\n"
		"  -h, --help               this text\n");
}

/* A decimal integer in [lo, hi] for option @name, or exit 2 (opt.c). */
static uint64_t opt_uint(const char *name, const char *s, uint64_t lo, uint64_t hi)
{
	return tool_opt_uint("quota-worker", name, s, lo, hi);
}

/* A duration in any format quota_parse_duration() accepts, or exit 2. */
static int64_t opt_duration(const char *name, const char *s)
{
	return tool_opt_duration("quota-worker", name, s);
}

/* --prompt-tokens A[-B] into cfg.prompt_min, cfg.prompt_max. */
static void opt_prompt_tokens(char *arg)
{
	char *dash = strchr(arg, '-');

	if (dash) {
		*dash = '\0';
		cfg.prompt_min = opt_uint("prompt-tokens", arg, 5, 10000000);
		cfg.prompt_max = opt_uint("prompt-tokens", dash + 1, 5, 10000000);
	} else {
		cfg.prompt_min = cfg.prompt_max = opt_uint("prompt-tokens", arg, 5, 10000000);
	}
	if (cfg.prompt_max < cfg.prompt_min) {
		fprintf(stderr, "quota-worker: --prompt-tokens: A must be <= B\n");
		exit(2);
	}
}

/* --estimate library|sim-rule into cfg.sim_rule. */
static void opt_estimate(const char *arg)
{
	if (strcmp(arg, "sim-rule") == 0)
		cfg.sim_rule = 1;
	else if (strcmp(arg, "library") != 0) {
		fprintf(stderr, "quota-worker: --estimate: expected 'library' or "
				"'sim-rule', got '%s'\n", arg);
		exit(2);
	}
}

/* The key and model, from their defaults where not given: both go into
 * the request as they are, so neither may break its framing. */
static void check_key_and_model(void)
{
	if (!cfg.key)
		cfg.key = getenv("OPENAI_API_KEY");
	if (!cfg.key || !*cfg.key)
		cfg.key = "sk-quota-demo";
	if (strlen(cfg.key) > 256 || strpbrk(cfg.key, "\r\n")) {
		fprintf(stderr, "quota-worker: --key: at most 256 bytes, no line breaks\n");
		exit(2);
	}
	if (!cfg.model)
		cfg.model = cfg.quota;
	for (const char *p = cfg.model; *p; p++) {
		if (p - cfg.model >= 256 || *p == '"' || *p == '\\' || (unsigned char)*p < 0x20) {
			fprintf(stderr, "quota-worker: --model: at most 256 bytes, no quotes, "
					"backslashes or control characters\n");
			exit(2);
		}
	}
}

/* --url into cfg.url: a base URL ("http://host:port" or ".../v1") gets the
 * endpoint path. */
static void set_url(const char *url)
{
	if (strlen(url) + 32 > sizeof(cfg.url)) {
		fprintf(stderr, "quota-worker: --url: too long\n");
		exit(2);
	}
	if (strstr(url, "/chat/completions"))
		snprintf(cfg.url, sizeof(cfg.url), "%s", url);
	else if (strlen(url) >= 3 && strcmp(url + strlen(url) - 3, "/v1") == 0)
		snprintf(cfg.url, sizeof(cfg.url), "%s/chat/completions", url);
	else
		snprintf(cfg.url, sizeof(cfg.url), "%s%s", url,
			 url[0] && url[strlen(url) - 1] == '/' ? "v1/chat/completions"
							       : "/v1/chat/completions");
}

/* Options into cfg; exits 2 with a message naming the option on error. */
static void parse_options(int argc, char **argv)
{
	enum { O_RTIMEOUT = 256, O_FEEDBACK, O_NAIVE, O_NAIVE_SLEEP, O_QUIET, O_ESTIMATE, O_AUTO, O_RMAX };
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "key", required_argument, NULL, 'k' },
		{ "model", required_argument, NULL, 'm' },
		{ "requests", required_argument, NULL, 'n' },
		{ "duration", required_argument, NULL, 'd' },
		{ "prompt-tokens", required_argument, NULL, 'P' },
		{ "max-tokens", required_argument, NULL, 'M' },
		{ "seed", required_argument, NULL, 's' },
		{ "quota", required_argument, NULL, 'q' },
		{ "segment", required_argument, NULL, 'S' },
		{ "reserve-timeout", required_argument, NULL, O_RTIMEOUT },
		{ "feedback", no_argument, NULL, O_FEEDBACK },
		{ "auto-estimate", no_argument, NULL, O_AUTO },
		{ "retry-max", required_argument, NULL, O_RMAX },
		{ "estimate", required_argument, NULL, O_ESTIMATE },
		{ "naive", no_argument, NULL, O_NAIVE },
		{ "naive-sleep", required_argument, NULL, O_NAIVE_SLEEP },
		{ "log", required_argument, NULL, 'l' },
		{ "id", required_argument, NULL, 'i' },
		{ "quiet", no_argument, NULL, O_QUIET },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *url = "http://127.0.0.1:8080/v1";
	int c;

	while ((c = getopt_long(argc, argv, "u:k:m:n:d:P:M:s:q:S:l:i:h", opts, NULL)) != -1) {
		switch (c) {
		case 'u': url = optarg; break;
		case 'k': cfg.key = optarg; break;
		case 'm': cfg.model = optarg; break;
		case 'n': cfg.requests = opt_uint("requests", optarg, 0, UINT64_C(1) << 40); break;
		case 'd': cfg.duration_ns = opt_duration("duration", optarg); break;
		case 'P': opt_prompt_tokens(optarg); break;
		case 'M': cfg.max_tokens = opt_uint("max-tokens", optarg, 1, 10000000); break;
		case 's': cfg.seed = opt_uint("seed", optarg, 0, UINT64_MAX); break;
		case 'q': cfg.quota = optarg; break;
		case 'S': cfg.segment = optarg; break;
		case O_RTIMEOUT: cfg.reserve_timeout_ns = opt_duration("reserve-timeout", optarg); break;
		case O_FEEDBACK: cfg.feedback = 1; break;
		case O_AUTO: cfg.auto_estimate = 1; break;
		case O_RMAX: cfg.retry_max_ns = opt_duration("retry-max", optarg); break;
		case O_ESTIMATE: opt_estimate(optarg); break;
		case O_NAIVE: cfg.naive = 1; break;
		case O_NAIVE_SLEEP: cfg.naive_sleep_ns = opt_duration("naive-sleep", optarg); break;
		case 'l': cfg.log_path = optarg; break;
		case 'i': cfg.id = (int)opt_uint("id", optarg, 0, 1000000); break;
		case O_QUIET: cfg.quiet = 1; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "quota-worker: unexpected argument '%s'\n", argv[optind]);
		exit(2);
	}
	check_key_and_model();
	set_url(url);
}

/* --log: the file with its CSV header, or NULL with a message. */
static FILE *open_log(void)
{
	FILE *log = strcmp(cfg.log_path, "-") == 0 ? stdout : fopen(cfg.log_path, "w");

	if (!log) {
		fprintf(stderr, "quota-worker: %s: %s\n", cfg.log_path, strerror(errno));
		return NULL;
	}
	setvbuf(log, NULL, _IOLBF, 0);
	fprintf(log, "worker,seq,mode,start_ns,sent_ns,end_ns,status,attempts,n429,"
		     "prompt_tokens,completion_tokens,max_tokens,waited_ns,"
		     "reserve_waited_ns,admit_ns\n");
	return log;
}

/* qc and qid: the segment and the quota to reserve from; -1 with a message. */
static int open_quota(void)
{
	int ret = quota_open(cfg.segment, &qc);

	if (ret < 0) {
		fprintf(stderr, "quota-worker: quota_open(%s): %s\n",
			cfg.segment ? cfg.segment : "$QUOTA_SEGMENT", quota_strerror(ret));
		return -1;
	}
	qid = quota_find(qc, cfg.quota);
	if (qid < 0) {
		fprintf(stderr, "quota-worker: quota '%s': %s\n", cfg.quota,
			quota_strerror(qid));
		quota_close(qc);
		return -1;
	}
	return 0;
}

/* One CSV line of the log (its header in open_log). */
static void log_record(FILE *log, const struct record *r)
{
	fprintf(log,
		"%d,%" PRIu64 ",%s,%" PRId64 ",%" PRId64 ",%" PRId64 ",%ld,%u,%u,%" PRIu64
		",%" PRIu64 ",%" PRIu64 ",%" PRId64 ",%" PRId64 ",%" PRId64 "\n",
		cfg.id, r->seq, cfg.naive ? "naive" : "quota", r->start_ns,
		r->attempts ? r->sent_ns : 0, r->end_ns, r->status, r->attempts, r->n429,
		r->prompt_tokens, r->completion_tokens, cfg.max_tokens,
		r->attempts && r->status == 200 ? r->sent_ns - r->start_ns : 0,
		r->reserve_waited_ns, r->admit_ns);
}

/* Open the segment (unless --naive), then one request after another. */
int main(int argc, char **argv)
{
	struct sigaction sa;
	struct http h;
	FILE *log = NULL;
	uint64_t rng, seq = 0, served = 0, n429 = 0, failed = 0;
	int64_t t0;
	int ret = 0;

	parse_options(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: a signal cuts sleeps short */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (cfg.log_path && !(log = open_log()))
		return 1;
	if (!cfg.naive && open_quota() < 0)
		return 1;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0 || http_init(&h) < 0) {
		fprintf(stderr, "quota-worker: cannot initialise libcurl\n");
		quota_close(qc);
		return 1;
	}

	rng = cfg.seed * UINT64_C(0x100000001b3) + (uint64_t)cfg.id;
	t0 = now_ns();
	deadline_ns = cfg.duration_ns > 0 ? t0 + cfg.duration_ns : INT64_MAX;
	while (!stopping && (cfg.requests == 0 || seq < cfg.requests) && now_ns() < deadline_ns) {
		uint64_t span = cfg.prompt_max - cfg.prompt_min + 1;
		uint64_t prompt = cfg.prompt_min + rng_next(&rng) % span;
		struct record r = { .seq = seq++, .start_ns = now_ns() };
		size_t len;
		char *body = make_body(prompt, &len);

		if (!body) {
			ret = -ENOMEM;
			break;
		}
		if (cfg.naive)
			run_naive(&h, body, len, &r);
		else
			ret = run_quota(&h, body, len, estimate_prompt(body, len, prompt), &r);
		free(body);
		r.end_ns = now_ns();
		if (r.status == 200)
			served++;
		else if (r.status != ST_ABANDONED)
			failed++;
		n429 += r.n429;
		if (log)
			log_record(log, &r);
		if (ret < 0)
			break;
	}
	if (!cfg.quiet)
		fprintf(stderr, "quota-worker[%d]: %s mode: %" PRIu64 " served, %" PRIu64
			" answered 429, %" PRIu64 " failed in %.1f s\n",
			cfg.id, cfg.naive ? "naive" : "libquota", served, n429, failed,
			(double)(now_ns() - t0) / 1e9);
	http_free(&h);
	curl_global_cleanup();
	quota_close(qc);
	if (log && log != stdout)
		fclose(log);
	return ret < 0 && ret != -EDQUOT ? 1 : 0;
}
