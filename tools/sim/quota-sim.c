/* SPDX-License-Identifier: MIT */
/*
 * quota-sim.c - a simulated LLM provider: an OpenAI-compatible HTTP server on
 * 127.0.0.1 that enforces per-API-key rate limits the way a real provider
 * does, so that libquota's workers (and the naive ones) can be judged against
 * it. It is the referee: its limiter (bucket.c) shares no code with libquota.
 *
 * POST /v1/chat/completions  a chat completion (or a stream), or 429 when over a limit
 * GET  /stats                counters as JSON
 * GET  /health               {"status":"ok"}
 *
 * Rules (the man page, quota-sim(1), is the reference):
 *  - prompt tokens = sum over messages of (4 + ceil(bytes of content / 4)),
 *    or with --vocab of (4 + the BPE token count of the content) (bpe.c);
 *  - "stream": true answers with paced SSE chunks (STREAM_CHUNK_TOKENS
 *    tokens each), and a usage chunk with stream_options.include_usage;
 *  - a request costs 1 request and prompt + max_tokens tokens, charged when it
 *    arrives (as OpenAI counts); with --refund actual (the default) the unused
 *    max_tokens - completion_tokens go back when the response is sent;
 *    with --charge usage only the prompt is charged at arrival and the
 *    completion tokens when the response ends (beyond the bucket: debt that
 *    later refills pay), as providers that count output as it is produced;
 *  - completion_tokens is uniform in [1, max_tokens] from a seeded PRNG, or
 *    with --completion skewed mostly short (85 % in [20, 300), 14.5 % in
 *    [300, 1000), 0.5 % in [1000, 4000)), at most max_tokens;
 *  - latency = --latency-ms + completion_tokens * --per-token-us.
 *
 * HTTP is libmicrohttpd with a thread per connection, so a response's
 * simulated latency holds only its own connection. One mutex guards the key
 * table, the buckets and the counters; it is never held while sleeping.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "bpe.h"
#include "bucket.h"
#include "format.h"
#include "httpbody.h"
#include "opt.h"

#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)
#define MINUTE_NS (60 * NS_PER_S)
#define DAY_NS (86400 * NS_PER_S)

#define KEY_MAX 128          /* longest API key accepted */
#define JSON_DEPTH_MAX 32    /* deepest request JSON accepted */
#define MESSAGES_MAX 4096    /* most messages in one request */
#define TOKENS_MAX 100000000 /* largest --context / token count accepted */

enum limit_ix { L_RPM, L_TPM, L_RPD, L_TPD, L_N };

static const char *const limit_names[L_N] = { "rpm", "tpm", "rpd", "tpd" };

/* Command-line configuration; read-only once the server runs. */
static struct config {
	unsigned port;
	uint64_t limit[L_N];
	uint64_t burst_ppm; /* capacity = ceil(limit * burst_ppm / 10^6) */
	int refund_actual;
	int charge_usage;      /* --charge usage */
	int completion_skewed; /* --completion skewed */
	uint64_t context;
	uint64_t default_max_tokens;
	uint64_t latency_ms, per_token_us;
	uint64_t seed;
	size_t max_body;
	unsigned max_connections, max_keys;
	int quiet;
	FILE *trace;
	struct bpe *vocab; /* --vocab: count prompt tokens with real BPE */
} cfg = {
	.port = 0,
	.limit = { 1200, 900000, 0, 0 },
	.burst_ppm = 1000000,
	.refund_actual = 1,
	.context = 131072,
	.default_max_tokens = 256,
	.latency_ms = 50,
	.per_token_us = 20,
	.seed = 1,
	.max_body = 1 << 20,
	.max_connections = 512,
	.max_keys = 256,
	.quiet = 0,
};

/*
 * --trace: one line per admission decision and per refund, for checking a
 * client against the referee afterwards. Level figures are the TPM bucket's,
 * in thousandths of a token. Caller holds st.lock.
 */
static void trace_level(const struct bucket *b, char *buf, size_t size)
{
	sim_u128 milli = b->limit ? b->level * 1000 / (uint64_t)b->period_ns : 0;

	snprintf(buf, size, "%" PRIu64, (uint64_t)milli);
}

/* Per API key: its buckets and counters. */
struct key_state {
	char key[KEY_MAX + 1];
	struct bucket b[L_N];
	uint64_t served, rejected_429, prompt_tokens, completion_tokens, charged_tokens;
};

