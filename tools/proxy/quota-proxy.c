/* SPDX-License-Identifier: MIT */
/*
 * quota-proxy.c - a local OpenAI-compatible proxy that reserves before it
 * forwards: any HTTP client (curl, an SDK, a vendor tool that only lets you
 * set OPENAI_BASE_URL) shares the host's limits through libquota with no
 * code change, together with every linked worker on the same segment.
 *
 * For POST /v1/chat/completions, /v1/completions and /v1/embeddings:
 *   parse + estimate (parse.c, estimate.c) -> quota_reserve({1, prompt,
 *   max_tokens}, --max-wait) -> forward (upstream.c, keep-alive) -> answer
 *   -> commit the reported usage. Streams (SSE) pass through event by event;
 *   the upstream is asked for the usage chunk, which is stripped again when
 *   the client did not ask for it; a client gone mid-stream aborts the
 *   upstream transfer and what was streamed is committed.
 *   Upstream 429 -> quota_backoff + the 429 passed on unchanged. Every
 *   answer's x-ratelimit-* headers are folded into the segment.
 *   Local refusals: 429 (rate, with retry-after and x-ratelimit-*), 429
 *   insufficient_quota (spend budget), 400 context_length_exceeded.
 * Any other request passes through untouched.
 *
 * HTTP is libmicrohttpd with a thread per connection, so a request waiting
 * for budget or for its upstream holds only its own connection. --workers N
 * forks N such servers on one port (SO_REUSEPORT). The Authorization header
 * is passed on and never logged.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "opt.h"
#include "parse.h"
#include "qhandle.h"
#include "quota.h"
#include "upstream.h"

#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)
#define MAPS_MAX 64

static struct config {
	char upstream[1024]; /* base URL without a trailing slash */
	const char *listen_addr;
	unsigned port;
	const char *segment, *quota;
	struct {
		const char *model, *quota;
	} map[MAPS_MAX];
	unsigned nmap;
	int64_t max_wait_ns;
	uint64_t default_max_tokens;
	uint64_t stream_step;    /* --stream-step: streams without max_tokens follow their output */
	size_t max_body, max_response;
	unsigned workers, max_connections;
	long upstream_timeout_ms;
	int pass_unknown, verbose, quiet;
} cfg = {
	.listen_addr = "127.0.0.1",
	.port = 8080,
	.max_wait_ns = 30 * NS_PER_S,
	.default_max_tokens = 4096,
	.max_body = 8u << 20,
	.max_response = 64u << 20,
	.workers = 1,
	.max_connections = 1024,
	.upstream_timeout_ms = 600000,
};

static volatile int stopping;

/* One log line on stderr (never a header value), unless --quiet. */
static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	va_list ap;

	if (cfg.quiet)
		return;
	va_start(ap, fmt);
	fprintf(stderr, "quota-proxy[%d]: ", (int)getpid());
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---- responses -------------------------------------------------------- */

/* Queue @len bytes of @body (copied) with @status and header pairs @hdr. */
static enum MHD_Result send_bytes(struct MHD_Connection *conn, unsigned status, const char *body,
				  size_t len, const char *const *hdr, const struct up_header *uh,
				  size_t nuh)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	char *copy = malloc(len ? len : 1); /* MUST_COPY without casting const away */

	if (!copy)
		return MHD_NO;
	memcpy(copy, body, len);
	resp = MHD_create_response_from_buffer(len, copy, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(copy);
		return MHD_NO;
	}
	for (size_t i = 0; i < nuh; i++)
		MHD_add_response_header(resp, uh[i].name, uh[i].value);
	for (; hdr && hdr[0]; hdr += 2)
		MHD_add_response_header(resp, hdr[0], hdr[1]);
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* An OpenAI-style error body {"error":{message,type,param,code}}. */
static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status, const char *type,
				  const char *code, const char *const *hdr, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status, const char *type,
				  const char *code, const char *const *hdr, const char *fmt, ...)
{
	static const char *const ct[] = { "Content-Type", "application/json", NULL };
	cJSON *root = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(root, "error");
	char msg[600], *text;
	const char *h[40];
	enum MHD_Result ret;
	va_list ap;
	int n = 0;

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
	text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text)
		return MHD_NO;
	h[n++] = ct[0];
	h[n++] = ct[1];
	for (; hdr && hdr[0] && n < 38; hdr += 2) {
		h[n++] = hdr[0];
		h[n++] = hdr[1];
	}
	h[n] = NULL;
	ret = send_bytes(conn, status, text, strlen(text), h, NULL, 0);
	free(text);
	return ret;
}

/* A duration the way OpenAI writes resets: "120ms", "7.66s", "6m0s". */
static void fmt_duration(int64_t ns, char *buf, size_t size)
{
	int64_t cs, m;

	if (ns < 0)
		ns = 0;
	if (ns < NS_PER_S) {
		snprintf(buf, size, "%" PRId64 "ms", (ns + NS_PER_MS - 1) / NS_PER_MS);
		return;
	}
	cs = (ns + 10 * NS_PER_MS - 1) / (10 * NS_PER_MS); /* hundredths, rounded up */
	m = cs / 6000;
	cs %= 6000;
	if (m)
		snprintf(buf, size, "%" PRId64 "m%" PRId64 ".%02" PRId64 "s", m, cs / 100, cs % 100);
	else
		snprintf(buf, size, "%" PRId64 ".%02" PRId64 "s", cs / 100, cs % 100);
}

