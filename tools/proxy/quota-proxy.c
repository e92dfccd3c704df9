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
 * One thread serves everything: an epoll loop (serve()) over libmicrohttpd
 * in external epoll mode, libcurl's multi socket interface (upstream.c) and
 * a signalfd. Nothing on it blocks: a request short of budget reserves with
 * timeout 0 and waits, suspended, in a FIFO line for the retry time the
 * library gave (line_*); a request at the upstream is suspended until its
 * answer can be passed on; a stream's reader suspends until the next bytes.
 * So the process takes one client slot of the segment, whatever the number
 * of connections. --workers N forks N such servers on one port
 * (SO_REUSEPORT). Each registers itself for `quotactl proxies`
 * (tools/common/proxyreg.h). The Authorization header is passed on and
 * never logged.
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
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "httpbody.h"
#include "opt.h"
#include "parse.h"
#include "proxyreg.h"
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

/* Where a request is (see on_request()). */
enum rq_state {
	RQ_BODY,        /* its body is arriving */
	RQ_WAIT_BUDGET, /* suspended, in the budget line */
	RQ_WAIT_UP,     /* suspended until the upstream's answer can be passed on */
	RQ_READY,       /* resumed: queue the answer, or the refusal */
	RQ_ANSWERED,    /* a response is queued */
};

struct relay;
struct request;

/* The epoll data of a client watched while it waits in line. */
struct gone_watch {
	void *tag; /* &tag_client */
	struct request *q;
};

/* Per-request state (MHD's con_cls), from the first byte to the answer. */
struct request {
	char *body;
	size_t len, cap;
	int too_big;
	enum rq_state state;
	struct MHD_Connection *conn;
	const char *path;          /* MHD's, valid for the request */
	int suspended;
	struct relay *r;           /* the exchange, while the request owns it */
	struct relay *streaming;   /* the exchange its streamed response owns */
	struct request *prev, *next;   /* all requests (stop) */
	/* budget line */
	struct request *lprev, *lnext;
	int in_line;
	int64_t deadline_ns;       /* --max-wait after it arrived */
	int64_t next_try_ns;       /* when to try to reserve again */
	struct gone_watch gone;    /* its epoll data while in line */
	int client_fd;             /* watched for a hang-up while in line; -1 */
	int refusal;               /* at RQ_READY: the negative errno that refused it */
	int64_t retry_ns;          /* with -EAGAIN: retry after */
	const char *quota;
};

/*
 * One relayed exchange, metered or not. For a stream it is owned by the
 * MHD response and settled in its free callback; otherwise by the request.
 */
struct relay {
	struct up_xfer up;
	struct request *req;     /* NULL once the request is over */
	char *send_body;         /* what went upstream when it differs from the client's */
	int metered, sse, strip_usage, started;
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

/* The registry record quotactl reads (NULL if registering failed). */
static struct proxyreg *reg;
#define STAT(field, d)                                     \
	do {                                               \
		if (reg)                                   \
			proxyreg_add(&reg->field, (d));    \
	} while (0)

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* ---- suspend/resume: nothing blocks the event loop --------------------- */

static int resumed;                /* connections resumed since the last MHD_run() */
static int loop_ep = -1;           /* the event loop's epoll instance */
/* epoll tags of the event loop's sources; curl's sockets and waiting
 * clients carry theirs first in their epoll data. */
static int tag_mhd, tag_signal, tag_curl, tag_client;
static struct request *requests;   /* all requests, for a stop */

static void rq_suspend(struct request *q)
{
	if (!q->suspended) {
		q->suspended = 1;
		MHD_suspend_connection(q->conn);
	}
}

static void rq_resume(struct request *q)
{
	if (q->suspended) {
		q->suspended = 0;
		resumed = 1;
		MHD_resume_connection(q->conn);
	}
}

static struct relay *relay_new(struct request *q)
{
	struct relay *r = calloc(1, sizeof(struct relay));