/* Everything mutable, under `lock`. */
static struct {
	pthread_mutex_t lock;
	struct key_state *keys;
	unsigned nkeys;
	uint64_t rng;
	uint64_t served, rejected_429, rejected_requests, rejected_tokens, rejected_too_large,
		bad_request, unauthorized, not_found, in_flight, completion_id;
	int64_t start_ns;
} st = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* Set on SIGTERM/SIGINT; wakes every simulated-latency sleep. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stopping;
} stop = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* CLOCK_MONOTONIC in nanoseconds: the limiter's time line. */
static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* splitmix64: small, seedable, good enough for request sizes. */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* One log line on stderr, unless --quiet. */
static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	va_list ap;

	if (cfg.quiet)
		return;
	va_start(ap, fmt);
	fputs("quota-sim: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* Sleep @ns unless the server is stopping. */
static void sim_sleep(int64_t ns)
{
	struct timespec ts;
	int64_t until = now_ns() + ns;

	ts.tv_sec = until / NS_PER_S;
	ts.tv_nsec = until % NS_PER_S;
	pthread_mutex_lock(&stop.lock);
	while (!stop.stopping) {
		if (pthread_cond_timedwait(&stop.cond, &stop.lock, &ts) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&stop.lock);
}

/* ---- per-connection request state ------------------------------------ */

struct request {
	char *body;
	size_t len, cap;
	int too_big;
};

/* Free a request's state (at completion). NULL is fine. */
static void request_free(struct request *r)
{
	if (!r)
		return;
	free(r->body);
	free(r);
}

/* Append an upload chunk, up to cfg.max_body; past that only note it. */
static int request_append(struct request *r, const char *data, size_t n)
{
	return httpbody_append(&r->body, &r->len, &r->cap, &r->too_big, cfg.max_body, data, n);
}

/* ---- responses -------------------------------------------------------- */

/* Queue @json (consumed) with @status and the headers in @hdr (name, value
 * pairs, NULL-terminated). */
static enum MHD_Result send_json(struct MHD_Connection *conn, unsigned status, cJSON *json,
				 const char *const *hdr)
{
	char *text = cJSON_PrintUnformatted(json);
	struct MHD_Response *resp;
	enum MHD_Result ret;

	cJSON_Delete(json);
	if (!text)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "application/json");
	for (; hdr && hdr[0]; hdr += 2)
		MHD_add_response_header(resp, hdr[0], hdr[1]);
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* An OpenAI-style error: {"error":{"message","type","param","code"}}. */
static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status,
				  const char *type, const char *code, const char *const *hdr,
				  const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status,
				  const char *type, const char *code, const char *const *hdr,
				  const char *fmt, ...)
{
	cJSON *root = cJSON_CreateObject(), *err = cJSON_CreateObject();
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cJSON_AddStringToObject(err, "message", msg);
	cJSON_AddStringToObject(err, "type", type);
	cJSON_AddNullToObject(err, "param");
	if (code)
		cJSON_AddStringToObject(err, "code", code);
	else
		cJSON_AddNullToObject(err, "code");
	cJSON_AddItemToObject(root, "error", err);
	return send_json(conn, status, root, hdr);
}

/* 400 with @msg, counted in /stats. */
static enum MHD_Result bad_request(struct MHD_Connection *conn, const char *msg)
{
	pthread_mutex_lock(&st.lock);
	st.bad_request++;
	pthread_mutex_unlock(&st.lock);
	return send_error(conn, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL, NULL, "%s",
			  msg);
}

/* ---- request parsing -------------------------------------------------- */

/* Deepest nesting of [ and { outside strings; stops counting past the limit. */
static int json_depth(const char *s, size_t n)
{
	return httpbody_json_depth(s, n, JSON_DEPTH_MAX);
}

/*
 * Tokens of one message's content, its text parts given one after another:
 * with --vocab, the BPE count of each; without, the documented rule
 * ceil(bytes / 4) over them all. The message costs 4 more (role, framing).
 */
struct content_count {
	size_t bytes;
	uint64_t bpe;
};

static void content_add(struct content_count *c, const char *text)
{
	size_t n = strlen(text);

	c->bytes += n;
	if (cfg.vocab)
		c->bpe += bpe_count(cfg.vocab, text, n);
}

static uint64_t message_tokens(const struct content_count *c)
{
	return 4 + (cfg.vocab ? c->bpe : (c->bytes + 3) / 4);
}

/* A JSON integer in [lo, hi], or -1. */
static int64_t json_uint(const cJSON *v, int64_t lo, int64_t hi)
{
	double d;

	if (!cJSON_IsNumber(v))
		return -1;
	d = v->valuedouble;
	if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d)
		return -1;
	return (int64_t)d;
}

struct chat {
	const char *model;
	uint64_t prompt_tokens, max_tokens;
	int stream, include_usage; /* "stream": true; stream_options.include_usage */
};

/* "stream" and "stream_options" into @c; on error write a message to @err. */
static int parse_chat_stream(const cJSON *root, struct chat *c, char *err, size_t errsz)
{
	const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");

	if (stream && !cJSON_IsBool(stream) && !cJSON_IsNull(stream)) {
		snprintf(err, errsz, "'stream' must be a boolean");
		return -1;
	}
	c->stream = cJSON_IsTrue(stream);
	c->include_usage = 0;
	if (c->stream) {
		const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
		const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");

		if (so && !cJSON_IsNull(so) &&
		    (!cJSON_IsObject(so) || (iu && !cJSON_IsBool(iu)))) {
			snprintf(err, errsz, "'stream_options' must be an object with a boolean "
					     "'include_usage'");
			return -1;
		}
		c->include_usage = cJSON_IsTrue(iu);
	}
	return 0;
}

/* The text of messages[@i]'s @content (a string, text parts or null) into
 * @cc; on error write a message to @err. */
static int parse_content(const cJSON *content, int i, struct content_count *cc, char *err,
			 size_t errsz)
{
	if (cJSON_IsString(content)) {
		content_add(cc, content->valuestring);
	} else if (cJSON_IsArray(content)) {
		const cJSON *part;

		cJSON_ArrayForEach(part, content)
		{
			const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");

			if (!cJSON_IsObject(part) || !cJSON_IsString(text)) {
				snprintf(err, errsz,
					 "messages[%d].content parts must be {\"type\":\"text\",\"text\":...}",
					 i);
				return -1;
			}
			content_add(cc, text->valuestring);
		}
	} else if (content && !cJSON_IsNull(content)) {
		snprintf(err, errsz, "messages[%d].content must be a string, an array or null", i);
		return -1;
	}
	return 0;
}

/* "messages" into c->prompt_tokens; on error write a message to @err. */
static int parse_chat_messages(const cJSON *root, struct chat *c, char *err, size_t errsz)
{
	const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages"), *m;
	int n = 0;

	if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) < 1) {
		snprintf(err, errsz, "'messages' must be a non-empty array");
		return -1;
	}
	c->prompt_tokens = 0;
	cJSON_ArrayForEach(m, msgs)
	{
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		struct content_count cc = { 0, 0 };

		if (++n > MESSAGES_MAX) {
			snprintf(err, errsz, "more than %d messages", MESSAGES_MAX);
			return -1;
		}
		if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
			snprintf(err, errsz, "messages[%d] must be an object with a string 'role'",
				 n - 1);
			return -1;
		}
		if (parse_content(cJSON_GetObjectItemCaseSensitive(m, "content"), n - 1, &cc, err,
				  errsz) < 0)
			return -1;
		c->prompt_tokens += message_tokens(&cc);
	}
	return 0;
}

/* "max_completion_tokens", else "max_tokens", else the default, into
 * c->max_tokens; on error write a message to @err. */
static int parse_chat_max_tokens(const cJSON *root, struct chat *c, char *err, size_t errsz)
{
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");
	int64_t v;

	if (!mt || cJSON_IsNull(mt))
		mt = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
	if (!mt || cJSON_IsNull(mt)) {
		c->max_tokens = cfg.default_max_tokens;
		return 0;
	}
	v = json_uint(mt, 1, (int64_t)cfg.context);
	if (v < 0) {
		snprintf(err, errsz, "'max_tokens' must be an integer in [1, %" PRIu64 "]",
			 cfg.context);
		return -1;
	}
	c->max_tokens = (uint64_t)v;
	return 0;
}

