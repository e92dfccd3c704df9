/* SPDX-License-Identifier: MIT */
/*
 * ctlsock.h - one request to quotad's control socket with a deadline, for
 * tools that must not block or print (quotactl top). See ctlsock.c.
 */
#ifndef QUOTA_TOOLS_CTLSOCK_H
#define QUOTA_TOOLS_CTLSOCK_H

#include <stddef.h>

#include <cjson/cJSON.h>

/*
 * Send @req (one JSON object, no newline) to the unix stream socket @path and
 * read quotad's one-line reply, all within @timeout_ms. Returns 0 and sets
 * *@ret to the parsed reply when its "ok" is true; otherwise a negative errno
 * and a human reason in @err (quotad's own "error" text when it refused).
 * Never prints.
 */
int ctl_request(const char *path, const char *req, int timeout_ms, cJSON **ret, char *err,
		size_t errlen);

#endif
