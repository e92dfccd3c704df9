/* SPDX-License-Identifier: MIT */
/*
 * upstream.c - see upstream.h. A lane is a curl easy handle inside a multi
 * handle of its own; the multi keeps the connection cache, so a lane taken
 * from the pool (LIFO, under a mutex) reuses a warm keep-alive connection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "qhandle.h"
#include "upstream.h"

#define POLL_MS 100 /* longest step while waiting, so @stop is seen */

struct lane {
	CURL *easy;
	CURLM *multi;
	struct lane *next;
};

static struct {
	pthread_mutex_t lock;
	struct lane *idle;
	long timeout_ms, connect_ms;
} lanes = { .lock = PTHREAD_MUTEX_INITIALIZER };

int up_global_init(long timeout_ms, long connect_ms)
{
	lanes.timeout_ms = timeout_ms;
	lanes.connect_ms = connect_ms;
	return curl_global_init(CURL_GLOBAL_DEFAULT) == 0 ? 0 : -ENOMEM;
}

void up_global_cleanup(void)
{
	while (lanes.idle) {
		struct lane *l = lanes.idle;

		lanes.idle = l->next;
		curl_multi_cleanup(l->multi);
		curl_easy_cleanup(l->easy);
		free(l);
	}
	curl_global_cleanup();
}

static struct lane *lane_get(void)
{
	struct lane *l;

	pthread_mutex_lock(&lanes.lock);
	l = lanes.idle;
	if (l)
		lanes.idle = l->next;
	pthread_mutex_unlock(&lanes.lock);
	if (l) {
		curl_easy_reset(l->easy);
		return l;
	}
	l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->easy = curl_easy_init();
	l->multi = curl_multi_init();
	if (!l->easy || !l->multi) {
		curl_easy_cleanup(l->easy);
		curl_multi_cleanup(l->multi);
		free(l);
		return NULL;
	}
	return l;
}

static void lane_put(struct lane *l, int reusable)
{
	if (!reusable) {
		curl_multi_cleanup(l->multi);
		curl_easy_cleanup(l->easy);
		free(l);
		return;
	}
	pthread_mutex_lock(&lanes.lock);
	l->next = lanes.idle;
	lanes.idle = l;
	pthread_mutex_unlock(&lanes.lock);
}

int up_add_header(struct up_xfer *x, const char *line)
{
	struct curl_slist *s = curl_slist_append(x->req_headers, line);

	if (!s)
		return -ENOMEM;
	x->req_headers = s;
	return 0;
}

/* Body bytes: buffered up to x->max, then the transfer fails. */
static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct up_xfer *x = arg;
	size_t bytes = size * n;

	if (x->off && x->off == x->len)
		x->off = x->len = 0; /* all consumed: start over */
	if (bytes > x->max - (x->len - x->off)) {
		x->overflow = 1;
		return 0;
	}
	if (x->off > x->cap / 2) { /* slide what is left to the front */
		memmove(x->buf, x->buf + x->off, x->len - x->off);
		x->len -= x->off;
		x->off = 0;
	}
	if (x->len + bytes + 1 > x->cap) {
		size_t cap = x->cap ? x->cap : 16384;
		char *p;

		while (cap < x->len + bytes + 1)
			cap *= 2;
		p = realloc(x->buf, cap);
		if (!p)
			return 0;
		x->buf = p;
		x->cap = cap;
	}
	memcpy(x->buf + x->len, data, bytes);
	x->len += bytes;
	x->buf[x->len] = '\0';
	return bytes;
}

static void headers_clear(struct up_xfer *x)
{
	for (size_t i = 0; i < x->nheaders; i++) {
		free(x->headers[i].name);
		free(x->headers[i].value);
	}
	free(x->headers);
	x->headers = NULL;
	x->nheaders = 0;
}