/* x-ratelimit-* headers of a quota, in OpenAI's format. */
struct rl_headers {
	char v[6][32];
	const char *h[16];
	int n;
	int requests_short; /* the request limit is what is short */
};

static void rl_fill(struct rl_headers *rh, quota_client *qc, int qid)
{
	static const char *const names[2][3] = {
		{ "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
		  "x-ratelimit-reset-requests" },
		{ "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
		  "x-ratelimit-reset-tokens" },
	};
	static const int kinds[2] = { QUOTA_RPM, QUOTA_TPM };
	struct quota_info info;

	rh->n = 0;
	rh->requests_short = 0;
	if (qh_info(qc, qid, &info) == 0) {
		for (int i = 0; i < 2; i++) {
			const struct quota_limit_info *l = &info.rate[kinds[i]];
			int64_t reset;

			if (!l->limit)
				continue;
			/* Time until the bucket is full again. */
			reset = (int64_t)((double)(l->capacity - l->available) * (double)l->period_ns /
					  (double)l->limit);
			snprintf(rh->v[3 * i], 32, "%" PRIu64, l->limit);
			snprintf(rh->v[3 * i + 1], 32, "%" PRIu64, l->available);
			fmt_duration(reset, rh->v[3 * i + 2], 32);
			for (int k = 0; k < 3; k++) {
				rh->h[rh->n++] = names[i][k];
				rh->h[rh->n++] = rh->v[3 * i + k];
			}
			if (i == 0 && l->available < 1)
				rh->requests_short = 1;
		}
	}
	rh->h[rh->n] = NULL;
}

/* 429: no budget within --max-wait. */
static enum MHD_Result refuse_rate(struct MHD_Connection *conn, quota_client *qc, int qid,
				   const char *quota, int64_t retry_ns)
{
	struct rl_headers rh;
	char ms[32], s[32], when[32];
	const char *h[24];
	int n = 0;

	if (retry_ns < NS_PER_MS)
		retry_ns = NS_PER_MS;
	rl_fill(&rh, qc, qid);
	snprintf(ms, sizeof(ms), "%" PRId64, (retry_ns + NS_PER_MS - 1) / NS_PER_MS);
	snprintf(s, sizeof(s), "%" PRId64, (retry_ns + NS_PER_S - 1) / NS_PER_S);
	fmt_duration(retry_ns, when, sizeof(when));
	h[n++] = "retry-after-ms";
	h[n++] = ms;
	h[n++] = "retry-after";
	h[n++] = s;
	for (int i = 0; i < rh.n; i++)
		h[n++] = rh.h[i];
	h[n] = NULL;
	return send_error(conn, MHD_HTTP_TOO_MANY_REQUESTS, rh.requests_short ? "requests" : "tokens",
			  "rate_limit_exceeded", h,
			  "Rate limit reached for %s (shared on this host by quota-proxy): no budget "
			  "within %.1f s. Please try again in %s.",
			  quota, (double)cfg.max_wait_ns / 1e9, when);
}

/* ---- relaying --------------------------------------------------------- */

/* Per-connection request state: the body as it arrives. */
struct request {
	char *body;
	size_t len, cap;
	int too_big;
};

/*
 * One relayed exchange, metered or not. For a stream it is owned by the
 * MHD response and settled in its free callback; otherwise by the handler.
 */
struct relay {
	struct up_xfer up;
	char *send_body;         /* what went upstream when it differs from the client's */
	int metered, sse, strip_usage;
	/* metered only */
	quota_client *qc;
	int qid;
	struct quota_ticket t;
	int ticket_open;
	struct proxy_request pr;
	/* stream state */
	char *out;               /* bytes ready for the client */
	size_t out_off, out_len, out_cap;
	int eos;                 /* the upstream's stream ended normally */
	int have_usage;
	struct proxy_usage usage;
	uint64_t streamed_tokens; /* estimated output tokens passed on */
};

static struct relay *relay_new(void)
{
	return calloc(1, sizeof(struct relay));
}

/* The upstream answered 429: pause the quota host-wide for as long as it says. */
static void on_upstream_429(struct relay *r)
{
	int64_t ra = r->up.fb.retry_after_ns;
	int ret;

	if (ra < 0)
		ra = r->up.fb.reset_requests_ns > 0 ? r->up.fb.reset_requests_ns : NS_PER_S;
	ret = quota_backoff(r->qc, r->qid, ra);
	if (ret < 0)
		logmsg("quota_backoff: %s", quota_strerror(ret));
}

/*
 * Settle the ticket by what happened: 200 -> commit the usage (reported,
 * else estimated); 429 -> backoff and cancel; other answers -> cancel (not
 * charged); no answer -> commit the estimate if the request went out in
 * full (it may have been charged), else cancel. Then fold the answer's
 * rate-limit headers in and give the handle back.
 */
