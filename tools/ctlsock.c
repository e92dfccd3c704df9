/* SPDX-License-Identifier: MIT */
/*
 * ctlsock.c - a client for quotad's control socket (newline-delimited JSON,
 * one request and one reply per line; quotad/control.c) that never blocks
 * past its deadline and never prints: connect, send and receive are
 * non-blocking and polled against one CLOCK_MONOTONIC deadline, so a quotad
 * that is stopped, hung or slow costs a live view at most @timeout_ms.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ctlsock.h"

#define REPLY_MAX (16 << 20) /* a clients reply for 4,096 slots fits well */

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

__attribute__((format(printf, 4, 5)))
static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return r;
}

/* Wait for @events on @fd until @deadline (ms): 0, or -ETIMEDOUT / -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - mono_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { fd, events, 0 };
		int r = poll(&p, 1, (int)left);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

static int send_all(int fd, const char *p, size_t len, int64_t deadline)
{
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		int r = wait_fd(fd, POLLOUT, deadline);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Read up to and including the first newline into a malloc'd buffer. */
static int recv_line(int fd, int64_t deadline, char **ret, size_t *ret_len)
{
	size_t cap = 65536, got = 0;
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (got + 1 == cap) {
			char *nb = cap < REPLY_MAX ? realloc(buf, cap * 2) : NULL;
			if (!nb) {
				free(buf);
				return cap < REPLY_MAX ? -ENOMEM : -EMSGSIZE;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t n = recv(fd, buf + got, cap - got - 1, 0);
		if (n > 0) {
			got += (size_t)n;
			if (memchr(buf + got - n, '\n', (size_t)n))
				break;
			continue;
		}
		int r = n == 0 ? -ECONNRESET : errno == EAGAIN || errno == EINTR ? 0 : -errno;
		if (r == 0)
			r = wait_fd(fd, POLLIN, deadline);
		if (r < 0) {
			free(buf);
			return r;
		}
	}
	*ret = buf;
	*ret_len = got;
	return 0;
}

int ctl_request(const char *path, const char *req, int timeout_ms, cJSON **ret, char *err,
		size_t errlen)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (!path || !*path || strlen(path) >= sizeof(a.sun_path))
		return fail(err, errlen, -EINVAL, "no usable control socket path");
	strcpy(a.sun_path, path);
	int64_t deadline = mono_ms() + timeout_ms;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return fail(err, errlen, -errno, "socket: %s", strerror(errno));
	/* A unix connect does not go EINPROGRESS: it succeeds, or EAGAIN when
	 * quotad's backlog is full, which we report as busy. */
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int e = errno;
		close(fd);
		return fail(err, errlen, -e, "cannot reach quotad at %s: %s", path,
			    e == EAGAIN ? "busy" : strerror(e));
	}
	size_t len = strlen(req);
	char *line = malloc(len + 2);
	if (!line) {
		close(fd);
		return fail(err, errlen, -ENOMEM, "out of memory");
	}
	memcpy(line, req, len);
	memcpy(line + len, "\n", 2);
	int r = send_all(fd, line, len + 1, deadline);
	free(line);
	char *buf = NULL;
	size_t got = 0;
	if (r == 0)
		r = recv_line(fd, deadline, &buf, &got);
	close(fd);
	if (r < 0)
		return fail(err, errlen, r, "%s: %s", path,
			    r == -ETIMEDOUT ? "no reply in time" :
			    r == -ECONNRESET ? "connection closed before a reply" : strerror(-r));
	cJSON *reply = cJSON_ParseWithLength(buf, got);
	free(buf);
	if (!cJSON_IsObject(reply)) {
		cJSON_Delete(reply);
		return fail(err, errlen, -EBADMSG, "%s: malformed reply", path);
	}
	if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(reply, "error");
		r = fail(err, errlen, -EPERM, "quotad: %s", cJSON_IsString(e) ? e->valuestring : "request failed");
		cJSON_Delete(reply);
		return r;
	}
	*ret = reply;
	return 0;
}