	if (r)
		r->req = q;
	return r;
}
static void line_kick(void);
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
		STAT(upstream_429, 1);
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
	line_kick(); /* budget or a slot may have come back */
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
	if (r->started)
		STAT(in_flight, -1);
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

/* Move what the upstream sent to the client-bound buffer: whole SSE events
 * (reading their usage, dropping the usage chunk we asked for), or raw
 * bytes. @flush: the upstream is done, pass on a partial event too. */
/* --stream-step: a stream that set no max_tokens was reserved one step of
 * output; as it outgrows what is reserved, take another step
 * (quota_extend). The event loop never waits: an extension refused at once
 * leaves the stream going, and what it uses beyond its reservation is
 * charged as debt at commit. */
static void follow_stream(struct relay *r)
{
	while (cfg.stream_step && r->ticket_open && r->pr.stream && !r->pr.max_tokens_given &&
	       r->streamed_tokens > r->pr.max_tokens) {
		int rc = quota_extend(r->qc, &r->t, &(struct quota_cost){ 0, 0, cfg.stream_step }, 0);

		if (rc < 0) {
			logmsg("stream of %" PRIu64 " tokens not extended: %s (charged as debt at commit)",
			       r->streamed_tokens, quota_strerror(rc));
			r->pr.max_tokens_given = 1; /* once */
			return;
		}
		r->pr.max_tokens += cfg.stream_step;
	}
}

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

/*
 * MHD content reader of a streamed answer: what the upstream sent so far;
 * with nothing yet, the connection is suspended until relay_notify()
 * resumes it (never a wait on the event loop).
 */
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
		if (stopping)
			return MHD_CONTENT_READER_END_WITH_ERROR;
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
		if (r->up.off < r->up.len) {
			if (relay_pump(r, 0) < 0)
				return MHD_CONTENT_READER_END_WITH_ERROR;
			if (r->out_off < r->out_len)
				continue;
		}
		if (!r->req)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		rq_suspend(r->req);
		return 0;
	}
}

/* The streamed answer is over (sent, or the client went): settle, free. */
static void stream_free(void *cls)
{
	struct relay *r = cls;
	int gone = !r->eos;

	if (r->req)
		r->req->streaming = NULL;
	if (gone && !r->up.done)
		r->up.done = 1; /* up_end() aborts the transfer */
	relay_settle(r, gone && !r->have_usage);
	relay_free(r);
}

/* Upstream progress (from the event loop): resume the request when what
 * it waits for is there. */
static void relay_notify(struct up_xfer *x, enum up_event ev)
{
	struct relay *r = (struct relay *)(void *)((char *)x - offsetof(struct relay, up));
	struct request *q = r->req;

	if (!q || !q->suspended)
		return;
	if (q->state == RQ_WAIT_UP) {
		/* Streams (and anything not metered) go on at their headers,
		 * the rest once the whole answer is in. */
		if (ev != UP_DONE && !(ev == UP_HEADERS && (!r->metered || (r->sse && x->status == 200))))
			return;
		q->state = RQ_READY;
	} else if (ev == UP_HEADERS) {
		return;
	}
	rq_resume(q); /* RQ_ANSWERED: a streamed answer's reader waits for bytes */
}

/* Start the upstream exchange of @r: headers, URL, body. 0 or -ENOMEM. */
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
	r->up.notify = relay_notify;
	r->started = 1;
	STAT(relayed, 1);
	STAT(in_flight, 1);
	return 0;
}

/* A whole answer's body as a response, without a copy when it can be
 * handed over. */
static struct MHD_Response *body_response(struct up_xfer *x)
{
	struct MHD_Response *resp;

	if (x->off || !x->buf)
		return MHD_create_response_from_buffer(x->len - x->off, x->buf ? x->buf + x->off : NULL,
						       MHD_RESPMEM_MUST_COPY);
	resp = MHD_create_response_from_buffer_with_free_callback(x->len, x->buf, free);
	if (resp) {
		x->buf = NULL; /* the response's now */
		x->off = x->len = x->cap = 0;
	}
	return resp;
}

/* Answer the client with what the upstream sent: streamed (the relay is
 * then the response's), or whole (the caller keeps the relay). */