static void relay_settle(struct relay *r, int client_gone)
{
	int ret = 0;

	if (!r->metered || !r->ticket_open)
		goto out;
	r->ticket_open = 0;
	if (r->up.status == 200) {
		struct quota_cost used = { 1, r->pr.prompt_tokens, r->pr.max_tokens };

		if (r->have_usage) {
			used.input_tokens = r->usage.prompt_tokens;
			used.output_tokens = r->usage.completion_tokens;
		} else if (r->sse) {
			/* No usage seen (client gone, or an upstream that sends
			 * none): what was streamed, estimated. */
			used.output_tokens = r->streamed_tokens;
		}
		ret = quota_commit(r->qc, &r->t, &used);
		if (client_gone)
			logmsg("client gone mid-stream: committed %" PRIu64 " + %" PRIu64 " tokens",
			       used.input_tokens, used.output_tokens);
	} else if (r->up.status == 429) {
		on_upstream_429(r);
		ret = quota_cancel(r->qc, &r->t);
	} else if (r->up.status == 0 && up_request_sent(&r->up)) {
		struct quota_cost est = { 1, r->pr.prompt_tokens, r->pr.max_tokens };

		ret = quota_commit(r->qc, &r->t, &est);
	} else {
		ret = quota_cancel(r->qc, &r->t);
	}
	if (ret < 0)
		logmsg("settling a ticket: %s", quota_strerror(ret));
	if (r->up.status) {
		ret = quota_feedback_apply(r->qc, r->qid, &r->up.fb);
		if (ret < 0)
			logmsg("quota_feedback_apply: %s", quota_strerror(ret));
	}
out:
	if (r->qc) {
		qh_put(r->qc);
		r->qc = NULL;
	}
}

static void relay_free(struct relay *r)
{
	if (!r)
		return;
	up_end(&r->up);
	free(r->send_body);
	free(r->out);
	free(r);
}

/* Headers of an upstream answer that are the proxy's own business. */
static int hop_by_hop(const char *name)
{
	static const char *const hop[] = { "connection", "keep-alive", "transfer-encoding",
					   "content-length", "te", "trailer", "upgrade",
					   "proxy-authenticate", "proxy-connection", "date", NULL };

	for (int i = 0; hop[i]; i++)
		if (strcasecmp(name, hop[i]) == 0)
			return 1;
	return 0;
}

/* Pass on the upstream's headers (but the hop-by-hop ones) to @resp. */
static void copy_headers(struct MHD_Response *resp, const struct up_xfer *x)
{
	for (size_t i = 0; i < x->nheaders; i++)
		if (!hop_by_hop(x->headers[i].name))
			MHD_add_response_header(resp, x->headers[i].name, x->headers[i].value);
}

/* Append to the client-bound buffer. */
static int out_append(struct relay *r, const char *p, size_t n)
{
	if (r->out_off == r->out_len)
		r->out_off = r->out_len = 0;
	if (r->out_len + n > r->out_cap) {
		size_t cap = r->out_cap ? r->out_cap : 16384;
		char *q;

		while (cap < r->out_len + n)
			cap *= 2;
		q = realloc(r->out, cap);
		if (!q)
			return -ENOMEM;
		r->out = q;
		r->out_cap = cap;
	}
	memcpy(r->out + r->out_len, p, n);
	r->out_len += n;
	return 0;
}

/*
 * With include_usage the upstream adds "usage":null to every chunk; a client
 * that did not ask gets the chunk without it, as a direct call would. 0 if
 * the event went out without it, 1 if it had none (nothing done).
 */
static int strip_null_usage(struct relay *r, const char *ev, size_t n)
{
	static const char member[] = ",\"usage\":null";
	const char *at = memmem(ev, n, member, sizeof(member) - 1);
	size_t pre;

	if (!at)
		return 1;
	pre = (size_t)(at - ev);
	if (out_append(r, ev, pre) < 0 ||
	    out_append(r, at + sizeof(member) - 1, n - pre - (sizeof(member) - 1)) < 0)
		return 1; /* out of memory: pass it on as it is */
	return 0;
}

/* --stream-step: a stream that set no max_tokens was reserved one step of
 * output; as it outgrows what is reserved, take another step
 * (quota_extend, waiting up to --max-wait: the stream is paced by the
 * budget). Refused, it goes on: what it uses beyond is debt at commit. */
static void follow_stream(struct relay *r)
{
	while (cfg.stream_step && r->ticket_open && r->pr.stream && !r->pr.max_tokens_given &&
	       r->streamed_tokens > r->pr.max_tokens) {
		int rc = quota_extend(r->qc, &r->t, &(struct quota_cost){ 0, 0, cfg.stream_step },
				      cfg.max_wait_ns);

		if (rc < 0) {
			logmsg("stream of %" PRIu64 " tokens not extended: %s", r->streamed_tokens,
			       quota_strerror(rc));
			r->pr.max_tokens_given = 1; /* once */
			return;
		}
		r->pr.max_tokens += cfg.stream_step;
	}
}

/* Move what the upstream sent to the client-bound buffer: whole SSE events
 * (reading their usage, dropping the usage chunk we asked for), or raw
 * bytes. @flush: the upstream is done, pass on a partial event too. */