/* Validate a chat completion request; on error write a message to @err. */
static int parse_chat(const cJSON *root, struct chat *c, char *err, size_t errsz)
{
	const cJSON *model;

	if (!cJSON_IsObject(root)) {
		snprintf(err, errsz, "the request body must be a JSON object");
		return -1;
	}
	model = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (!cJSON_IsString(model) || !model->valuestring[0] || strlen(model->valuestring) > 256) {
		snprintf(err, errsz, "'model' must be a non-empty string of at most 256 bytes");
		return -1;
	}
	c->model = model->valuestring;
	if (parse_chat_stream(root, c, err, errsz) < 0 ||
	    parse_chat_messages(root, c, err, errsz) < 0 ||
	    parse_chat_max_tokens(root, c, err, errsz) < 0)
		return -1;
	if (c->prompt_tokens + c->max_tokens > cfg.context) {
		snprintf(err, errsz,
			 "This model's maximum context length is %" PRIu64 " tokens. However, you "
			 "requested %" PRIu64 " tokens (%" PRIu64 " in the messages, %" PRIu64
			 " in the completion).",
			 cfg.context, c->prompt_tokens + c->max_tokens, c->prompt_tokens,
			 c->max_tokens);
		return -1;
	}
	return 0;
}

/* ---- keys and limits -------------------------------------------------- */

/* A bucket's capacity: ceil(limit * burst), at least 1. */
static uint64_t capacity_of(uint64_t limit)
{
	sim_u128 c = ((sim_u128)limit * cfg.burst_ppm + 999999) / 1000000;

	return c < 1 ? 1 : (uint64_t)c;
}

/* The state of @key, created full on first use; NULL if the table is full.
 * Caller holds st.lock. */
static struct key_state *key_get(const char *key, int64_t now)
{
	struct key_state *k;

	for (unsigned i = 0; i < st.nkeys; i++)
		if (strcmp(st.keys[i].key, key) == 0)
			return &st.keys[i];
	if (st.nkeys >= cfg.max_keys)
		return NULL;
	k = &st.keys[st.nkeys++];
	memset(k, 0, sizeof(*k));
	snprintf(k->key, sizeof(k->key), "%s", key);
	for (int l = 0; l < L_N; l++)
		bucket_init(&k->b[l], cfg.limit[l], capacity_of(cfg.limit[l]),
			    l == L_RPM || l == L_TPM ? MINUTE_NS : DAY_NS, now);
	return k;
}

/* The x-ratelimit-* header values of @k now (per-minute limits only, as
 * OpenAI sends). Caller holds st.lock. */
struct rl_headers {
	char lim_r[24], lim_t[24], rem_r[24], rem_t[24], reset_r[32], reset_t[32];
	char retry[24], retry_ms[24];
	const char *h[24];
};

static void rl_fill(struct rl_headers *rh, const struct key_state *k, int64_t retry_ns)
{
	int n = 0;

	if (cfg.limit[L_RPM]) {
		snprintf(rh->lim_r, sizeof(rh->lim_r), "%" PRIu64, cfg.limit[L_RPM]);
		snprintf(rh->rem_r, sizeof(rh->rem_r), "%" PRIu64,
			 bucket_remaining(&k->b[L_RPM]));
		sim_fmt_reset(bucket_reset_ns(&k->b[L_RPM]), rh->reset_r, sizeof(rh->reset_r));
		rh->h[n++] = "x-ratelimit-limit-requests";
		rh->h[n++] = rh->lim_r;
		rh->h[n++] = "x-ratelimit-remaining-requests";
		rh->h[n++] = rh->rem_r;
		rh->h[n++] = "x-ratelimit-reset-requests";
		rh->h[n++] = rh->reset_r;
	}
	if (cfg.limit[L_TPM]) {
		snprintf(rh->lim_t, sizeof(rh->lim_t), "%" PRIu64, cfg.limit[L_TPM]);
		snprintf(rh->rem_t, sizeof(rh->rem_t), "%" PRIu64,
			 bucket_remaining(&k->b[L_TPM]));
		sim_fmt_reset(bucket_reset_ns(&k->b[L_TPM]), rh->reset_t, sizeof(rh->reset_t));
		rh->h[n++] = "x-ratelimit-limit-tokens";
		rh->h[n++] = rh->lim_t;
		rh->h[n++] = "x-ratelimit-remaining-tokens";
		rh->h[n++] = rh->rem_t;
		rh->h[n++] = "x-ratelimit-reset-tokens";
		rh->h[n++] = rh->reset_t;
	}
	if (retry_ns >= 0) {
		/* RFC 9110 delay-seconds is an integer: round up, at least 1.
		 * retry-after-ms (as OpenAI sends) gives the finer figure. */
		int64_t s = (retry_ns + NS_PER_S - 1) / NS_PER_S;
		int64_t ms = (retry_ns + NS_PER_MS - 1) / NS_PER_MS;

		snprintf(rh->retry, sizeof(rh->retry), "%" PRId64, s < 1 ? 1 : s);
		snprintf(rh->retry_ms, sizeof(rh->retry_ms), "%" PRId64, ms < 1 ? 1 : ms);
		rh->h[n++] = "retry-after";
		rh->h[n++] = rh->retry;
		rh->h[n++] = "retry-after-ms";
		rh->h[n++] = rh->retry_ms;
	}
	rh->h[n] = NULL;
}

/* ---- handlers --------------------------------------------------------- */

static const char filler[][5] = { "sim ", "tok ", "abc ", "llm ", "out ", "txt ", "zap ",
				  "mux " };

/*
 * A response is over: give back the unused max_tokens (--refund actual) and
 * count it as served with @completion tokens. Takes st.lock.
 */
static void settle(struct key_state *k, const char *key, uint64_t prompt, uint64_t max_tokens,
		   uint64_t completion)
{
	uint64_t unused = max_tokens - completion;

	pthread_mutex_lock(&st.lock);
	if (cfg.charge_usage) {
		int64_t t = now_ns();

		for (int l = L_TPM; l < L_N; l += 2) {
			bucket_refill(&k->b[l], t);
			bucket_charge(&k->b[l], completion);
		}
		if (cfg.trace)
			fprintf(cfg.trace, "usage %" PRId64 " %s tokens %" PRIu64 "\n", t, key, completion);
	} else if (cfg.refund_actual && unused) {
		int64_t t = now_ns();

		for (int l = L_TPM; l < L_N; l += 2) {
			bucket_refill(&k->b[l], t);
			bucket_give(&k->b[l], unused);
		}
		if (cfg.trace) {
			char lv[32];

			trace_level(&k->b[L_TPM], lv, sizeof(lv));
			fprintf(cfg.trace, "refund %" PRId64 " %s tokens %" PRIu64 " tpm_level_milli %s\n",
				t, key, unused, lv);
		}
	}
	k->served++;
	k->prompt_tokens += prompt;
	k->completion_tokens += completion;
	k->charged_tokens += prompt + (cfg.refund_actual || cfg.charge_usage ? completion : max_tokens);
	st.served++;
	st.in_flight--;
	pthread_mutex_unlock(&st.lock);
}