static enum MHD_Result relay_respond(struct relay *r, struct MHD_Connection *conn, int stream,
				     int *handed_over)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	*handed_over = 0;
	if (r->up.status == 0 || r->up.overflow || (!stream && !r->up.done)) {
		const char *why = r->up.overflow ? "the upstream's answer is too large"
				  : stopping     ? "quota-proxy is stopping"
						 : curl_easy_strerror(r->up.result);

		STAT(upstream_failed, 1);
		return send_error(conn, MHD_HTTP_BAD_GATEWAY, "server_error", "upstream_error", NULL,
				  "quota-proxy: the upstream did not answer: %s", why);
	}
	if (!r->metered && r->up.status == 429)
		STAT(upstream_429, 1);
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
	if (r->metered && r->up.status == 200 &&
	    proxy_parse_usage(r->up.buf + r->up.off, r->up.len - r->up.off, &r->usage) == 0)
		r->have_usage = 1;
	resp = body_response(&r->up);
	if (!resp)
		return MHD_NO;
	copy_headers(resp, &r->up);
	ret = MHD_queue_response(conn, (unsigned)r->up.status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* Settle and free the request's exchange (not handed to a response). */
static void rq_drop_relay(struct request *q)
{
	if (q->r) {
		q->r->req = NULL;
		relay_settle(q->r, 0);
		relay_free(q->r);
		q->r = NULL;
		q->quota = NULL; /* may have pointed into it */
	}
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

/* A local refusal of a metered request that quota_reserve() refused with
 * @rc (retry after @retry_ns for -EAGAIN). */
static enum MHD_Result refuse(struct MHD_Connection *conn, struct relay *r, const char *quota,
			      int rc, int64_t retry_ns)
{
	if (rc == -EAGAIN || rc == -EDQUOT || rc == -E2BIG)
		STAT(refused, 1);
	if (rc == -EAGAIN)
		return refuse_rate(conn, r->qc, r->qid, quota, retry_ns);
	if (rc == -EDQUOT)
		return send_error(conn, MHD_HTTP_TOO_MANY_REQUESTS, "insufficient_quota",
				  "insufficient_quota",
				  (const char *const[]){ "x-should-retry", "false", NULL },
				  "The spend budget of quota '%s' for this period is used up "
				  "(quota-proxy).",
				  quota);
	if (rc == -E2BIG)
		return send_error(conn, MHD_HTTP_BAD_REQUEST, "invalid_request_error",
				  "context_length_exceeded", NULL,
				  "This request can never fit quota '%s': about %" PRIu64
				  " prompt tokens (estimated) + %" PRIu64
				  " max tokens is above its context window or a limit's capacity.",
				  quota, r->pr.prompt_tokens, r->pr.max_tokens);
	if (rc == -ESHUTDOWN)
		return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, NULL,
				  "quota-proxy is stopping");
	return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, NULL,
			  "quota-proxy: %s", quota_strerror(rc));
}

/* Admitted: the ticket is open; send the request upstream and wait
 * (suspended) for its answer. 0, or a negative errno (nothing started). */
static int rq_forward(struct request *q)
{
	struct relay *r = q->r;
	const char *body = q->body;
	size_t len = q->len;

	r->ticket_open = 1;
	if (r->pr.stream) {
		r->sse = 1;
		if (!r->pr.include_usage) {
			r->send_body = proxy_stream_body(body, len, &len);
			if (!r->send_body)
				return -ENOMEM;
			body = r->send_body;
			r->strip_usage = 1;
		}
	}
	if (cfg.verbose)
		logmsg("%s %s quota %s: reserved 1 + %" PRIu64 " + %" PRIu64 " tokens after %.3f ms",
		       q->path, r->pr.stream ? "stream" : "", q->quota, r->pr.prompt_tokens,
		       r->pr.max_tokens, (double)(mono_ns() - (q->deadline_ns - cfg.max_wait_ns)) / 1e6);
	if (relay_start(r, q->conn, "POST", q->path, body, len) < 0)
		return -ENOMEM;
	q->state = RQ_WAIT_UP;
	rq_suspend(q);
	return 0;
}