static int relay_pump(struct relay *r, int flush)
{
	struct up_xfer *x = &r->up;

	while (x->off < x->len) {
		size_t body_len, n;

		if (!r->sse) {
			n = x->len - x->off;
			if (out_append(r, x->buf + x->off, n) < 0)
				return -ENOMEM;
			x->off += n;
			break;
		}
		n = proxy_sse_next(x->buf + x->off, x->len - x->off, &body_len);
		if (!n) {
			if (!flush)
				break;
			n = body_len = x->len - x->off;
		}
		if (r->metered) {
			struct proxy_event ev;

			proxy_parse_event(x->buf + x->off, body_len, &ev);
			r->streamed_tokens += ev.output_tokens;
			follow_stream(r);
			if (ev.has_usage) {
				r->have_usage = 1;
				r->usage = ev.u;
			}
			if (ev.usage_only && r->strip_usage) {
				x->off += n;
				continue;
			}
			if (r->strip_usage && strip_null_usage(r, x->buf + x->off, n) == 0) {
				x->off += n;
				continue;
			}
		}
		if (out_append(r, x->buf + x->off, n) < 0)
			return -ENOMEM;
		x->off += n;
	}
	return 0;
}

/* MHD content reader of a streamed answer: blocks (thread per connection)
 * until there is something to pass on. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct relay *r = cls;

	(void)pos;
	for (;;) {
		if (r->out_off < r->out_len) {
			size_t n = r->out_len - r->out_off;

			if (n > max)
				n = max;
			memcpy(buf, r->out + r->out_off, n);
			r->out_off += n;
			return (ssize_t)n;
		}
		if (r->up.done) {
			if (r->up.off < r->up.len) {
				if (relay_pump(r, 1) < 0)
					return MHD_CONTENT_READER_END_WITH_ERROR;
				continue;
			}
			if (r->up.result != CURLE_OK || r->up.overflow)
				return MHD_CONTENT_READER_END_WITH_ERROR;
			r->eos = 1;
			return MHD_CONTENT_READER_END_OF_STREAM;
		}
		up_wait_data(&r->up, &stopping);
		if (relay_pump(r, 0) < 0)
			return MHD_CONTENT_READER_END_WITH_ERROR;
	}
}

/* The streamed answer is over (sent, or the client went): settle, free. */
static void stream_free(void *cls)
{
	struct relay *r = cls;
	int gone = !r->eos;

	if (gone && !r->up.done)
		r->up.done = 1; /* up_end() aborts the transfer */
	relay_settle(r, gone && !r->have_usage);
	relay_free(r);
}

struct hdr_ctx {
	struct up_xfer *x;
	int metered, failed;
};

/* Copy one client header to the upstream request (but hop-by-hop ones). */
static enum MHD_Result add_client_header(void *cls, enum MHD_ValueKind kind, const char *key,
					 const char *value)
{
	static const char *const skip[] = { "host", "connection", "keep-alive", "transfer-encoding",
					    "te", "upgrade", "content-length", "expect",
					    "proxy-authorization", "proxy-connection", NULL };
	struct hdr_ctx *c = cls;
	char *line;

	(void)kind;
	for (int i = 0; skip[i]; i++)
		if (strcasecmp(key, skip[i]) == 0)
			return MHD_YES;
	/* The proxy reads metered answers: no compression for those. */
	if (c->metered && strcasecmp(key, "accept-encoding") == 0)
		return MHD_YES;
	if (asprintf(&line, "%s: %s", key, value ? value : "") < 0) {
		c->failed = 1;
		return MHD_NO;
	}
	if (up_add_header(c->x, line) < 0)
		c->failed = 1;
	free(line);
	return MHD_YES;
}

/* Append query argument @key=@value, escaped, to the URL being built. */
struct url_ctx {
	char *url;
	size_t len, cap;
	int first, failed;
};

static int url_append(struct url_ctx *u, const char *s)
{
	size_t n = strlen(s);

	if (u->len + n + 1 > u->cap) {
		size_t cap = (u->len + n + 1) * 2;
		char *p = realloc(u->url, cap);

		if (!p)
			return -1;
		u->url = p;
		u->cap = cap;
	}
	memcpy(u->url + u->len, s, n + 1);
	u->len += n;
	return 0;
}

static enum MHD_Result add_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
				     const char *value)
{
	struct url_ctx *u = cls;
	char *k = curl_easy_escape(NULL, key, 0), *v = value ? curl_easy_escape(NULL, value, 0) : NULL;

	(void)kind;
	if (!k || (value && !v) || url_append(u, u->first ? "?" : "&") < 0 || url_append(u, k) < 0 ||
	    (v && (url_append(u, "=") < 0 || url_append(u, v) < 0)))
		u->failed = 1;
	u->first = 0;
	curl_free(k);
	curl_free(v);
	return MHD_YES;
}

/* The upstream URL of @path (and the request's query), or NULL. */
static char *upstream_url(struct MHD_Connection *conn, const char *path)
{
	struct url_ctx u = { .first = 1 };
	size_t ul = strlen(cfg.upstream);

	if (url_append(&u, cfg.upstream) < 0)
		return NULL;
	/* "--upstream https://host/v1" and a client asking for /v1/...: one /v1. */
	if (ul >= 3 && strcmp(cfg.upstream + ul - 3, "/v1") == 0 && strncmp(path, "/v1/", 4) == 0) {
		u.len -= 3;
		u.url[u.len] = '\0';
	}
	if (url_append(&u, path) < 0) {
		free(u.url);
		return NULL;
	}
	MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_query_arg, &u);
	if (u.failed) {
		free(u.url);
		return NULL;
	}
	return u.url;
}