/* ---- streaming (SSE) ------------------------------------------------- */

#define STREAM_CHUNK_TOKENS 4 /* completion tokens per content chunk */

/* A streamed completion in progress; owned by its MHD response. */
struct sim_stream {
	struct key_state *k;
	char key[KEY_MAX + 1], id[64], model[257];
	uint64_t prompt, max_tokens, completion, sent;
	int include_usage, phase; /* 0 role, 1 content, 2 finish, 3 usage, 4 [DONE], 5 end */
	time_t created;
	char *pending;            /* the event being sent */
	size_t pending_off, pending_len;
};

/* "data: <json>\n\n" of a chunk with @choices (consumed); NULL on ENOMEM. */
static char *chunk_event(const struct sim_stream *s, cJSON *choices, int with_usage)
{
	cJSON *o = cJSON_CreateObject();
	char *json, *ev = NULL;

	cJSON_AddStringToObject(o, "id", s->id);
	cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
	cJSON_AddNumberToObject(o, "created", (double)s->created);
	cJSON_AddStringToObject(o, "model", s->model);
	cJSON_AddItemToObject(o, "choices", choices);
	if (with_usage) {
		cJSON *u = cJSON_AddObjectToObject(o, "usage");

		cJSON_AddNumberToObject(u, "prompt_tokens", (double)s->prompt);
		cJSON_AddNumberToObject(u, "completion_tokens", (double)s->completion);
		cJSON_AddNumberToObject(u, "total_tokens", (double)(s->prompt + s->completion));
	} else if (s->include_usage) {
		cJSON_AddNullToObject(o, "usage");
	}
	json = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (json && asprintf(&ev, "data: %s\n\n", json) < 0)
		ev = NULL;
	free(json);
	return ev;
}

/* One choice with @delta (consumed) and @finish (NULL: null). */
static cJSON *one_choice(cJSON *delta, const char *finish)
{
	cJSON *arr = cJSON_CreateArray(), *c = cJSON_CreateObject();

	cJSON_AddNumberToObject(c, "index", 0);
	cJSON_AddItemToObject(c, "delta", delta);
	cJSON_AddNullToObject(c, "logprobs");
	if (finish)
		cJSON_AddStringToObject(c, "finish_reason", finish);
	else
		cJSON_AddNullToObject(c, "finish_reason");
	cJSON_AddItemToArray(arr, c);
	return arr;
}

/* The next event of @s, after its pacing delay; NULL at the end. */
static char *stream_next(struct sim_stream *s)
{
	cJSON *delta;
	char *text;
	uint64_t n;

	switch (s->phase) {
	case 0:
		sim_sleep((int64_t)(cfg.latency_ms * (uint64_t)NS_PER_MS));
		delta = cJSON_CreateObject();
		cJSON_AddStringToObject(delta, "role", "assistant");
		cJSON_AddStringToObject(delta, "content", "");
		s->phase = 1;
		return chunk_event(s, one_choice(delta, NULL), 0);
	case 1:
		n = s->completion - s->sent;
		if (n > STREAM_CHUNK_TOKENS)
			n = STREAM_CHUNK_TOKENS;
		sim_sleep((int64_t)(n * cfg.per_token_us * UINT64_C(1000)));
		text = malloc(n * 4 + 1);
		if (!text)
			return NULL;
		for (uint64_t i = 0; i < n; i++)
			memcpy(text + i * 4, filler[(s->sent + i) % 8], 4);
		text[n * 4] = '\0';
		s->sent += n;
		if (s->sent == s->completion)
			s->phase = 2;
		delta = cJSON_CreateObject();
		cJSON_AddStringToObject(delta, "content", text);
		free(text);
		return chunk_event(s, one_choice(delta, NULL), 0);
	case 2:
		s->phase = s->include_usage ? 3 : 4;
		return chunk_event(s, one_choice(cJSON_CreateObject(),
						 s->completion == s->max_tokens ? "length" : "stop"),
				   0);
	case 3:
		s->phase = 4;
		return chunk_event(s, cJSON_CreateArray(), 1);
	case 4:
		s->phase = 5;
		return strdup("data: [DONE]\n\n");
	default:
		return NULL;
	}
}

/* MHD content reader: the events one after another, paced. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct sim_stream *s = cls;
	size_t n;

	(void)pos;
	while (!s->pending || s->pending_off == s->pending_len) {
		free(s->pending);
		s->pending = NULL;
		if (s->phase == 5)
			return MHD_CONTENT_READER_END_OF_STREAM;
		pthread_mutex_lock(&stop.lock);
		n = (size_t)stop.stopping;
		pthread_mutex_unlock(&stop.lock);
		if (n)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		s->pending = stream_next(s);
		if (!s->pending)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		s->pending_off = 0;
		s->pending_len = strlen(s->pending);
	}
	n = s->pending_len - s->pending_off;
	if (n > max)
		n = max;
	memcpy(buf, s->pending + s->pending_off, n);
	s->pending_off += n;
	return (ssize_t)n;
}

/* The stream is over, completed or cut: settle what was generated. */
static void stream_free(void *cls)
{
	struct sim_stream *s = cls;

	if (s->phase < 2)
		logmsg("stream %s cut after %" PRIu64 " of %" PRIu64 " tokens", s->id, s->sent,
		       s->completion);
	settle(s->k, s->key, s->prompt, s->max_tokens, s->sent);
	free(s->pending);
	free(s);
}

/* Start a streamed answer to an admitted request. */
static enum MHD_Result start_stream(struct MHD_Connection *conn, struct key_state *k,
				    const char *key, const struct chat *chat, uint64_t completion,
				    const char *id)
{
	struct sim_stream *s = calloc(1, sizeof(*s));
	struct MHD_Response *resp;
	struct rl_headers rh;
	enum MHD_Result ret;

	if (!s) {
		settle(k, key, chat->prompt_tokens, chat->max_tokens, 0);
		return MHD_NO;
	}
	s->k = k;
	snprintf(s->key, sizeof(s->key), "%s", key);
	snprintf(s->id, sizeof(s->id), "%s", id);
	snprintf(s->model, sizeof(s->model), "%s", chat->model);
	s->prompt = chat->prompt_tokens;
	s->max_tokens = chat->max_tokens;
	s->completion = completion;
	s->include_usage = chat->include_usage;
	s->created = time(NULL);
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, s,
						 stream_free);
	if (!resp) {
		stream_free(s);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "text/event-stream");
	MHD_add_response_header(resp, "Cache-Control", "no-cache");
	pthread_mutex_lock(&st.lock);
	rl_fill(&rh, k, -1);
	pthread_mutex_unlock(&st.lock);
	for (const char *const *h = rh.h; h[0]; h += 2)
		MHD_add_response_header(resp, h[0], h[1]);
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/*
 * POST /v1/chat/completions: authenticate, validate, admit or refuse at
 * arrival (all limits or none), simulate the latency, answer with usage,
 * then give back the unused max_tokens (--refund actual).
 */
