/* SPDX-License-Identifier: MIT */
/*
 * upstream.c - see upstream.h. One curl multi handle for the process, on
 * curl's socket interface: CURLMOPT_SOCKETFUNCTION adds curl's sockets to
 * the event loop's epoll set, CURLMOPT_TIMERFUNCTION sets the deadline the
 * loop waits for. The loop calls up_socket()/up_timeout(); finished
 * transfers are reported through their notify callback. Single-threaded:
 * everything here runs on the event loop's thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <time.h>

#include "qhandle.h"
#include "upstream.h"

#define IDLE_EASY_MAX 64 /* easy handles kept for reuse */

/*
 * A socket curl watches, from its first CURL_POLL_IN/OUT to its
 * CURL_POLL_REMOVE. Freed only after the epoll batch that may still point
 * to it (up_after_events()): handling one socket's event can make curl
 * drop another one whose event comes later in the same batch.
 */
struct watch {
	struct up_watch pub;   /* first: the epoll data starts with the tag */
	int removed;
	struct watch *next_removed;
};

static struct {
	CURLM *multi;
	int epfd;
	void *tag;
	long timeout_ms, connect_ms;
	int64_t deadline_ns; /* curl's timer; -1: none */
	CURL *idle[IDLE_EASY_MAX];
	int nidle;
	struct watch *removed; /* to free after the event batch */
} up = { .epfd = -1, .deadline_ns = -1 };

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* curl: watch @s for @what (CURL_POLL_IN/OUT/INOUT/REMOVE). */
static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct watch *w = socketp;
	struct epoll_event ev = { 0 };

	(void)e;
	(void)userp;
	if (what == CURL_POLL_REMOVE) {
		if (w) {
			epoll_ctl(up.epfd, EPOLL_CTL_DEL, s, NULL);
			curl_multi_assign(up.multi, s, NULL);
			w->removed = 1;
			w->next_removed = up.removed;
			up.removed = w;
		}
		return 0;
	}
	ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
	if (!w) {
		w = calloc(1, sizeof(*w));
		if (!w)
			return -1;
		w->pub.tag = up.tag;
		w->pub.fd = s;
		ev.data.ptr = w;
		if (epoll_ctl(up.epfd, EPOLL_CTL_ADD, s, &ev) < 0) {
			free(w);
			return -1;
		}
		curl_multi_assign(up.multi, s, w);
		return 0;
	}
	ev.data.ptr = w;
	return epoll_ctl(up.epfd, EPOLL_CTL_MOD, s, &ev) < 0 ? -1 : 0;
}

void up_after_events(void)
{
	while (up.removed) {
		struct watch *w = up.removed;

		up.removed = w->next_removed;
		free(w);
	}
}

static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
	(void)m;
	(void)userp;
	up.deadline_ns = timeout_ms < 0 ? -1 : mono_ns() + (int64_t)timeout_ms * 1000000;
	return 0;
}

int up_global_init(int epfd, void *tag, long timeout_ms, long connect_ms)
{
	up.epfd = epfd;
	up.tag = tag;
	up.timeout_ms = timeout_ms;
	up.connect_ms = connect_ms;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
		return -ENOMEM;
	up.multi = curl_multi_init();
	if (!up.multi)
		return -ENOMEM;
	curl_multi_setopt(up.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(up.multi, CURLMOPT_TIMERFUNCTION, on_timer);
	return 0;
}

void up_global_cleanup(void)
{
	while (up.nidle)
		curl_easy_cleanup(up.idle[--up.nidle]);
	if (up.multi)
		curl_multi_cleanup(up.multi);
	up.multi = NULL;
	up_after_events();
	curl_global_cleanup();
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
	if (x->notify)
		x->notify(x, UP_DATA);
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
		if (x->status >= 200 && !x->headers_done) {
			x->headers_done = 1;
			if (x->notify)
				x->notify(x, UP_HEADERS);
		}
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

/* A new easy handle with the options every exchange shares. */
static CURL *easy_new(void)
{
	CURL *e = curl_easy_init();

	if (!e)
		return NULL;
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, up.connect_ms);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, up.timeout_ms);
	return e;
}

int up_begin(struct up_xfer *x, const char *method, const char *url, const char *body,
	     size_t len, size_t max_buffer)
{
	/* A reused handle keeps the shared options (no curl_easy_reset():
	 * it costs more than setting the few that differ). */
	CURL *e = up.nidle ? up.idle[--up.nidle] : easy_new();
	int get = strcmp(method, "GET") == 0, head = strcmp(method, "HEAD") == 0;
	int post = strcmp(method, "POST") == 0;

	if (!e)
		return -ENOMEM;
	x->max = max_buffer;
	x->req_len = len;
	qh_feedback_init(&x->fb);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->req_headers);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(e, CURLOPT_PRIVATE, x);
	curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, get || head || post ? NULL : method);
	curl_easy_setopt(e, CURLOPT_NOBODY, head ? 1L : 0L);
	if (get || head || (!post && !len)) {
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
		if (head)
			curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	}
	if (curl_multi_add_handle(up.multi, e) != CURLM_OK) {
		curl_easy_cleanup(e);
		return -ENOMEM;
	}
	x->easy_ = e;
	return 0;
}

/* Report the transfers curl finished. */
static void reap(void)
{
	CURLMsg *m;
	int q;

	while ((m = curl_multi_info_read(up.multi, &q))) {
		struct up_xfer *x = NULL;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
		if (!x || x->done)
			continue;
		x->done = 1;
		x->result = m->data.result;
		x->headers_done = 1;
		if (x->notify)
			x->notify(x, UP_DONE);
	}
}

void up_socket(void *data, uint32_t events)
{
	struct watch *w = data;
	int running, flags = 0;

	if (w->removed) /* earlier in this batch */
		return;
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
		flags |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		flags |= CURL_CSELECT_OUT;
	if (events & EPOLLERR)
		flags |= CURL_CSELECT_ERR;
	curl_multi_socket_action(up.multi, w->pub.fd, flags, &running);
	reap();
}

void up_timeout(void)
{
	int running;

	up.deadline_ns = -1;
	curl_multi_socket_action(up.multi, CURL_SOCKET_TIMEOUT, 0, &running);
	reap();
}

long up_timeout_ms(void)
{
	int64_t left;

	if (up.deadline_ns < 0)
		return -1;
	left = up.deadline_ns - mono_ns();
	return left <= 0 ? 0 : (long)((left + 999999) / 1000000);
}

int up_request_sent(const struct up_xfer *x)
{
	curl_off_t sent = 0;

	if (!x->easy_)
		return 0;
	if (x->status >= 200) /* it answered: it had the request */
		return 1;
	if (curl_easy_getinfo(x->easy_, CURLINFO_SIZE_UPLOAD_T, &sent) != CURLE_OK)
		return 0;
	return sent >= (curl_off_t)x->req_len;
}

void up_end(struct up_xfer *x)
{
	CURL *e = x->easy_;

	if (e) {
		/* An aborted transfer's connection is closed by curl; the easy
		 * handle itself is fine to reuse. */
		curl_multi_remove_handle(up.multi, e);
		if (up.nidle < IDLE_EASY_MAX) {
			curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL); /* freed below */
			curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
			up.idle[up.nidle++] = e;
		} else {
			curl_easy_cleanup(e);
		}
	}
	x->easy_ = NULL;
	x->notify = NULL;
	curl_slist_free_all(x->req_headers);
	x->req_headers = NULL;
	headers_clear(x);
	free(x->buf);
	x->buf = NULL;
	x->off = x->len = x->cap = 0;
}