/* Start the upstream exchange of @r: headers, URL, body; wait for its headers. */
static int relay_start(struct relay *r, struct MHD_Connection *conn, const char *method,
		       const char *path, const char *body, size_t len)
{
	struct hdr_ctx hc = { .x = &r->up, .metered = r->metered };
	char *url = upstream_url(conn, path);
	int ret;

	if (!url)
		return -ENOMEM;
	MHD_get_connection_values(conn, MHD_HEADER_KIND, add_client_header, &hc);
	if (hc.failed || up_add_header(&r->up, "Expect:") < 0) {
		free(url);
		return -ENOMEM;
	}
	ret = up_begin(&r->up, method, url, body, len, cfg.max_response);
	free(url);
	if (ret < 0)
		return ret;
	up_wait_headers(&r->up);
	return 0;
}

/* Answer the client with what the upstream sent: streamed (the relay is
 * then the response's), or buffered whole (the caller keeps the relay). */
static enum MHD_Result relay_respond(struct relay *r, struct MHD_Connection *conn, int stream,
				     int *handed_over)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	*handed_over = 0;
	if (stream) {
		resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, r,
							 stream_free);
		if (!resp)
			return MHD_NO;
		*handed_over = 1;
		copy_headers(resp, &r->up);
		ret = MHD_queue_response(conn, (unsigned)r->up.status, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	up_wait_done(&r->up);
	if (r->up.status == 0 || r->up.overflow) {
		const char *why = r->up.overflow ? "the upstream's answer is too large"
						 : curl_easy_strerror(r->up.result);

		return send_error(conn, MHD_HTTP_BAD_GATEWAY, "server_error", "upstream_error", NULL,
				  "quota-proxy: the upstream did not answer: %s", why);
	}
	if (r->metered && r->up.status == 200 &&
	    proxy_parse_usage(r->up.buf + r->up.off, r->up.len - r->up.off, &r->usage) == 0)
		r->have_usage = 1;
	resp = MHD_create_response_from_buffer(r->up.len - r->up.off, r->up.buf + r->up.off,
					       MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	copy_headers(resp, &r->up);
	ret = MHD_queue_response(conn, (unsigned)r->up.status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* Any request the proxy does not meter: relayed as it is, streamed back. */
static enum MHD_Result handle_pass(struct MHD_Connection *conn, const char *method,
				   const char *path, struct request *req)
{
	struct relay *r = relay_new();
	enum MHD_Result ret;
	int handed;

	if (!r)
		return MHD_NO;
	if (relay_start(r, conn, method, path, req->body, req->len) < 0 || r->up.status == 0) {
		up_wait_done(&r->up);
		relay_free(r);
		return send_error(conn, MHD_HTTP_BAD_GATEWAY, "server_error", "upstream_error", NULL,
				  "quota-proxy: the upstream did not answer");
	}
	ret = relay_respond(r, conn, 1, &handed);
	if (!handed)
		relay_free(r);
	return ret;
}

/* The quota of a request: -q, else --map of its model, else the model. */
static const char *quota_name(const char *model)
{
	if (cfg.quota)
		return cfg.quota;
	for (unsigned i = 0; i < cfg.nmap; i++)
		if (strcmp(cfg.map[i].model, model) == 0)
			return cfg.map[i].quota;
	return model;
}

/* POST to a metered endpoint: estimate, reserve, relay, settle. */
static enum MHD_Result handle_metered(struct MHD_Connection *conn, const char *path,
				      enum est_endpoint ep, struct request *req)
{
	struct relay *r;
	struct quota_cost cost;
	const char *quota;
	const char *body = req->body;
	size_t len = req->len;
	char err[512];
	enum MHD_Result ret;
	int rc, handed;

	if (req->too_big)
		return send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
				  NULL, "request body above %zu bytes", cfg.max_body);
	r = relay_new();
	if (!r)
		return MHD_NO;
	r->metered = 1;
	rc = proxy_parse_request(body, len, ep,
				 ep == EST_COMPLETION ? (cfg.default_max_tokens < 16 ? cfg.default_max_tokens : 16)
						      : cfg.default_max_tokens,
				 &r->pr, err, sizeof(err));
	if (rc < 0) {
		relay_free(r);
		if (rc == -ENOMEM)
			return MHD_NO;
		return send_error(conn, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL, NULL,
				  "%s", err);
	}
	quota = quota_name(r->pr.model);
	r->qc = qh_get(&rc);
	if (!r->qc) {
		relay_free(r);
		return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, NULL,
				  "quota-proxy: cannot open the quota segment: %s",
				  quota_strerror(rc));
	}
	r->qid = quota_find(r->qc, quota);
	if (r->qid < 0) {
		if (cfg.pass_unknown)
			ret = handle_pass(conn, "POST", path, req);
		else
			ret = send_error(conn, MHD_HTTP_NOT_FOUND, "invalid_request_error",
					 "model_not_found", NULL,
					 "The model '%s' has no quota '%s' on this host (quota-proxy; "
					 "see --map, -q, --pass-unknown).",
					 r->pr.model, quota);
		relay_settle(r, 0);
		relay_free(r);
		return ret;
	}
	if (cfg.stream_step && r->pr.stream && !r->pr.max_tokens_given)
		r->pr.max_tokens = cfg.stream_step; /* then follow_stream() */
	cost = (struct quota_cost){ 1, r->pr.prompt_tokens, r->pr.max_tokens };
	rc = quota_reserve(r->qc, r->qid, &cost, cfg.max_wait_ns, &r->t);
	if (rc < 0) {
		int64_t retry = r->t.retry_after_ns;

		if (rc == -EAGAIN)
			ret = refuse_rate(conn, r->qc, r->qid, quota, retry);
		else if (rc == -EDQUOT)
			ret = send_error(conn, MHD_HTTP_TOO_MANY_REQUESTS, "insufficient_quota",
					 "insufficient_quota",
					 (const char *const[]){ "x-should-retry", "false", NULL },
					 "The spend budget of quota '%s' for this period is used up "
					 "(quota-proxy).",
					 quota);
		else if (rc == -E2BIG)
			ret = send_error(conn, MHD_HTTP_BAD_REQUEST, "invalid_request_error",
					 "context_length_exceeded", NULL,
					 "This request can never fit quota '%s': about %" PRIu64
					 " prompt tokens (estimated) + %" PRIu64
					 " max tokens is above its context window or a limit's capacity.",
					 quota, r->pr.prompt_tokens, r->pr.max_tokens);
		else
			ret = send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, NULL,
					 "quota-proxy: quota_reserve: %s", quota_strerror(rc));
		relay_settle(r, 0);
		relay_free(r);
		return ret;
	}
	r->ticket_open = 1;
	if (r->pr.stream) {
		r->sse = 1;
		if (!r->pr.include_usage) {
			r->send_body = proxy_stream_body(body, len, &len);
			if (!r->send_body) {
				relay_settle(r, 0);
				relay_free(r);
				return MHD_NO;
			}
			body = r->send_body;
			r->strip_usage = 1;
		}
	}
	if (cfg.verbose)
		logmsg("%s %s quota %s: reserved 1 + %" PRIu64 " + %" PRIu64 " tokens after %.3f ms",
		       path, r->pr.stream ? "stream" : "", quota, r->pr.prompt_tokens,
		       r->pr.max_tokens, (double)r->t.waited_ns / 1e6);
	rc = relay_start(r, conn, "POST", path, body, len);
	if (rc < 0) {
		relay_settle(r, 0);
		relay_free(r);
		return MHD_NO;
	}
	ret = relay_respond(r, conn, r->sse && r->up.status == 200, &handed);
	if (!handed) {
		relay_settle(r, 0);
		relay_free(r);
	}
	return ret;
}