/* One header line; a status line starts a new response (after 1xx). */
static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
	struct up_xfer *x = arg;
	size_t bytes = size * n, nl, vs, ve;
	const char *colon;
	struct up_header *h;

	if (bytes >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		const char *sp = memchr(data, ' ', bytes);

		headers_clear(x);
		qh_feedback_init(&x->fb);
		x->bad_feedback = 0;
		x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		return bytes;
	}
	if (bytes <= 2 && (bytes == 0 || data[0] == '\r' || data[0] == '\n')) {
		if (x->status >= 200)
			x->headers_done = 1;
		return bytes;
	}
	colon = memchr(data, ':', bytes);
	if (!colon || colon == data || x->nheaders >= 256)
		return bytes;
	nl = (size_t)(colon - data);
	vs = nl + 1;
	ve = bytes;
	while (vs < ve && (data[vs] == ' ' || data[vs] == '\t'))
		vs++;
	while (ve > vs && (data[ve - 1] == '\r' || data[ve - 1] == '\n' || data[ve - 1] == ' '))
		ve--;
	h = realloc(x->headers, (x->nheaders + 1) * sizeof(*h));
	if (!h)
		return 0;
	x->headers = h;
	h = &x->headers[x->nheaders];
	h->name = strndup(data, nl);
	h->value = strndup(data + vs, ve - vs);
	if (!h->name || !h->value) {
		free(h->name);
		free(h->value);
		return 0;
	}
	x->nheaders++;
	if (quota_feedback_header(&x->fb, h->name, h->value) < 0)
		x->bad_feedback++;
	return bytes;
}

int up_begin(struct up_xfer *x, const char *method, const char *url, const char *body,
	     size_t len, size_t max_buffer)
{
	struct lane *l = lane_get();
	CURL *e;

	if (!l)
		return -ENOMEM;
	x->lane_ = l;
	x->max = max_buffer;
	x->req_len = len;
	qh_feedback_init(&x->fb);
	e = l->easy;
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->req_headers);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, lanes.connect_ms);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, lanes.timeout_ms);
	if (strcmp(method, "GET") == 0) {
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	} else if (strcmp(method, "HEAD") == 0) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else {
		if (strcmp(method, "POST") != 0)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
		if (len || strcmp(method, "POST") == 0) {
			curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
			curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
		}
	}
	if (curl_multi_add_handle(l->multi, e) != CURLM_OK) {
		lane_put(l, 0);
		x->lane_ = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* One step: let curl work, then wait (at most POLL_MS) for the sockets. */
static void step(struct up_xfer *x)
{
	struct lane *l = x->lane_;
	int running = 0, q;
	CURLMsg *m;

	curl_multi_perform(l->multi, &running);
	while ((m = curl_multi_info_read(l->multi, &q))) {
		if (m->msg == CURLMSG_DONE) {
			x->done = 1;
			x->result = m->data.result;
		}
	}
	if (!x->done && !running) {
		x->done = 1;
		x->result = CURLE_RECV_ERROR;
	}
	if (x->done)
		x->headers_done = 1;
}

static void wait_step(struct up_xfer *x)
{
	struct lane *l = x->lane_;
	size_t before = x->len;

	step(x);
	if (!x->done && !x->headers_done && x->len == before)
		curl_multi_poll(l->multi, NULL, 0, POLL_MS, NULL);
}

void up_wait_headers(struct up_xfer *x)
{
	while (x->lane_ && !x->headers_done && !x->done)
		wait_step(x);
}

void up_wait_data(struct up_xfer *x, volatile int *stop)
{
	while (x->lane_ && x->off == x->len && !x->done) {
		if (stop && *stop) {
			x->done = 1;
			x->result = CURLE_ABORTED_BY_CALLBACK;
			return;
		}
		step(x);
		if (x->off == x->len && !x->done)
			curl_multi_poll(((struct lane *)x->lane_)->multi, NULL, 0, POLL_MS, NULL);
	}
}

void up_wait_done(struct up_xfer *x)
{
	while (x->lane_ && !x->done) {
		step(x);
		if (!x->done)
			curl_multi_poll(((struct lane *)x->lane_)->multi, NULL, 0, POLL_MS, NULL);
	}
}

int up_request_sent(const struct up_xfer *x)
{
	struct lane *l = x->lane_;
	curl_off_t up = 0;

	if (!l)
		return 0;
	if (x->status >= 200) /* it answered: it had the request */
		return 1;
	if (curl_easy_getinfo(l->easy, CURLINFO_SIZE_UPLOAD_T, &up) != CURLE_OK)
		return 0;
	return up >= (curl_off_t)x->req_len;
}

void up_end(struct up_xfer *x)
{
	struct lane *l = x->lane_;

	if (l) {
		curl_multi_remove_handle(l->multi, l->easy);
		/* An aborted transfer's connection is closed by curl; the lane
		 * itself is fine to reuse. */
		lane_put(l, 1);
	}
	x->lane_ = NULL;
	curl_slist_free_all(x->req_headers);
	x->req_headers = NULL;
	headers_clear(x);
	free(x->buf);
	x->buf = NULL;
	x->off = x->len = x->cap = 0;
}