/* handle_chat(), step 1: the key, the body, the request. 0 with *@root
 * (to be freed) and @chat filled, or -1 with the answer queued in *@ret. */
static int chat_request(struct MHD_Connection *conn, struct request *req, char key[KEY_MAX + 1],
			cJSON **root, struct chat *chat, enum MHD_Result *ret)
{
	const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
	char err[512];

	if (!auth || strncmp(auth, "Bearer ", 7) != 0 || !auth[7] || strlen(auth + 7) > KEY_MAX) {
		pthread_mutex_lock(&st.lock);
		st.unauthorized++;
		pthread_mutex_unlock(&st.lock);
		*ret = send_error(conn, MHD_HTTP_UNAUTHORIZED, "invalid_request_error",
				  "invalid_api_key", NULL,
				  "Missing or malformed 'Authorization: Bearer <key>' header (keys of "
				  "1 to %d bytes).",
				  KEY_MAX);
		return -1;
	}
	snprintf(key, KEY_MAX + 1, "%s", auth + 7);
	if (req->too_big) {
		pthread_mutex_lock(&st.lock);
		st.bad_request++;
		pthread_mutex_unlock(&st.lock);
		*ret = send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
				  NULL, "request body above %zu bytes", cfg.max_body);
		return -1;
	}
	if (!req->body || req->len == 0) {
		*ret = bad_request(conn, "empty request body; expected JSON");
		return -1;
	}
	if (json_depth(req->body, req->len) > JSON_DEPTH_MAX) {
		snprintf(err, sizeof(err), "JSON nested deeper than %d levels", JSON_DEPTH_MAX);
		*ret = bad_request(conn, err);
		return -1;
	}
	*root = cJSON_ParseWithLength(req->body, req->len);
	if (!*root) {
		*ret = bad_request(conn, "the request body is not valid JSON");
		return -1;
	}
	if (parse_chat(*root, chat, err, sizeof(err)) < 0) {
		cJSON_Delete(*root);
		*ret = bad_request(conn, err);
		return -1;
	}
	return 0;
}

/* handle_chat(), step 2 (st.lock held): the longest wait over every limit
 * for @cost at @t (-1: never fits), and which limit it is. */
static int64_t chat_admission(struct key_state *k, const uint64_t cost[L_N], int64_t t, int *worst_l)
{
	int64_t worst = 0;
	*worst_l = -1;
	for (int l = 0; l < L_N; l++) {
		int64_t w;

		bucket_refill(&k->b[l], t);
		w = bucket_wait_ns(&k->b[l], cost[l]);
		if (w < 0) {
			*worst_l = l;
			return -1;
		}
		if (w > worst) {
			worst = w;
			*worst_l = l;
		}
	}
	return worst;
}

/* handle_chat(), step 3 (st.lock held, released here): the 429 of a
 * refusal on limit @l, after @worst ns (-1: never fits). */
static enum MHD_Result chat_refuse(struct MHD_Connection *conn, struct key_state *k,
				   const uint64_t cost[L_N], int64_t worst, int l)
{
	static const char *const what[L_N] = { "requests per min (RPM)", "tokens per min (TPM)",
					       "requests per day (RPD)", "tokens per day (TPD)" };
	const char *type = l == L_RPM || l == L_RPD ? "requests" : "tokens";
	uint64_t lim = cfg.limit[l], avail = bucket_remaining(&k->b[l]);
	struct rl_headers rh;
	char when[32];

	k->rejected_429++;
	st.rejected_429++;
	if (worst < 0)
		st.rejected_too_large++;
	else if (l == L_RPM || l == L_RPD)
		st.rejected_requests++;
	else
		st.rejected_tokens++;
	rl_fill(&rh, k, worst < 0 ? 0 : worst);
	pthread_mutex_unlock(&st.lock);
	if (worst < 0)
		return send_error(conn, MHD_HTTP_TOO_MANY_REQUESTS, type, "rate_limit_exceeded", rh.h,
				  "Request too large on %s: Limit %" PRIu64 ", Requested %" PRIu64 ".",
				  what[l], capacity_of(lim), cost[l]);
	sim_fmt_reset(worst, when, sizeof(when));
	return send_error(conn, MHD_HTTP_TOO_MANY_REQUESTS, type, "rate_limit_exceeded", rh.h,
			  "Rate limit reached on %s: Limit %" PRIu64 ", Used %" PRIu64
			  ", Requested %" PRIu64 ". Please try again in %s.",
			  what[l], lim, capacity_of(lim) - avail, cost[l], when);
}

/* handle_chat(), step 4: the whole answer of @completion tokens, after the
 * simulated latency; settles the key's buckets. */
static enum MHD_Result chat_answer(struct MHD_Connection *conn, struct key_state *k, const char *key,
				   const struct chat *chat, uint64_t completion, const char *id)
{
	struct rl_headers rh;
	cJSON *resp, *choices, *choice, *msg, *usage;
	char *text;

	sim_sleep((int64_t)(cfg.latency_ms * (uint64_t)NS_PER_MS +
			    completion * cfg.per_token_us * UINT64_C(1000)));
	/* completion_tokens words of 4 bytes: the same rule counts them back. */
	text = malloc(completion * 4 + 1);
	if (!text)
		return MHD_NO;
	for (uint64_t i = 0; i < completion; i++)
		memcpy(text + i * 4, filler[i % 8], 4);
	text[completion * 4 - 1] = '.';
	text[completion * 4] = '\0';

	resp = cJSON_CreateObject();
	cJSON_AddStringToObject(resp, "id", id);
	cJSON_AddStringToObject(resp, "object", "chat.completion");
	cJSON_AddNumberToObject(resp, "created", (double)time(NULL));
	cJSON_AddStringToObject(resp, "model", chat->model);
	choices = cJSON_AddArrayToObject(resp, "choices");
	choice = cJSON_CreateObject();
	cJSON_AddNumberToObject(choice, "index", 0);
	msg = cJSON_AddObjectToObject(choice, "message");
	cJSON_AddStringToObject(msg, "role", "assistant");
	cJSON_AddStringToObject(msg, "content", text);
	cJSON_AddNullToObject(msg, "refusal");
	cJSON_AddNullToObject(choice, "logprobs");
	cJSON_AddStringToObject(choice, "finish_reason",
				completion == chat->max_tokens ? "length" : "stop");
	cJSON_AddItemToArray(choices, choice);
	usage = cJSON_AddObjectToObject(resp, "usage");
	cJSON_AddNumberToObject(usage, "prompt_tokens", (double)chat->prompt_tokens);
	cJSON_AddNumberToObject(usage, "completion_tokens", (double)completion);
	cJSON_AddNumberToObject(usage, "total_tokens", (double)(chat->prompt_tokens + completion));
	free(text);

	/* Settle: refund what max_tokens reserved but was not generated. */
	settle(k, key, chat->prompt_tokens, chat->max_tokens, completion);
	pthread_mutex_lock(&st.lock);
	rl_fill(&rh, k, -1);
	pthread_mutex_unlock(&st.lock);
	return send_json(conn, MHD_HTTP_OK, resp, rh.h);
}