/* The metered endpoint of @url, or -1. */
static int metered_endpoint(const char *url)
{
	if (strncmp(url, "/v1/", 4) == 0)
		url += 3;
	if (strcmp(url, "/chat/completions") == 0)
		return EST_CHAT;
	if (strcmp(url, "/completions") == 0)
		return EST_COMPLETION;
	if (strcmp(url, "/embeddings") == 0)
		return EST_EMBEDDING;
	return -1;
}

/* Append an upload chunk, up to --max-body; past that only note it. */
static int request_append(struct request *r, const char *data, size_t n)
{
	if (r->too_big || n > cfg.max_body - r->len) {
		r->too_big = 1;
		return 0;
	}
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;
		char *p;

		while (cap < r->len + n + 1)
			cap *= 2;
		p = realloc(r->body, cap);
		if (!p)
			return -ENOMEM;
		r->body = p;
		r->cap = cap;
	}
	memcpy(r->body + r->len, data, n);
	r->len += n;
	r->body[r->len] = '\0';
	return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct request *req = *con_cls;
	int ep;

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
	ep = metered_endpoint(url);
	if (ep >= 0 && strcmp(method, "POST") == 0)
		return handle_metered(conn, url, (enum est_endpoint)ep, req);
	if (req->too_big)
		return send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
				  NULL, "request body above %zu bytes", cfg.max_body);
	return handle_pass(conn, method, url, req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct request *req = *con_cls;

	(void)cls;
	(void)conn;
	(void)toe;
	if (req) {
		free(req->body);
		free(req);
	}
	*con_cls = NULL;
}

/* ---- serving ---------------------------------------------------------- */

/* A listening (or, @listen_now 0, only bound) socket on --listen:@port with
 * SO_REUSEPORT; the bound port in *@bound. */
static int make_socket(unsigned port, int listen_now, unsigned *bound)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd, one = 1;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, cfg.listen_addr, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
		sl = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, cfg.listen_addr, &((struct sockaddr_in6 *)&ss)->sin6_addr) ==
		   1) {
		ss.ss_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
		sl = sizeof(struct sockaddr_in6);
	} else {
		fprintf(stderr, "quota-proxy: --listen %s: not an IPv4 or IPv6 address\n",
			cfg.listen_addr);
		return -1;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || (listen_now && listen(fd, 1024) < 0)) {
		fprintf(stderr, "quota-proxy: cannot listen on %s:%u: %s\n", cfg.listen_addr, port,
			strerror(errno));
		close(fd);
		return -1;
	}
	sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	*bound = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					       : ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

/* A second SIGTERM, or a stop that hangs, ends the process at once. */
static void *stop_watchdog(void *arg)
{
	(void)arg;
	sleep(5);
	logmsg("still stopping after 5 s: exiting");
	_exit(1);
	return NULL;
}

/*
 * Serve on @port until SIGTERM/SIGINT. @ready_fd (>= 0) gets one byte once
 * listening; with @print_port the port goes to stdout. Exit status.
 */
