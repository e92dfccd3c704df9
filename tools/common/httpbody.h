/* SPDX-License-Identifier: MIT */
/*
 * httpbody.h - what quota-sim and quota-proxy both do with a request body:
 * collect libmicrohttpd's upload pieces under a size cap (as quota-worker
 * collects libcurl's pieces of a response), and measure how deeply a JSON
 * text nests before handing it to cJSON (a recursive parser).
 */
#ifndef QUOTA_HTTPBODY_H
#define QUOTA_HTTPBODY_H

#include <stddef.h>

/*
 * Append @n bytes of upload to the body *@body of *@len bytes in a buffer
 * of *@cap (grown by doubling, NUL-terminated). A body that would pass @max
 * bytes is not grown further: *@too_big is set and the rest is dropped.
 * Returns 0, or -ENOMEM.
 */
int httpbody_append(char **body, size_t *len, size_t *cap, int *too_big, size_t max,
		    const char *data, size_t n);

/* The deepest nesting of [ and { outside strings in @n bytes of @s, counted
 * up to @limit + 1 (enough to refuse it). */
int httpbody_json_depth(const char *s, size_t n, int limit);

#endif