/* POST /v1/chat/completions: check, admit on every limit at arrival (all or
 * nothing) or refuse with a 429, then answer (whole or streamed). */
static enum MHD_Result handle_chat(struct MHD_Connection *conn, struct request *req)
{
	uint64_t cost[L_N], completion;
	struct key_state *k;
	struct chat chat;
	char key[KEY_MAX + 1], id[64];
	int64_t t_arrive, worst;
	int worst_l;
	cJSON *root;
	enum MHD_Result ret;

	if (chat_request(conn, req, key, &root, &chat, &ret) < 0)
		return ret;
	cost[L_RPM] = cost[L_RPD] = 1;
	cost[L_TPM] = cost[L_TPD] = chat.prompt_tokens + (cfg.charge_usage ? 0 : chat.max_tokens);

	pthread_mutex_lock(&st.lock);
	t_arrive = now_ns();
	k = key_get(key, t_arrive);
	if (!k) {
		pthread_mutex_unlock(&st.lock);
		cJSON_Delete(root);
		return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, NULL,
				  "more than %u distinct API keys", cfg.max_keys);
	}
	worst = chat_admission(k, cost, t_arrive, &worst_l);
	if (cfg.trace) {
		char lv[32], lr[32];

		trace_level(&k->b[L_TPM], lv, sizeof(lv));
		trace_level(&k->b[L_RPM], lr, sizeof(lr));
		fprintf(cfg.trace, "arrive %" PRId64 " %s tokens %" PRIu64 " tpm_level_milli %s rpm_level_milli %s %s\n",
			t_arrive, key, cost[L_TPM], lv, lr, worst == 0 ? "admit" : "reject");
	}
	if (worst != 0) {
		ret = chat_refuse(conn, k, cost, worst, worst_l);
		cJSON_Delete(root);
		return ret;
	}
	for (int l = 0; l < L_N; l++)
		bucket_take(&k->b[l], cost[l]);
	if (cfg.completion_skewed) {
		uint64_t u = rng_next(&st.rng) % 1000, x = rng_next(&st.rng);

		completion = u < 850 ? 20 + x % 280 : u < 995 ? 300 + x % 700 : 1000 + x % 3000;
		if (completion > chat.max_tokens)
			completion = chat.max_tokens;
	} else {
		completion = 1 + rng_next(&st.rng) % chat.max_tokens;
	}
	st.in_flight++;
	snprintf(id, sizeof(id), "chatcmpl-sim%" PRIu64, ++st.completion_id);
	pthread_mutex_unlock(&st.lock);
	ret = chat.stream ? start_stream(conn, k, key, &chat, completion, id) :
			    chat_answer(conn, k, key, &chat, completion, id);
	cJSON_Delete(root);
	return ret;
}

/* GET /stats: every counter, the limits, and per key its use and levels. */
static enum MHD_Result handle_stats(struct MHD_Connection *conn)
{
	cJSON *root = cJSON_CreateObject(), *limits, *keys;
	int64_t t;

	pthread_mutex_lock(&st.lock);
	t = now_ns();
	cJSON_AddNumberToObject(root, "uptime_s", (double)(t - st.start_ns) / 1e9);
	cJSON_AddNumberToObject(root, "served", (double)st.served);
	cJSON_AddNumberToObject(root, "rejected_429", (double)st.rejected_429);
	cJSON_AddNumberToObject(root, "rejected_requests", (double)st.rejected_requests);
	cJSON_AddNumberToObject(root, "rejected_tokens", (double)st.rejected_tokens);
	cJSON_AddNumberToObject(root, "rejected_too_large", (double)st.rejected_too_large);
	cJSON_AddNumberToObject(root, "bad_request", (double)st.bad_request);
	cJSON_AddNumberToObject(root, "unauthorized", (double)st.unauthorized);
	cJSON_AddNumberToObject(root, "not_found", (double)st.not_found);
	cJSON_AddNumberToObject(root, "in_flight", (double)st.in_flight);
	limits = cJSON_AddObjectToObject(root, "limits");
	for (int l = 0; l < L_N; l++)
		cJSON_AddNumberToObject(limits, limit_names[l], (double)cfg.limit[l]);
	cJSON_AddNumberToObject(limits, "burst", (double)cfg.burst_ppm / 1e6);
	cJSON_AddStringToObject(limits, "refund", cfg.refund_actual ? "actual" : "none");
	keys = cJSON_AddObjectToObject(root, "keys");
	for (unsigned i = 0; i < st.nkeys; i++) {
		struct key_state *k = &st.keys[i];
		cJSON *o = cJSON_AddObjectToObject(keys, k->key);

		cJSON_AddNumberToObject(o, "served", (double)k->served);
		cJSON_AddNumberToObject(o, "rejected_429", (double)k->rejected_429);
		cJSON_AddNumberToObject(o, "prompt_tokens", (double)k->prompt_tokens);
		cJSON_AddNumberToObject(o, "completion_tokens", (double)k->completion_tokens);
		cJSON_AddNumberToObject(o, "charged_tokens", (double)k->charged_tokens);
		for (int l = 0; l < L_N; l++) {
			char name[32];

			if (!cfg.limit[l])
				continue;
			bucket_refill(&k->b[l], t);
			snprintf(name, sizeof(name), "remaining_%s", limit_names[l]);
			cJSON_AddNumberToObject(o, name, (double)bucket_remaining(&k->b[l]));
		}
	}
	pthread_mutex_unlock(&st.lock);
	return send_json(conn, MHD_HTTP_OK, root, NULL);
}