static int serve(unsigned port, int ready_fd, int print_port)
{
	struct MHD_Daemon *d;
	sigset_t sigs;
	unsigned bound;
	pthread_t wd;
	int fd, sig = 0, r;

	r = qh_init(cfg.segment);
	if (r < 0) {
		fprintf(stderr, "quota-proxy: quota_open(%s): %s\n",
			cfg.segment ? cfg.segment : "$QUOTA_SEGMENT", quota_strerror(r));
		return 1;
	}
	if (up_global_init(cfg.upstream_timeout_ms, 10000) < 0) {
		fprintf(stderr, "quota-proxy: cannot initialise libcurl\n");
		return 1;
	}
	fd = make_socket(port, 1, &bound);
	if (fd < 0)
		return 1;
	d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
				     MHD_USE_ITC | (cfg.quiet ? 0 : MHD_USE_ERROR_LOG),
			     0, NULL, NULL, on_request, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
			     MHD_OPTION_CONNECTION_LIMIT, cfg.max_connections,
			     MHD_OPTION_CONNECTION_TIMEOUT, 600u, MHD_OPTION_NOTIFY_COMPLETED,
			     on_completed, NULL, MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "quota-proxy: cannot start the HTTP server\n");
		close(fd);
		return 1;
	}
	if (print_port) {
		printf("%u\n", bound);
		fflush(stdout);
	}
	if (ready_fd >= 0) {
		if (write(ready_fd, "r", 1) != 1)
			logmsg("cannot tell the parent process it is ready");
		close(ready_fd);
	}
	logmsg("listening on %s:%u, upstream %s, segment %s", cfg.listen_addr, bound, cfg.upstream,
	       cfg.segment ? cfg.segment : "$QUOTA_SEGMENT");
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	while (sigwait(&sigs, &sig) != 0)
		;
	stopping = 1;
	pthread_create(&wd, NULL, stop_watchdog, NULL);
	MHD_stop_daemon(d);
	close(fd);
	qh_close_all();
	up_global_cleanup();
	return 0;
}

/* --workers N: N servers on one port, this process supervising them. */
static int run_workers(void)
{
	pid_t *kids = calloc(cfg.workers, sizeof(*kids));
	unsigned bound, started = 0;
	int fd, pipefd[2], status = 0, sig = 0, rc = 0;
	sigset_t sigs;
	char c;

	if (!kids)
		return 1;
	/* Bound, not listening: it holds the port, receives no connections. */
	fd = make_socket(cfg.port, 0, &bound);
	if (fd < 0 || pipe(pipefd) < 0)
		return 1;
	for (unsigned i = 0; i < cfg.workers; i++) {
		pid_t p = fork();

		if (p < 0) {
			rc = 1;
			break;
		}
		if (p == 0) {
			close(pipefd[0]);
			close(fd);
			_exit(serve(bound, pipefd[1], 0));
		}
		kids[started++] = p;
	}
	close(pipefd[1]);
	for (unsigned i = 0; rc == 0 && i < started; i++)
		if (read(pipefd[0], &c, 1) != 1)
			rc = 1; /* a worker died before listening */
	close(pipefd[0]);
	if (rc == 0) {
		printf("%u\n", bound);
		fflush(stdout);
		sigemptyset(&sigs);
		sigaddset(&sigs, SIGTERM);
		sigaddset(&sigs, SIGINT);
		sigaddset(&sigs, SIGCHLD);
		while (sigwait(&sigs, &sig) != 0)
			;
		if (sig == SIGCHLD) {
			logmsg("a worker process ended: stopping the others");
			rc = 1;
		}
	}
	for (unsigned i = 0; i < started; i++)
		kill(kids[i], SIGTERM);
	for (unsigned i = 0; i < started; i++)
		waitpid(kids[i], &status, 0);
	close(fd);
	free(kids);
	return rc;
}

