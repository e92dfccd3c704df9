/* SPDX-License-Identifier: MIT */
/*
 * ctllib.h - helpers for the control-plane tests: unique segment and socket
 * names, quotad started with --ready-fd (no sleeping), control requests,
 * and cleanup of every process, segment, socket and file a test made, also
 * when it fails (atexit in the test's process; children get PDEATHSIG).
 */
#ifndef QUOTA_CTLLIB_H
#define QUOTA_CTLLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "internal.h"
#include "layout.h"

#define CL_S 1000000000LL
#define CL_MS 1000000LL

struct cl_env {
	char seg[96];    /* segment name, without '/' */
	char dir[96];    /* private temp dir (mode 0755) */
	char sock[108];  /* control socket, inside dir */
	char log[128];   /* quotad's stderr, appended */
};

/* Fresh names for this test; everything is removed at exit. */
void cl_env(struct cl_env *e, const char *tag);

/* Write @json to DIR/@name and return its path (static buffer per call). */
const char *cl_file(const struct cl_env *e, const char *name, const char *json);

/* Start quotad on @e with @config (path or NULL) and extra args (NULL
 * terminated); wait for "ready". Fails the test if it does not get ready. */
pid_t cl_quotad(const struct cl_env *e, const char *config, ...);

/* Start quotad and report instead of failing: returns its pid and sets
 * *@ready (false: it exited, *@status holds its wait status). */
pid_t cl_quotad_try(const struct cl_env *e, const char *config, const char *const *extra,
		    bool *ready, int *status);

/* Start quotad without waiting: *@ret_fd gives "ready\n" or EOF. */
pid_t cl_quotad_spawn(const struct cl_env *e, const char *config, const char *const *extra, int *ret_fd);
/* Wait (10 s at most) for "ready" on @fd, then close it. */
bool cl_ready(int fd);

/* Signal @pid and reap it; returns the wait status. */
int cl_stop(pid_t pid, int sig);

/* fork() with PDEATHSIG: the child dies with the test. Registers the pid. */
pid_t cl_fork(void);

/* One request line on the socket; the reply line (malloc'ed) or NULL. */
char *cl_request(const char *sock, const char *line);

/* A number at a dotted path of a JSON reply ("daemon.reclaim.slots"). */
double cl_json_num(const char *reply, const char *path);

/* Run a shell command made like printf: its exit status (-1 if killed). */
__attribute__((format(printf, 1, 2)))
int cl_sh(const char *fmt, ...);

/* Monotonic ns. */
int64_t cl_now(void);

/* Kill every registered process, remove segments, sockets and files. */
void cl_cleanup(void);

/* Open an observer-capable full client on the segment (fails the test). */
quota_client *cl_open(const char *seg);

#endif
