/* SPDX-License-Identifier: MIT */
/*
 * upstream.h - one HTTP exchange with the upstream provider, driven step by
 * step (libcurl's multi interface) so that a streamed answer can be passed
 * on as it arrives. Handles come from a pool and keep their connections
 * alive between exchanges.
 */
#ifndef QUOTA_PROXY_UPSTREAM_H
#define QUOTA_PROXY_UPSTREAM_H

#include <curl/curl.h>
#include <stddef.h>

#include "quota.h"

struct up_header {
	char *name, *value;
};

struct up_xfer {
	void *lane_;                /* pooled curl handles */
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
};

/* Global set-up: @timeout_ms per exchange, @connect_ms to connect. */
int up_global_init(long timeout_ms, long connect_ms);
void up_global_cleanup(void);

/* A request header to send ("Name: value"); -ENOMEM. */
int up_add_header(struct up_xfer *x, const char *line);

/*
 * Start @method @url with @body (@len bytes, may be 0) and the headers added
 * so far. The body must stay valid until up_end(). @max_buffer bounds the
 * bytes of the answer held at once.
 */
int up_begin(struct up_xfer *x, const char *method, const char *url, const char *body,
	     size_t len, size_t max_buffer);

/* Run the transfer until the headers are in or it is over. */
void up_wait_headers(struct up_xfer *x);

/* Run it until there are unconsumed body bytes or it is over; @stop is
 * polled between steps (non-zero aborts, as a failed transfer). */
void up_wait_data(struct up_xfer *x, volatile int *stop);

/* Run it to the end (the whole body buffered). */
void up_wait_done(struct up_xfer *x);

/* Whether the whole request body went out (for a failed transfer: whether
 * the provider may have counted it). */
int up_request_sent(const struct up_xfer *x);

/* End the exchange (aborting it if still running) and free its state. */
void up_end(struct up_xfer *x);

#endif