/* libmicrohttpd's access handler: collects the body, then dispatches. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct request *req = *con_cls;

	(void)cls;
	(void)version;
	if (!req) {
		req = calloc(1, sizeof(*req));
		if (!req)
			return MHD_NO;
		*con_cls = req;
		return MHD_YES;
	}
	if (*upload_size) {
		if (request_append(req, upload, *upload_size) < 0)
			return MHD_NO;
		*upload_size = 0;
		return MHD_YES;
	}

	if (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0) {
		if (strcmp(method, "POST") != 0)
			return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
					  "invalid_request_error", NULL, NULL, "use POST on %s",
					  url);
		return handle_chat(conn, req);
	}
	if (strcmp(url, "/stats") == 0 && strcmp(method, "GET") == 0)
		return handle_stats(conn);
	if (strcmp(url, "/health") == 0 && strcmp(method, "GET") == 0) {
		cJSON *o = cJSON_CreateObject();

		cJSON_AddStringToObject(o, "status", "ok");
		return send_json(conn, MHD_HTTP_OK, o, NULL);
	}
	pthread_mutex_lock(&st.lock);
	st.not_found++;
	pthread_mutex_unlock(&st.lock);
	return send_error(conn, MHD_HTTP_NOT_FOUND, "invalid_request_error", "unknown_url", NULL,
			  "Unknown request URL: %s %s.", method, url);
}

/* libmicrohttpd's completion callback: the request's state goes. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	request_free(*con_cls);
	*con_cls = NULL;
}

/* ---- options ---------------------------------------------------------- */

/* --help. */
static void usage(FILE *f)
{
	fprintf(f,
		"Usage: quota-sim [OPTION]...\n"
		"A simulated OpenAI-compatible LLM provider on 127.0.0.1 that enforces\n"
		"per-API-key rate limits and answers 429 like a real one. Prints the bound\n"
		"port as its first line on stdout. See quota-sim(1).\n"
		"\n"
		"  -p, --port N             TCP port (default 0: pick a free one)\n"
		"      --rpm N              requests per minute per key (default 1200, 0 = none)\n"
		"      --tpm N              tokens per minute per key (default 900000)\n"
		"      --rpd N, --tpd N     per-day limits (default 0 = none)\n"
		"      --burst F            capacity = ceil(limit * F), 0 < F <= 1 (default 1)\n"
		"      --refund actual|none give back unused max_tokens at completion (default actual)\n"
		"      --charge arrival|usage  tokens charged: prompt + max_tokens at arrival (default),\n"
		"                           or the prompt at arrival and the output when it ends\n"
		"      --completion uniform|skewed  completion lengths: uniform in [1, max_tokens]\n"
		"                           (default), or mostly short, a long tail (quota-sim(1))\n"
		"      --context N          context window: prompt + max_tokens (default 131072)\n"
		"      --default-max-tokens N  when a request has none (default 256)\n"
		"      --latency-ms N       fixed latency per response (default 50)\n"
		"      --per-token-us N     extra latency per completion token (default 20)\n"
		"      --seed N             PRNG seed for completion lengths (default 1)\n"
		"      --max-body BYTES     largest request body (default 1048576)\n"
		"      --max-connections N  concurrent connections (default 512)\n"
		"      --max-keys N         distinct API keys tracked (default 256)\n"
		"      --trace FILE         log every admission decision and refund to FILE\n"
		"      --vocab FILE         count prompt tokens with this BPE vocabulary (a tiktoken\n"
		"                           rank file, o200k pre-tokenizer) instead of ceil(bytes/4)\n"
		"  -q, --quiet              no log lines on stderr\n"
		"  -h, --help               this text\n");
}

/* A decimal integer in [lo, hi] for option @name, or exit 2 (opt.c). */
static uint64_t opt_uint(const char *name, const char *s, uint64_t lo, uint64_t hi)
{
	return tool_opt_uint("quota-sim", name, s, lo, hi);
}

/* A fraction in (0, 1] with up to 6 decimals, as parts per million. */
static uint64_t opt_fraction(const char *name, const char *s)
{
	uint64_t ip = 0, fp = 0, scale = 100000;
	const char *p = s;

	if (*p < '0' || *p > '9')
		goto bad;
	while (*p >= '0' && *p <= '9' && ip <= 1)
		ip = ip * 10 + (uint64_t)(*p++ - '0');
	if (*p == '.') {
		p++;
		if (*p < '0' || *p > '9')
			goto bad;
		for (; *p >= '0' && *p <= '9'; p++) {
			if (!scale)
				goto bad;
			fp += (uint64_t)(*p - '0') * scale;
			scale /= 10;
		}
	}
	if (*p || ip > 1 || (ip == 1 && fp) || (ip == 0 && fp == 0))
		goto bad;
	return ip * 1000000 + fp;
bad:
	fprintf(stderr, "quota-sim: --%s: expected a fraction in (0, 1] with at most 6 decimals, got '%s'\n",
		name, s);
	exit(2);
}

/* One of two words for option @name: 0 for @a, 1 for @b, or exit 2. */
static int opt_choice(const char *name, const char *arg, const char *a, const char *b)
{
	if (strcmp(arg, a) != 0 && strcmp(arg, b) != 0) {
		fprintf(stderr, "quota-sim: --%s: expected '%s' or '%s', got '%s'\n", name, a, b, arg);
		exit(2);
	}
	return strcmp(arg, b) == 0;
}

/* --trace FILE: opened for writing, or exit 2. */
static FILE *opt_trace(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f) {
		fprintf(stderr, "quota-sim: --trace %s: %s\n", path, strerror(errno));
		exit(2);
	}
	return f;
}

/* --vocab FILE: the BPE vocabulary loaded, or exit 2. */
static struct bpe *opt_vocab(const char *path)
{
	char err[512];
	struct bpe *v = bpe_load(path, err, sizeof(err));

	if (!v) {
		fprintf(stderr, "quota-sim: --vocab %s\n", err);
		exit(2);
	}
	return v;
}

/* What no single option can check: the options against each other. */
static void check_options(void)
{
	if (cfg.default_max_tokens > cfg.context) {
		fprintf(stderr, "quota-sim: --default-max-tokens is above --context\n");
		exit(2);
	}
	/* The latency of the longest completion must fit an int64_t of ns. */
	if (cfg.per_token_us * cfg.context > UINT64_C(3600000000)) {
		fprintf(stderr, "quota-sim: --per-token-us * --context is above an hour\n");
		exit(2);
	}
}

