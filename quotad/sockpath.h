/* SPDX-License-Identifier: MIT */
/*
 * sockpath.h - where the control socket is by default, shared by quotad and
 * quotactl so that they agree: $QUOTA_SOCKET, else /run/quotad.sock for
 * root, else $XDG_RUNTIME_DIR/quotad.sock.
 */
#ifndef QUOTAD_SOCKPATH_H
#define QUOTAD_SOCKPATH_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Fill @buf (sun_path sized) with the default path: 0, -ENOENT when there is
 * none (not root and no $XDG_RUNTIME_DIR), -ENAMETOOLONG. */
static inline int qd_default_socket_path(char *buf, size_t len)
{
	const char *env = getenv("QUOTA_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");
	int n;
	if (env && *env)
		n = snprintf(buf, len, "%s", env);
	else if (geteuid() == 0)
		n = snprintf(buf, len, "/run/quotad.sock");
	else if (xdg && *xdg)
		n = snprintf(buf, len, "%s/quotad.sock", xdg);
	else
		return -ENOENT;
	return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

#endif /* QUOTAD_SOCKPATH_H */