/* ---- the budget line ----------------------------------------------------
 *
 * A request short of budget never blocks the loop: it reserves with timeout
 * 0 and, refused with -EAGAIN, waits in this line (suspended) until the
 * retry time the library gave, then tries again. FIFO per quota: a request
 * of a quota someone of this process already waits for queues behind them
 * without trying, and a quota's waiters are tried in arrival order, each
 * only once the one before it got in. (Linked workers of the same segment
 * that reserve with a timeout take their place in libquota's own line at
 * once, which this process cannot see: across processes the order is only
 * as fair as retry times are.) A request whose retry time is past its
 * --max-wait deadline is refused at once, as quota_reserve() would.
 */
static struct {
	struct request *head, *tail;
	int64_t wake_ns; /* the next try; -1: none */
	int kicked;      /* budget came back: each quota's first waiter tries now */
} line = { .wake_ns = -1 };

static void line_add(struct request *q)
{
	const union MHD_ConnectionInfo *info;

	q->lnext = NULL;
	q->lprev = line.tail;
	if (line.tail)
		line.tail->lnext = q;
	else
		line.head = q;
	line.tail = q;
	q->in_line = 1;
	STAT(waiting, 1);
	/* A client that gives up while in line must not keep its place (nor
	 * be charged when its turn comes): watch its socket for a hang-up
	 * (MHD does not while the connection is suspended). */
	info = MHD_get_connection_info(q->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	q->client_fd = -1;
	if (info) {
		struct epoll_event e = { .events = EPOLLRDHUP, .data.ptr = &q->gone };

		q->gone.tag = &tag_client;
		q->gone.q = q;
		if (epoll_ctl(loop_ep, EPOLL_CTL_ADD, info->connect_fd, &e) == 0)
			q->client_fd = info->connect_fd;
	}
}

static void line_remove(struct request *q)
{
	if (!q->in_line)
		return;
	if (q->lprev)
		q->lprev->lnext = q->lnext;
	else
		line.head = q->lnext;
	if (q->lnext)
		q->lnext->lprev = q->lprev;
	else
		line.tail = q->lprev;
	q->lprev = q->lnext = NULL;
	q->in_line = 0;
	STAT(waiting, -1);
	if (q->client_fd >= 0)
		epoll_ctl(loop_ep, EPOLL_CTL_DEL, q->client_fd, NULL);
	q->client_fd = -1;
}

/* Something was given back: try the heads of the line now. */
static void line_kick(void)
{
	if (line.head) {
		line.wake_ns = 0;
		line.kicked = 1;
	}
}

/* Reserve @q's cost without waiting: 0, -EAGAIN (q->retry_ns set), or
 * another negative errno. */
static int try_reserve(struct request *q)
{
	struct relay *r = q->r;
	if (cfg.stream_step && r->pr.stream && !r->pr.max_tokens_given)
		r->pr.max_tokens = cfg.stream_step; /* then follow_stream() */
	struct quota_cost cost = { 1, r->pr.prompt_tokens, r->pr.max_tokens };
	int rc = quota_reserve(r->qc, r->qid, &cost, 0, &r->t);

	if (rc == -EAGAIN)
		q->retry_ns = r->t.retry_after_ns > 0 ? r->t.retry_after_ns : NS_PER_MS;
	return rc;
}

/* Leave the line with refusal @rc (0: admitted and forwarded). */
static void line_leave(struct request *q, int rc)
{
	line_remove(q);
	if (rc == 0)
		rc = rq_forward(q);
	if (rc == 0)
		return;
	q->refusal = rc;
	q->state = RQ_READY;
	rq_resume(q);
}

/* Blocked quotas of one pass over the line: tried and refused, or not due. */
struct blocked {
	int n;
	struct {
		int qid;
		int64_t until;
	} q[64];
};

static int64_t blocked_until(const struct blocked *b, int qid)
{
	for (int i = 0; i < b->n; i++)
		if (b->q[i].qid == qid)
			return b->q[i].until;
	return -1;
}

static void block(struct blocked *b, int qid, int64_t until)
{
	if (b->n < (int)(sizeof(b->q) / sizeof(b->q[0]))) {
		b->q[b->n].qid = qid;
		b->q[b->n++].until = until;
	}
}

/* One pass: admit who can be, in order; refuse who cannot within their
 * deadline; set the next wake-up. */
static void line_run(int64_t now)
{
	struct blocked b = { 0 };
	struct request *q, *next;
	int64_t wake = -1;
	int kicked = line.kicked;

	line.wake_ns = -1;
	line.kicked = 0;
	for (q = line.head; q; q = next) {
		int64_t until = blocked_until(&b, q->r->qid);
		int rc;

		next = q->lnext;
		if (until < 0 && (q->next_try_ns <= now || kicked)) {
			rc = try_reserve(q);
			if (rc != -EAGAIN) {
				line_leave(q, rc);
				continue;
			}
			until = now + q->retry_ns;
			block(&b, q->r->qid, until);
		} else if (until < 0) {
			until = q->next_try_ns;
			block(&b, q->r->qid, until);
		}
		if (until > q->deadline_ns) {
			q->retry_ns = until - now;
			line_leave(q, -EAGAIN);
			continue;
		}
		q->next_try_ns = until;
		if (wake < 0 || until < wake)
			wake = until;
	}
	if (line.wake_ns < 0) /* not kicked meanwhile */
		line.wake_ns = wake;
}

/*
 * A new metered request: admitted now (0), queued (1: suspended), or refused
 * (a negative errno; q->retry_ns for -EAGAIN).
 */
static int line_enter(struct request *q)
{
	int64_t now = mono_ns(), until = -1;
	int rc;

	q->deadline_ns = now + cfg.max_wait_ns;
	for (struct request *w = line.head; w; w = w->lnext)
		if (w->r->qid == q->r->qid && (until < 0 || w->next_try_ns > until))
			until = w->next_try_ns; /* behind the quota's last waiter */
	if (until < 0) {
		rc = try_reserve(q);
		if (rc != -EAGAIN)
			return rc;
		until = now + q->retry_ns;
	}
	if (until > q->deadline_ns) {
		q->retry_ns = until - now;
		return -EAGAIN;
	}
	q->next_try_ns = until;
	q->state = RQ_WAIT_BUDGET;
	line_add(q);
	if (line.wake_ns < 0 || until < line.wake_ns)
		line.wake_ns = until;
	rq_suspend(q);
	return 1;
}

/* ---- requests ---------------------------------------------------------- */

/* Any request the proxy does not meter: relayed as it is, streamed back. */
static enum MHD_Result handle_pass(struct request *q, const char *method)
{
	struct relay *r = relay_new(q);

	if (!r)
		return MHD_NO;
	q->r = r;
	if (relay_start(r, q->conn, method, q->path, q->body, q->len) < 0) {
		rq_drop_relay(q);
		STAT(upstream_failed, 1);
		return send_error(q->conn, MHD_HTTP_BAD_GATEWAY, "server_error", "upstream_error", NULL,
				  "quota-proxy: the upstream did not answer");
	}
	q->state = RQ_WAIT_UP;
	rq_suspend(q);
	return MHD_YES;
}

/* POST to a metered endpoint: estimate, reserve (or queue), forward. */
static enum MHD_Result handle_metered(struct request *q, enum est_endpoint ep)
{
	struct relay *r;
	char err[512];
	enum MHD_Result ret;
	int rc;

	if (q->too_big) {
		STAT(bad, 1);
		return send_error(q->conn, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
				  NULL, "request body above %zu bytes", cfg.max_body);
	}
	r = relay_new(q);
	if (!r)
		return MHD_NO;
	r->metered = 1;
	rc = proxy_parse_request(q->body, q->len, ep,
				 ep == EST_COMPLETION ? (cfg.default_max_tokens < 16 ? cfg.default_max_tokens : 16)
						      : cfg.default_max_tokens,
				 &r->pr, err, sizeof(err));
	if (rc < 0) {
		relay_free(r);
		if (rc == -ENOMEM)
			return MHD_NO;
		STAT(bad, 1);
		return send_error(q->conn, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL, NULL,
				  "%s", err);
	}
	q->r = r;
	q->quota = quota_name(r->pr.model);
	r->qc = qh_get(&rc);
	if (!r->qc) {
		rq_drop_relay(q);
		return send_error(q->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, NULL,
				  "quota-proxy: cannot open the quota segment: %s",
				  quota_strerror(rc));
	}
	r->qid = quota_find(r->qc, q->quota);
	if (r->qid < 0) {
		if (cfg.pass_unknown) {
			rq_drop_relay(q);
			return handle_pass(q, "POST");
		}
		STAT(bad, 1);
		/* q->quota may be r->pr.model: answer before the relay goes. */
		ret = send_error(q->conn, MHD_HTTP_NOT_FOUND, "invalid_request_error",
				 "model_not_found", NULL,
				 "The model '%s' has no quota '%s' on this host (quota-proxy; "
				 "see --map, -q, --pass-unknown).",
				 r->pr.model, q->quota);
		rq_drop_relay(q);
		return ret;
	}
	rc = line_enter(q);
	if (rc == 1)
		return MHD_YES;
	if (rc == 0)
		rc = rq_forward(q);
	if (rc == 0)
		return MHD_YES;
	ret = rc == -ENOMEM ? MHD_NO : refuse(q->conn, r, q->quota, rc, q->retry_ns);
	rq_drop_relay(q);
	return ret;
}

/* Resumed with the answer (or a refusal) ready: queue it. */
static enum MHD_Result answer(struct request *q)
{
	struct relay *r = q->r;
	enum MHD_Result ret;
	int handed;

	q->state = RQ_ANSWERED;
	if (!r)
		return MHD_NO;
	if (q->refusal) {
		ret = q->refusal == -ENOMEM ? MHD_NO
					    : refuse(q->conn, r, q->quota, q->refusal, q->retry_ns);
		rq_drop_relay(q);
		return ret;
	}
	ret = relay_respond(r, q->conn, !r->metered || (r->sse && r->up.status == 200), &handed);
	if (handed) {
		q->r = NULL;
		q->streaming = r;
	} else {
		rq_drop_relay(q);
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
	return httpbody_append(&r->body, &r->len, &r->cap, &r->too_big, cfg.max_body, data, n);
}

/*
 * MHD's access handler, on the event loop: called as the body arrives, once
 * it is all in (RQ_BODY: decide), and again after each resume (RQ_READY:
 * answer). Nothing here waits.
 */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct request *q = *con_cls;
	int ep;

	(void)cls;
	(void)version;
	if (!q) {
		q = calloc(1, sizeof(*q));
		if (!q)
			return MHD_NO;
		q->conn = conn;
		q->path = url;
		q->client_fd = -1;
		q->next = requests;
		if (requests)
			requests->prev = q;
		requests = q;
		*con_cls = q;
		STAT(requests, 1);
		return MHD_YES;
	}
	if (q->state == RQ_READY)
		return answer(q);
	if (q->state != RQ_BODY)
		return MHD_NO; /* not reached: suspended requests are not called */
	if (*upload_size) {
		if (request_append(q, upload, *upload_size) < 0)
			return MHD_NO;
		*upload_size = 0;
		return MHD_YES;
	}
	q->state = RQ_ANSWERED; /* unless a handler below suspends it */
	if (stopping)
		return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, NULL,
				  "quota-proxy is stopping");
	ep = metered_endpoint(url);
	if (ep >= 0 && strcmp(method, "POST") == 0)
		return handle_metered(q, (enum est_endpoint)ep);
	if (q->too_big) {
		STAT(bad, 1);
		return send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
				  NULL, "request body above %zu bytes", cfg.max_body);
	}
	return handle_pass(q, method);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct request *q = *con_cls;

	(void)cls;
	(void)conn;
	(void)toe;
	if (q) {
		line_remove(q);
		rq_drop_relay(q);
		if (q->streaming)
			q->streaming->req = NULL;
		if (q->prev)
			q->prev->next = q->next;
		else
			requests = q->next;
		if (q->next)
			q->next->prev = q->prev;
		free(q->body);
		free(q);
	}
	*con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	(void)cls;
	(void)conn;
	(void)socket_context;
	STAT(connections, toe == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1);
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

