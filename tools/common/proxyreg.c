/* SPDX-License-Identifier: MIT */
/*
 * proxyreg.c - see proxyreg.h: the records by which quotactl finds the
 * quota-proxy processes of a segment (written by the proxy, listed by
 * quotactl).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proxyreg.h"

#define SHM_DIR "/dev/shm"

static const char *segment_or_default(const char *segment)
{
	if (!segment)
		segment = getenv("QUOTA_SEGMENT");
	if (!segment || !*segment)
		segment = "quota";
	return segment;
}

/* Field 22 of /proc/@pid/stat (start time in clock ticks), or 0. */
static uint64_t start_ticks(long pid)
{
	char path[64], buf[1024], *p;
	unsigned long long v = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d "
				"%*d %*d %*d %llu", &v) != 1)
		return 0;
	return v;
}

/* Whether the process of a record still runs (the same process, not a
 * reused pid). */
static int record_alive(const struct proxyreg *r)
{
	if (r->pid <= 0 || (kill((pid_t)r->pid, 0) < 0 && errno != EPERM))
		return 0;
	return start_ticks((long)r->pid) == r->start_ticks;
}

void proxyreg_clean_url(const char *url, char *out, unsigned long size)
{
	const char *host = strstr(url, "://"), *at, *end;
	size_t n = 0;

	if (!size)
		return;
	host = host ? host + 3 : url;
	end = host + strcspn(host, "/?#");
	at = memchr(host, '@', (size_t)(end - host));
	/* scheme:// */
	n = (size_t)(host - url);
	if (n >= size)
		n = size - 1;
	memcpy(out, url, n);
	if (at)
		host = at + 1;
	/* host[:port] and the path, up to a query or fragment */
	end = host + strcspn(host, "?#");
	if ((size_t)(end - host) >= size - n)
		end = host + (size - n - 1);
	memcpy(out + n, host, (size_t)(end - host));
	out[n + (size_t)(end - host)] = '\0';
}

/* Map the record /@name read-only into a copy; 0 or -1. */
static int read_record(const char *name, struct proxyreg *out)
{
	struct proxyreg *m;
	struct stat st;
	int fd = shm_open(name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != sizeof(*m)) {
		close(fd);
		return -1;
	}
	m = mmap(NULL, sizeof(*m), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return -1;
	/* acquire: pairs with the release store of the magic in proxyreg_open */
	if (atomic_load_explicit(&m->magic, memory_order_acquire) != PROXYREG_MAGIC ||
	    m->version != PROXYREG_VERSION || m->size != sizeof(*m)) {
		munmap(m, sizeof(*m));
		return -1;
	}
	memcpy(out, m, sizeof(*out)); /* counters: a snapshot, torn across fields at worst */
	munmap(m, sizeof(*m));
	out->segment[sizeof(out->segment) - 1] = '\0';
	out->listen[sizeof(out->listen) - 1] = '\0';
	out->upstream[sizeof(out->upstream) - 1] = '\0';
	return 0;
}

static int cmp_entry(const void *a, const void *b)
{
	const struct proxyreg_entry *x = a, *y = b;

	return x->r.pid < y->r.pid ? -1 : x->r.pid > y->r.pid;
}

int proxyreg_list(const char *segment, struct proxyreg_entry **ret)
{
	struct proxyreg_entry *v = NULL, *e;
	char prefix[300];
	size_t plen, n = 0, cap = 0;
	struct dirent *de;
	DIR *d;

	segment = segment_or_default(segment);
	if (snprintf(prefix, sizeof(prefix), "%s.proxy.", segment) >= (int)sizeof(prefix))
		return -ENAMETOOLONG;
	plen = strlen(prefix);
	d = opendir(SHM_DIR);
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		char *end;
		long pid;

		if (strncmp(de->d_name, prefix, plen) != 0)
			continue;
		pid = strtol(de->d_name + plen, &end, 10);
		if (pid <= 0 || *end)
			continue;
		if (n == cap) {
			struct proxyreg_entry *p = realloc(v, (cap ? cap * 2 : 8) * sizeof(*v));

			if (!p) {
				closedir(d);
				free(v);
				return -ENOMEM;
			}
			v = p;
			cap = cap ? cap * 2 : 8;
		}
		e = &v[n];
		snprintf(e->name, sizeof(e->name), "/%s", de->d_name);
		if (read_record(e->name, &e->r) < 0 || e->r.pid != pid ||
		    strcmp(e->r.segment, segment) != 0)
			continue;
		e->alive = record_alive(&e->r);
		n++;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), cmp_entry);
	*ret = v;
	return (int)n;
}

/* Remove the records of @segment's proxies that are gone. */
static void remove_stale(const char *segment)
{
	struct proxyreg_entry *v = NULL;
	int n = proxyreg_list(segment, &v);

	for (int i = 0; i < n; i++)
		if (!v[i].alive)
			shm_unlink(v[i].name);
	free(v);
}

static char reg_name[300];

int proxyreg_open(const char *segment, const char *listen, const char *upstream,
		  unsigned workers, struct proxyreg **ret)
{
	struct proxyreg *r;
	struct stat st;
	char segpath[300];
	int fd;

	segment = segment_or_default(segment);
	if (strlen(segment) >= sizeof(r->segment) ||
	    snprintf(reg_name, sizeof(reg_name), "/%s.proxy.%ld", segment, (long)getpid()) > 255)
		return -ENAMETOOLONG;
	remove_stale(segment);
	shm_unlink(reg_name); /* ours from before an exec, or a dead namesake's */
	fd = shm_open(reg_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	/* The segment's group reads it, as it reads the segment. */
	snprintf(segpath, sizeof(segpath), SHM_DIR "/%s", segment);
	if (stat(segpath, &st) == 0 && fchown(fd, (uid_t)-1, st.st_gid) < 0) {
		/* not in that group: the record stays the proxy user's group's */
	}
	if (ftruncate(fd, sizeof(*r)) < 0) {
		int e = -errno;

		close(fd);
		shm_unlink(reg_name);
		return e;
	}
	r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (r == MAP_FAILED) {
		shm_unlink(reg_name);
		return -ENOMEM;
	}
	r->version = PROXYREG_VERSION;
	r->size = sizeof(*r);
	r->pid = getpid();
	r->start_ticks = start_ticks((long)getpid());
	r->started_unix = (int64_t)time(NULL);
	r->workers = workers;
	snprintf(r->segment, sizeof(r->segment), "%s", segment);
	snprintf(r->listen, sizeof(r->listen), "%s", listen);
	proxyreg_clean_url(upstream, r->upstream, sizeof(r->upstream));
	/* release: the record is complete before a reader sees the magic */
	atomic_store_explicit(&r->magic, PROXYREG_MAGIC, memory_order_release);
	*ret = r;
	return 0;
}

void proxyreg_close(struct proxyreg *r)
{
	if (!r)
		return;
	shm_unlink(reg_name);
	munmap(r, sizeof(*r));
}
