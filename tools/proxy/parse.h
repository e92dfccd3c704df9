/* SPDX-License-Identifier: MIT */
/*
 * parse.h - what quota-proxy reads of the bodies it relays: the client's
 * request (to estimate and reserve), the upstream's JSON answer and its SSE
 * events (to commit the usage). Pure functions over bytes, no I/O: the part
 * of the proxy that tests/fuzz/fuzz_proxy.c feeds arbitrary input.
 */
#ifndef QUOTA_PROXY_PARSE_H
#define QUOTA_PROXY_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "estimate.h"

#define PROXY_MODEL_MAX 256  /* longest model name accepted */
#define PROXY_JSON_DEPTH 64  /* deepest request JSON accepted */

/* What the proxy needs of a request body. */
struct proxy_request {
	enum est_endpoint endpoint;
	char model[PROXY_MODEL_MAX + 1];
	int stream;             /* "stream": true */
	int include_usage;      /* the client asked for stream_options.include_usage */
	uint64_t prompt_tokens; /* estimate (estimate.h) */
	uint64_t max_tokens;    /* max_completion_tokens, else max_tokens, else the default */
	int max_tokens_given;   /* the request set one of them */
};

/*
 * Parse and check the body of a request to @endpoint. @default_max_tokens is
 * used when the request sets none (0 for embeddings, which generate nothing).
 * Returns 0, or -EINVAL with an OpenAI-style message in @err (naming the
 * field): not JSON, too deep, not an object, a field of the wrong type or
 * range. -ENOMEM if cJSON could not allocate.
 */
int proxy_parse_request(const char *body, size_t len, enum est_endpoint endpoint,
			uint64_t default_max_tokens, struct proxy_request *r, char *err,
			size_t errsz);

/*
 * The body to send upstream for a streamed request that did not ask for
 * usage: @body with "stream_options":{"include_usage":true} set. Returns a
 * malloc'ed string (length in *@out_len) or NULL (out of memory, or a body
 * proxy_parse_request() did not accept).
 */
char *proxy_stream_body(const char *body, size_t len, size_t *out_len);

/* Usage an upstream reported. */
struct proxy_usage {
	uint64_t prompt_tokens, completion_tokens;
};

/* usage.{prompt,completion}_tokens of a JSON answer (completion 0 when
 * absent, as for embeddings): 0, or -ENOENT when there is no usable usage.
 * Where "usage" is the answer's last member (as providers write it), only
 * that object is parsed, not the whole answer. */
int proxy_parse_usage(const char *body, size_t len, struct proxy_usage *u);

/* What one SSE event of a streamed completion carried. */
struct proxy_event {
	int done;           /* "data: [DONE]" */
	int has_usage;      /* a usage object with token counts (in *u) */
	int usage_only;     /* ... and no choices: the include_usage chunk */
	uint64_t output_tokens; /* estimated tokens of the text deltas it carried */
	struct proxy_usage u;
};

/*
 * Read one SSE event (the bytes between two blank lines, without them):
 * its "data:" lines joined. Events that are not JSON (comments, pings) leave
 * *@ev zeroed. Never fails.
 */
void proxy_parse_event(const char *ev_text, size_t len, struct proxy_event *ev);

/*
 * Length of the first complete SSE event in @buf (up to and including the
 * blank line that ends it: "\n\n", "\r\n\r\n" or "\r\r"), or 0 if there is
 * none yet. *@body_len gets the event's length without its terminator.
 */
size_t proxy_sse_next(const char *buf, size_t len, size_t *body_len);

#endif