/* A client hung up while waiting in line: it leaves the line, uncharged
 * (MHD then finds the connection closed). */
static void client_gone(struct request *q)
{
	if (!q->in_line)
		return;
	if (cfg.verbose)
		logmsg("%s quota %s: the client left while waiting for budget", q->path, q->quota);
	line_leave(q, -ECONNRESET);
}

/* Milliseconds until something in the loop is due (-1: nothing). */
static int loop_timeout(int64_t now, int64_t mhd_deadline)
{
	int64_t t = -1;
	long c = up_timeout_ms();

	if (resumed)
		return 0;
	if (c >= 0)
		t = c * NS_PER_MS;
	if (mhd_deadline >= 0 && (t < 0 || mhd_deadline - now < t))
		t = mhd_deadline - now;
	if (line.wake_ns >= 0 && (t < 0 || line.wake_ns - now < t))
		t = line.wake_ns - now;
	if (t < 0)
		return t == -1 ? -1 : 0;
	t = (t + NS_PER_MS - 1) / NS_PER_MS;
	return t > 60000 ? 60000 : (int)t;
}

/* MHD's own timeouts (idle connections): its next deadline, or -1. */
static int64_t mhd_deadline(struct MHD_Daemon *d)
{
	MHD_UNSIGNED_LONG_LONG ms;

	if (MHD_get_timeout(d, &ms) != MHD_YES)
		return -1;
	return mono_ns() + (int64_t)(ms > 3600000 ? 3600000 : ms) * NS_PER_MS;
}

