/* SPDX-License-Identifier: MIT */
/*
 * top.h - `quotactl top`, the live full-screen view of a quota segment
 * (top.c; its data in top-data.c, its layout in top-view.c).
 */
#ifndef QUOTA_TOOLS_TOP_H
#define QUOTA_TOOLS_TOP_H

/*
 * Run `quotactl top` with the arguments after the command name. @segment is
 * the segment's name; @socket_path quotad's control socket, or "" for the
 * default (sockpath.h). Returns the exit status: 0, 1 runtime, 2 usage.
 */
int quotactl_top(const char *segment, const char *socket_path, int argc, char **argv);

#endif