/* Options into cfg; exits 2 with a message naming the option on error. */
static void parse_options(int argc, char **argv)
{
	enum {
		O_RPM = 256, O_TPM, O_RPD, O_TPD, O_BURST, O_REFUND, O_CONTEXT, O_DEFMAX,
		O_LAT, O_PERTOK, O_SEED, O_BODY, O_CONNS, O_KEYS, O_TRACE, O_VOCAB, O_CHARGE,
		O_COMPLETION
	};
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "rpm", required_argument, NULL, O_RPM },
		{ "tpm", required_argument, NULL, O_TPM },
		{ "rpd", required_argument, NULL, O_RPD },
		{ "tpd", required_argument, NULL, O_TPD },
		{ "burst", required_argument, NULL, O_BURST },
		{ "refund", required_argument, NULL, O_REFUND },
		{ "context", required_argument, NULL, O_CONTEXT },
		{ "default-max-tokens", required_argument, NULL, O_DEFMAX },
		{ "latency-ms", required_argument, NULL, O_LAT },
		{ "per-token-us", required_argument, NULL, O_PERTOK },
		{ "seed", required_argument, NULL, O_SEED },
		{ "max-body", required_argument, NULL, O_BODY },
		{ "max-connections", required_argument, NULL, O_CONNS },
		{ "max-keys", required_argument, NULL, O_KEYS },
		{ "trace", required_argument, NULL, O_TRACE },
		{ "vocab", required_argument, NULL, O_VOCAB },
		{ "charge", required_argument, NULL, O_CHARGE },
		{ "completion", required_argument, NULL, O_COMPLETION },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "p:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'p': cfg.port = (unsigned)opt_uint("port", optarg, 0, 65535); break;
		case O_RPM: cfg.limit[L_RPM] = opt_uint("rpm", optarg, 0, 1000000000); break;
		case O_TPM: cfg.limit[L_TPM] = opt_uint("tpm", optarg, 0, UINT64_C(1000000000000)); break;
		case O_RPD: cfg.limit[L_RPD] = opt_uint("rpd", optarg, 0, 1000000000); break;
		case O_TPD: cfg.limit[L_TPD] = opt_uint("tpd", optarg, 0, UINT64_C(1000000000000)); break;
		case O_BURST: cfg.burst_ppm = opt_fraction("burst", optarg); break;
		case O_REFUND: cfg.refund_actual = !opt_choice("refund", optarg, "actual", "none"); break;
		case O_CONTEXT: cfg.context = opt_uint("context", optarg, 1, TOKENS_MAX); break;
		case O_DEFMAX: cfg.default_max_tokens = opt_uint("default-max-tokens", optarg, 1, TOKENS_MAX); break;
		case O_LAT: cfg.latency_ms = opt_uint("latency-ms", optarg, 0, 600000); break;
		case O_PERTOK: cfg.per_token_us = opt_uint("per-token-us", optarg, 0, 100000); break;
		case O_SEED: cfg.seed = opt_uint("seed", optarg, 0, UINT64_MAX); break;
		case O_CHARGE: cfg.charge_usage = opt_choice("charge", optarg, "arrival", "usage"); break;
		case O_COMPLETION:
			cfg.completion_skewed = opt_choice("completion", optarg, "uniform", "skewed");
			break;
		case O_BODY: cfg.max_body = (size_t)opt_uint("max-body", optarg, 1024, 64 << 20); break;
		case O_CONNS: cfg.max_connections = (unsigned)opt_uint("max-connections", optarg, 1, 4096); break;
		case O_KEYS: cfg.max_keys = (unsigned)opt_uint("max-keys", optarg, 1, 65536); break;
		case O_TRACE: cfg.trace = opt_trace(optarg); break;
		case O_VOCAB: cfg.vocab = opt_vocab(optarg); break;
		case 'q': cfg.quiet = 1; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "quota-sim: unexpected argument '%s'\n", argv[optind]);
		exit(2);
	}
	check_options();
}

/* Listen, print the port, serve until SIGTERM/SIGINT, stop cleanly. */
int main(int argc, char **argv)
{
	struct sockaddr_in addr;
	pthread_condattr_t ca;
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;
	sigset_t sigs;
	int sig = 0;

	parse_options(argc, argv);
	st.keys = calloc(cfg.max_keys, sizeof(*st.keys));
	if (!st.keys) {
		fprintf(stderr, "quota-sim: out of memory\n");
		return 1;
	}
	st.rng = cfg.seed;
	st.start_ns = now_ns();
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&stop.cond, &ca);
	pthread_condattr_destroy(&ca);

	/* Block the stop signals in every thread; main takes them by sigwait. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t)cfg.port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
				     MHD_USE_ITC | (cfg.quiet ? 0 : MHD_USE_ERROR_LOG),
			     (uint16_t)cfg.port, NULL, NULL, on_request, NULL,
			     MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
			     MHD_OPTION_CONNECTION_LIMIT, cfg.max_connections,
			     MHD_OPTION_CONNECTION_TIMEOUT, 60u,
			     MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
			     MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "quota-sim: cannot listen on 127.0.0.1:%u\n", cfg.port);
		return 1;
	}
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	if (!info || !info->port) {
		fprintf(stderr, "quota-sim: cannot learn the bound port\n");
		MHD_stop_daemon(d);
		return 1;
	}
	printf("%u\n", (unsigned)info->port);
	fflush(stdout);
	logmsg("listening on 127.0.0.1:%u: rpm %" PRIu64 " tpm %" PRIu64 " rpd %" PRIu64
	       " tpd %" PRIu64 " burst %" PRIu64 "ppm refund %s latency %" PRIu64
	       "ms + %" PRIu64 "us/token seed %" PRIu64,
	       (unsigned)info->port, cfg.limit[L_RPM], cfg.limit[L_TPM], cfg.limit[L_RPD],
	       cfg.limit[L_TPD], cfg.burst_ppm, cfg.refund_actual ? "actual" : "none",
	       cfg.latency_ms, cfg.per_token_us, cfg.seed);

	while (sigwait(&sigs, &sig) != 0)
		;
	pthread_mutex_lock(&stop.lock);
	stop.stopping = 1;
	pthread_cond_broadcast(&stop.cond);
	pthread_mutex_unlock(&stop.lock);
	MHD_stop_daemon(d);
	pthread_mutex_lock(&st.lock);
	logmsg("stopping on signal %d: served %" PRIu64 ", 429 %" PRIu64 " (requests %" PRIu64
	       ", tokens %" PRIu64 ", too large %" PRIu64 "), 400 %" PRIu64,
	       sig, st.served, st.rejected_429, st.rejected_requests, st.rejected_tokens,
	       st.rejected_too_large, st.bad_request);
	pthread_mutex_unlock(&st.lock);
	if (cfg.trace)
		fclose(cfg.trace);
	bpe_free(cfg.vocab);
	free(st.keys);
	return 0;
}