/* Stopping: every suspended request is resumed to end (waiters refused,
 * exchanges cut short); MHD must have none suspended when it stops. */
static void resume_all(void)
{
	for (struct request *q = requests; q; q = q->next) {
		if (q->in_line) {
			line_remove(q);
			q->refusal = -ESHUTDOWN;
		}
		if (q->state == RQ_WAIT_BUDGET || q->state == RQ_WAIT_UP)
			q->state = RQ_READY;
		rq_resume(q);
	}
}

/*
 * The event loop: one thread serves every connection. The epoll set holds
 * MHD's epoll fd (client sockets, run by MHD_run()), curl's sockets
 * (upstream.c) and a signalfd; the timeout is the nearest of curl's timer,
 * MHD's and the budget line's next try. Until SIGTERM/SIGINT.
 */
static void run_loop(struct MHD_Daemon *d, int ep)
{
	struct epoll_event ev[64];
	int64_t now, mhd_at = mhd_deadline(d);

	while (!stopping) {
		int n, run_mhd = 0, timeout;

		now = mono_ns();
		timeout = loop_timeout(now, mhd_at);
		n = epoll_wait(ep, ev, 64, timeout);
		if (n < 0 && errno != EINTR) {
			logmsg("epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			if (ev[i].data.ptr == &tag_mhd)
				run_mhd = 1;
			else if (ev[i].data.ptr == &tag_signal)
				stopping = 1;
			else if (*(void **)ev[i].data.ptr == &tag_client)
				client_gone(((struct gone_watch *)ev[i].data.ptr)->q);
			else
				up_socket(ev[i].data.ptr, ev[i].events);
		}
		up_after_events();
		if (up_timeout_ms() == 0)
			up_timeout();
		now = mono_ns();
		if (line.wake_ns >= 0 && line.wake_ns <= now)
			line_run(now);
		if (run_mhd || resumed || (mhd_at >= 0 && mhd_at <= now)) {
			resumed = 0;
			MHD_run(d);
			/* Start the transfers the handlers just added. */
			if (up_timeout_ms() == 0)
				up_timeout();
			mhd_at = mhd_deadline(d);
		}
	}
	resume_all();
	for (int i = 0; i < 4 && resumed; i++) {
		resumed = 0;
		MHD_run(d);
	}
}

/* Register for quotactl (proxyreg.h); a failure only costs visibility. */
static void register_proxy(unsigned bound)
{
	char listen[80];
	int r;

	snprintf(listen, sizeof(listen), strchr(cfg.listen_addr, ':') ? "[%s]:%u" : "%s:%u",
		 cfg.listen_addr, bound);
	r = proxyreg_open(cfg.segment, listen, cfg.upstream, cfg.workers, &reg);
	if (r < 0)
		logmsg("not visible to quotactl proxies: %s", strerror(-r));
}

static int add_watch(int ep, int fd, void *tag)
{
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = tag };

	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

/*
 * Serve on @port until SIGTERM/SIGINT. @ready_fd (>= 0) gets one byte once
 * listening; with @print_port the port goes to stdout. Exit status.
 */
static int serve(unsigned port, int ready_fd, int print_port)
{
	const union MHD_DaemonInfo *info;
	struct MHD_Daemon *d;
	sigset_t sigs;
	unsigned bound;
	pthread_t wd;
	char url[256];
	int fd, ep, sfd, r;

	r = qh_init(cfg.segment);
	if (r < 0) {
		fprintf(stderr, "quota-proxy: quota_open(%s): %s\n",
			cfg.segment ? cfg.segment : "$QUOTA_SEGMENT", quota_strerror(r));
		return 1;
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	ep = epoll_create1(EPOLL_CLOEXEC);
	loop_ep = ep;
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (ep < 0 || sfd < 0 || add_watch(ep, sfd, &tag_signal) < 0) {
		fprintf(stderr, "quota-proxy: cannot set up the event loop: %s\n", strerror(errno));
		return 1;
	}
	if (up_global_init(ep, &tag_curl, cfg.upstream_timeout_ms, 10000) < 0) {
		fprintf(stderr, "quota-proxy: cannot initialise libcurl\n");
		return 1;
	}
	fd = make_socket(port, 1, &bound);
	if (fd < 0)
		return 1;
	d = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
				     (cfg.quiet ? 0 : MHD_USE_ERROR_LOG),
			     0, NULL, NULL, on_request, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
			     MHD_OPTION_CONNECTION_LIMIT, cfg.max_connections,
			     MHD_OPTION_CONNECTION_TIMEOUT, 600u, MHD_OPTION_NOTIFY_COMPLETED,
			     on_completed, NULL, MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
			     MHD_OPTION_END);
	info = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
	if (!d || !info || add_watch(ep, info->epoll_fd, &tag_mhd) < 0) {
		fprintf(stderr, "quota-proxy: cannot start the HTTP server\n");
		close(fd);
		return 1;
	}
	register_proxy(bound);
	if (print_port) {
		printf("%u\n", bound);
		fflush(stdout);
	}
	if (ready_fd >= 0) {
		if (write(ready_fd, "r", 1) != 1)
			logmsg("cannot tell the parent process it is ready");
		close(ready_fd);
	}
	proxyreg_clean_url(cfg.upstream, url, sizeof(url)); /* no credentials in a log */
	logmsg("listening on %s:%u, upstream %s, segment %s", cfg.listen_addr, bound, url,
	       cfg.segment ? cfg.segment : "$QUOTA_SEGMENT");
	run_loop(d, ep);
	pthread_create(&wd, NULL, stop_watchdog, NULL);
	MHD_stop_daemon(d);
	close(fd);
	proxyreg_close(reg);
	reg = NULL;
	qh_close_all();
	up_global_cleanup();
	close(sfd);
	close(ep);
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
		"                           and N more each time it outgrows them (quota_extend,\n"
		"                           never waiting; default 0: the default max tokens)\n"
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
	return tool_opt_duration("quota-proxy", name, s);
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
	/* Stop signals: the event loop's signalfd (sigwait in a --workers
	 * supervisor); blocked in every thread. */
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