/* ---- options ---------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: quota-proxy --upstream URL [OPTION]...\n"
		"A local OpenAI-compatible proxy that reserves each request's budget from\n"
		"libquota's shared segment before forwarding it, and commits the usage the\n"
		"answer reports. Prints the bound port as its first line on stdout.\n"
		"See quota-proxy(1).\n"
		"\n"
		"  -u, --upstream URL       the provider's base URL (e.g. https://api.openai.com/v1)\n"
		"  -p, --port N             TCP port (default 8080; 0 = pick a free one)\n"
		"      --listen ADDR        address to listen on (default 127.0.0.1)\n"
		"  -S, --segment NAME       libquota segment (default $QUOTA_SEGMENT, else \"quota\")\n"
		"  -q, --quota NAME         reserve every request from this quota\n"
		"      --map MODEL=QUOTA    the quota of a model (repeatable); default: the model\n"
		"      --pass-unknown       forward requests of models with no quota, unmetered\n"
		"      --max-wait DUR       longest wait for budget before a 429 (default 30s)\n"
		"      --default-max-tokens N  reserved when a request sets none (default 4096)\n"
		"      --stream-step N      a stream without max_tokens reserves N output tokens\n"
		"                           and N more each time it outgrows them (quota_extend;\n"
		"                           default 0: the default max tokens at once)\n"
		"      --max-body BYTES     largest request body (default 8388608)\n"
		"      --workers N          N server processes on one port (default 1)\n"
		"      --max-connections N  client connections per process (default 1024)\n"
		"      --upstream-timeout DUR  longest exchange with the upstream (default 10m)\n"
		"  -v, --verbose            a log line per metered request\n"
		"      --quiet              no log lines\n"
		"  -h, --help               this text\n");
}

static uint64_t opt_uint(const char *name, const char *s, uint64_t lo, uint64_t hi)
{
	return tool_opt_uint("quota-proxy", name, s, lo, hi);
}

static int64_t opt_duration(const char *name, const char *s)
{
	int64_t ns;
	int r = quota_parse_duration(s, &ns);

	if (r < 0) {
		fprintf(stderr, "quota-proxy: --%s: '%s': %s (e.g. \"30s\", \"1m30s\", \"0.5\")\n",
			name, s, r == -ERANGE ? "too long" : "not a duration");
		exit(2);
	}
	return ns;
}

static void parse_options(int argc, char **argv)
{
	enum {
		O_LISTEN = 256, O_MAP, O_PASS, O_WAIT, O_DEFMAX, O_BODY, O_WORKERS, O_CONNS, O_UTIMEOUT, O_QUIET,
		O_STEP
	};
	static const struct option opts[] = {
		{ "upstream", required_argument, NULL, 'u' },
		{ "port", required_argument, NULL, 'p' },
		{ "listen", required_argument, NULL, O_LISTEN },
		{ "segment", required_argument, NULL, 'S' },
		{ "quota", required_argument, NULL, 'q' },
		{ "map", required_argument, NULL, O_MAP },
		{ "pass-unknown", no_argument, NULL, O_PASS },
		{ "max-wait", required_argument, NULL, O_WAIT },
		{ "default-max-tokens", required_argument, NULL, O_DEFMAX },
		{ "stream-step", required_argument, NULL, O_STEP },
		{ "max-body", required_argument, NULL, O_BODY },
		{ "workers", required_argument, NULL, O_WORKERS },
		{ "max-connections", required_argument, NULL, O_CONNS },
		{ "upstream-timeout", required_argument, NULL, O_UTIMEOUT },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, O_QUIET },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *up = NULL;
	char *eq;
	int c;
	int64_t d;

	while ((c = getopt_long(argc, argv, "u:p:S:q:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'u': up = optarg; break;
		case 'p': cfg.port = (unsigned)opt_uint("port", optarg, 0, 65535); break;
		case O_LISTEN: cfg.listen_addr = optarg; break;
		case 'S': cfg.segment = optarg; break;
		case 'q': cfg.quota = optarg; break;
		case O_MAP:
			eq = strchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1] || cfg.nmap >= MAPS_MAX) {
				fprintf(stderr, "quota-proxy: --map: expected MODEL=QUOTA (at most %d), "
						"got '%s'\n", MAPS_MAX, optarg);
				exit(2);
			}
			*eq = '\0';
			cfg.map[cfg.nmap].model = optarg;
			cfg.map[cfg.nmap++].quota = eq + 1;
			break;
		case O_PASS: cfg.pass_unknown = 1; break;
		case O_WAIT: cfg.max_wait_ns = opt_duration("max-wait", optarg); break;
		case O_DEFMAX:
			cfg.default_max_tokens = opt_uint("default-max-tokens", optarg, 1, UINT64_C(1) << 40);
			break;
		case O_STEP:
			cfg.stream_step = opt_uint("stream-step", optarg, 0, UINT64_C(1) << 40);
			break;
		case O_BODY: cfg.max_body = (size_t)opt_uint("max-body", optarg, 1024, 1u << 30); break;
		case O_WORKERS: cfg.workers = (unsigned)opt_uint("workers", optarg, 1, 256); break;
		case O_CONNS: cfg.max_connections = (unsigned)opt_uint("max-connections", optarg, 1, 65536); break;
		case O_UTIMEOUT:
			d = opt_duration("upstream-timeout", optarg);
			cfg.upstream_timeout_ms = (long)(d / NS_PER_MS);
			if (cfg.upstream_timeout_ms < 1)
				cfg.upstream_timeout_ms = 1;
			break;
		case 'v': cfg.verbose = 1; break;
		case O_QUIET: cfg.quiet = 1; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "quota-proxy: unexpected argument '%s'\n", argv[optind]);
		exit(2);
	}
	if (!up) {
		fprintf(stderr, "quota-proxy: --upstream URL is required (try --help)\n");
		exit(2);
	}
	if ((strncmp(up, "http://", 7) != 0 && strncmp(up, "https://", 8) != 0) ||
	    strlen(up) >= sizeof(cfg.upstream) - 1) {
		fprintf(stderr, "quota-proxy: --upstream: expected an http:// or https:// URL of at "
				"most %zu bytes, got '%s'\n", sizeof(cfg.upstream) - 2, up);
		exit(2);
	}
	snprintf(cfg.upstream, sizeof(cfg.upstream), "%s", up);
	while (strlen(cfg.upstream) > 8 && cfg.upstream[strlen(cfg.upstream) - 1] == '/')
		cfg.upstream[strlen(cfg.upstream) - 1] = '\0';
}

int main(int argc, char **argv)
{
	sigset_t sigs;

	parse_options(argc, argv);
	/* Stop signals go to sigwait in the main thread of each process. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (cfg.workers > 1)
		return run_workers();
	return serve(cfg.port, -1, 1);
}
