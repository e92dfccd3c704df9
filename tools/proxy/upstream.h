/* SPDX-License-Identifier: MIT */
/*
 * upstream.h - the exchanges with the upstream provider, all on one libcurl
 * multi handle driven by the proxy's event loop (curl's socket interface:
 * its sockets join the loop's epoll set, its timer is the loop's timeout).
 * The multi keeps the connection cache, so exchanges reuse warm keep-alive
 * connections; easy handles come from a free list. Nothing here blocks:
 * an exchange reports its progress through its notify callback.
 */
#ifndef QUOTA_PROXY_UPSTREAM_H
#define QUOTA_PROXY_UPSTREAM_H

#include <curl/curl.h>
#include <stddef.h>
#include <stdint.h>

#include "quota.h"

struct up_header {
	char *name, *value;
};

struct up_xfer;

/* What happened to an exchange (see up_xfer.notify). */
enum up_event {
	UP_HEADERS, /* the final response's headers are all in */
	UP_DATA,    /* body bytes were added to buf */
	UP_DONE,    /* the transfer is over (result in `result`) */
};

struct up_xfer {
	void *easy_;                /* the curl easy handle while running */
	struct curl_slist *req_headers;
	long status;                /* of the final response; 0 until known */
	int headers_done;           /* the final response's headers are all in */
	int done;                   /* transfer over; result in `result` */
	CURLcode result;
	char *buf;                  /* body bytes received, from `off` not yet consumed */
	size_t off, len, cap, max;  /* `max`: most bytes buffered (then the transfer fails) */
	int overflow;
	size_t req_len;             /* bytes of the request body */
	struct up_header *headers;  /* the final response's headers, as received */
	size_t nheaders;
	struct quota_feedback fb;   /* its rate-limit headers */
	int bad_feedback;           /* rate-limit headers that did not parse */
	/* Called from up_socket()/up_timeout() (never from up_begin()). */
	void (*notify)(struct up_xfer *x, enum up_event ev);
};

/*
 * Set-up on the event loop's epoll instance @epfd: @timeout_ms per exchange,
 * @connect_ms to connect. The tag of curl's sockets in the epoll set is
 * @tag (up_socket() gets it back with the socket). 0 or -ENOMEM.
 */
int up_global_init(int epfd, void *tag, long timeout_ms, long connect_ms);
void up_global_cleanup(void);

/* A request header to send ("Name: value"); -ENOMEM. */
int up_add_header(struct up_xfer *x, const char *line);

/*
 * Start @method @url with @body (@len bytes, may be 0) and the headers added
 * so far. The body must stay valid until up_end(). @max_buffer bounds the
 * bytes of the answer held at once. 0 or -ENOMEM.
 */
int up_begin(struct up_xfer *x, const char *method, const char *url, const char *body,
	     size_t len, size_t max_buffer);

/* Whether the whole request body went out (for a failed transfer: whether
 * the provider may have counted it). */
int up_request_sent(const struct up_xfer *x);

/* End the exchange (aborting it if still running) and free its state. */
void up_end(struct up_xfer *x);

/* Event loop: socket @fd (from the epoll data @data) is ready for @events
 * (EPOLLIN...); curl's timer; milliseconds until curl's timer (-1: none). */
void up_socket(void *data, uint32_t events);
void up_timeout(void);
long up_timeout_ms(void);

/* After each batch of epoll events: free the watches of sockets curl gave
 * up meanwhile (the batch may still point to them). */
void up_after_events(void);

/* The epoll data of a curl socket starts with this tag. */
struct up_watch {
	void *tag;
	curl_socket_t fd;
};

#endif
