/* SPDX-License-Identifier: MIT */
/*
 * client.c - the per-process handle: attach (open, validate, take a client
 * slot), detach (give back what is held), name lookup, the manual clock and
 * error strings.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

uint64_t qc_fork_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_child(void)
{
	qc_fork_gen++;
}

static void atfork_register(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

static bool segment_name_ok(const char *name)
{
	size_t n = strnlen(name, 256);
	if (n == 0 || n > 250)
		return false;
	return strchr(name, '/') == NULL;
}

static int map_segment(const char *name, bool readonly, void **ret_base, uint64_t *ret_size)
{
	char path[256];
	path[0] = '/';
	strcpy(path + 1, name);
	int fd = shm_open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	/* A world-writable segment could have been planted by anyone. */
	if (!S_ISREG(st.st_mode) || (st.st_mode & S_IWOTH)) {
		close(fd);
		return -EACCES;
	}
	if (st.st_size < QS_HEADER_SIZE) {
		close(fd);
		return -EBADMSG;
	}
	void *base = mmap(NULL, (size_t)st.st_size, readonly ? PROT_READ : PROT_READ | PROT_WRITE,
			  MAP_SHARED, fd, 0);
	close(fd);
	if (base == MAP_FAILED)
		return -errno;
	*ret_base = base;
	*ret_size = (uint64_t)st.st_size;
	return 0;
}

static int claim_slot(struct quota_client *c)
{
	int pid = getpid();
	uint64_t start = qc_proc_starttime(pid);
	for (uint32_t i = 0; i < c->h->client_capacity; i++) {
		struct qs_client *cs = qs_client_at(c->base, i);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_relaxed);
		if (QS_CLIENT_STATUS(w) != QS_CLIENT_FREE)
			continue;
		uint64_t claiming = ((QS_CLIENT_GEN(w) + 1) << 8) | QS_CLIENT_CLAIMING;
		/* acquire: the previous owner's (or reclaimer's) writes to the slot
		 * happen before we reuse it. */
		if (!atomic_compare_exchange_strong_explicit(&cs->state, &w, claiming,
							     memory_order_acquire, memory_order_relaxed))
			continue;
		atomic_store_explicit(&cs->pid, pid, memory_order_relaxed);
		atomic_store_explicit(&cs->starttime, start, memory_order_relaxed);
		atomic_store_explicit(&cs->intent, 0, memory_order_relaxed);
		atomic_store_explicit(&cs->refund_intent, 0, memory_order_relaxed);
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++) {
			struct qs_row *row = &cs->rows[r];
			atomic_store_explicit(&row->quota1, 0, memory_order_relaxed);
			atomic_store_explicit(&row->held, 0, memory_order_relaxed);
			atomic_store_explicit(&row->admitted, 0, memory_order_relaxed);
			atomic_store_explicit(&row->in_tokens, 0, memory_order_relaxed);
			atomic_store_explicit(&row->out_tokens, 0, memory_order_relaxed);
			for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
				atomic_store_explicit(&row->rejected[k], 0, memory_order_relaxed);
		}
		uint64_t live = (claiming & ~0xffULL) | QS_CLIENT_LIVE;
		/* release: pid, start time and clean rows are visible before LIVE */
		atomic_store_explicit(&cs->state, live, memory_order_release);
		c->slot = i;
		c->cs = cs;
		c->slot_word = live;
		/* Tell a running quotad to look (it rescans on its next tick). */
		atomic_fetch_add_explicit(&c->h->client_seq, 1, memory_order_release);
		return 0;
	}
	return -EUSERS;
}

static int attach(const char *segment, bool observer, quota_client **ret)
{
	if (!ret)
		return -EINVAL;
	if (!segment) {
		segment = getenv("QUOTA_SEGMENT");
		if (!segment || !*segment)
			segment = "quota";
	}
	if (!segment_name_ok(segment))
		return -EINVAL;
	pthread_once(&atfork_once, atfork_register);

	void *base;
	uint64_t size;
	int r = map_segment(segment, observer, &base, &size);
	if (r < 0)
		return r;
	/* quotad publishes READY when the segment is complete: wait a little
	 * for one that is starting. */
	for (int i = 0; (r = qs_validate(base, size)) == -EAGAIN && i < 2000; i++) {
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
	if (r < 0) {
		munmap(base, size);
		return r == -EAGAIN ? -ETIMEDOUT : r;
	}
	struct quota_client *c = calloc(1, sizeof(*c));
	if (!c) {
		munmap(base, size);
		return -ENOMEM;
	}
	c->base = base;
	c->size = size;
	c->h = base;
	c->manual = (c->h->incompat_flags & QS_INCOMPAT_MANUAL_CLOCK) != 0;
	c->quota_capacity = c->h->quota_capacity;
	c->fork_gen = qc_fork_gen;
	c->row_of = calloc(c->quota_capacity, sizeof(*c->row_of));
	if (!c->row_of) {
		munmap(base, size);
		free(c);
		return -ENOMEM;
	}
	r = observer ? 0 : claim_slot(c);
	if (r < 0) {
		munmap(base, size);
		free(c->row_of);
		free(c);
		return r;
	}
	*ret = c;
	return 0;
}

int quota_open(const char *segment, quota_client **ret)
{
	return attach(segment, false, ret);
}

int qc_open_observer(const char *segment, quota_client **ret)
{
	return attach(segment, true, ret);
}

void quota_close(quota_client *c)
{
	if (!c)
		return;
	/* A forked child holds a copy of its parent's handle: the slot is not
	 * its to give back. An observer has none. */
	if (c->cs && c->fork_gen == qc_fork_gen) {
		for (uint32_t r = 0; r < c->rows_used; r++) {
			struct qs_row *row = &c->cs->rows[r];
			uint32_t id1 = atomic_load_explicit(&row->quota1, memory_order_relaxed);
			if (id1 == 0 || id1 > c->quota_capacity)
				continue;
			struct qs_quota *q = qs_quota_at(c->base, id1 - 1);
			uint32_t held = atomic_load_explicit(&row->held, memory_order_relaxed);
			if (held)
				qc_inflight_release(c, q, row, id1 - 1, held);
			atomic_fetch_add_explicit(&q->st_admitted, atomic_load_explicit(&row->admitted, memory_order_relaxed), memory_order_relaxed);
			atomic_fetch_add_explicit(&q->st_in_tokens, atomic_load_explicit(&row->in_tokens, memory_order_relaxed), memory_order_relaxed);
			atomic_fetch_add_explicit(&q->st_out_tokens, atomic_load_explicit(&row->out_tokens, memory_order_relaxed), memory_order_relaxed);
			for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
				atomic_fetch_add_explicit(&q->st_rejected[k], atomic_load_explicit(&row->rejected[k], memory_order_relaxed), memory_order_relaxed);
			/* The reader sums rows of LIVE slots plus st_*: clear the row so
			 * nothing is counted twice while we go. */
			atomic_store_explicit(&row->quota1, 0, memory_order_relaxed);
		}
		uint64_t w = c->slot_word;
		uint64_t free_word = (w & ~0xffULL) | QS_CLIENT_FREE;
		/* release: our last writes to the slot happen before it is reused */
		atomic_compare_exchange_strong_explicit(&c->cs->state, &w, free_word,
							memory_order_release, memory_order_relaxed);
	}
	munmap(c->base, c->size);
	free(c->row_of);
	free(c);
}

struct qs_row *qc_row_new(struct quota_client *c, uint32_t id)
{
	if (c->rows_used >= QS_CLIENT_ROWS)
		return NULL;
	struct qs_row *row = &c->cs->rows[c->rows_used];
	/* release: readers that see quota1 see the zeroed counters */
	atomic_store_explicit(&row->quota1, id + 1, memory_order_release);
	c->row_of[id] = (uint16_t)(++c->rows_used);
	return row;
}

void qc_inflight_release(struct quota_client *c, struct qs_quota *q, struct qs_row *row,
			 uint32_t id, uint32_t n)
{
	/* release: the intent is visible before the counter changes, so that a
	 * reclaimer that finds us dead in between knows it cannot trust held. */
	atomic_store_explicit(&c->cs->intent, ((uint64_t)n << 32) | (id + 1), memory_order_release);
	/* seq_cst, with the load of inflight_waiters below: either a waiter
	 * (inflight_wait()) sees this release, or we see its count and wake it */
	atomic_fetch_add_explicit(&q->inflight, QS_INFLIGHT_SEQ1 - n, memory_order_seq_cst);
	atomic_store_explicit(&row->held, atomic_load_explicit(&row->held, memory_order_relaxed) - n,
			      memory_order_relaxed);
	/* release: held is final before the intent is withdrawn */
	atomic_store_explicit(&c->cs->intent, 0, memory_order_release);
	if (atomic_load_explicit(&q->inflight_waiters, memory_order_seq_cst)) {
		atomic_fetch_add_explicit(&q->inflight_futex, 1, memory_order_release);
		syscall(SYS_futex, &q->inflight_futex, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
	}
}

int quota_find(quota_client *c, const char *quota_name)
{
	if (!c || !quota_name)
		return -EINVAL;
	size_t n = strnlen(quota_name, QUOTA_NAME_MAX + 1);
	if (n == 0 || n > QUOTA_NAME_MAX)
		return -EINVAL;
	int id = qs_index_find(c->base, quota_name);
	if (id < 0)
		return id == -EAGAIN ? -EAGAIN : -ENOENT;
	/* A quota added after we attached was not validated by quota_open. */
	if (qs_validate_quota(c->h, qs_quota_at(c->base, (uint32_t)id)) < 0)
		return -EBADMSG;
	return id;
}

int quota_count(quota_client *c)
{
	if (!c)
		return -EINVAL;
	uint32_t n = atomic_load_explicit(&c->h->quota_count, memory_order_acquire);
	return (int)(n > c->quota_capacity ? c->quota_capacity : n);
}

int64_t quota_now(quota_client *c)
{
	if (!c)
		return -EINVAL;
	return qc_clock(c);
}

int quota_clock_set(quota_client *c, int64_t now_ns)
{
	if (!c || now_ns < 0)
		return -EINVAL;
	if (!c->manual || !c->cs)
		return -EPERM;
	int64_t cur = atomic_load_explicit(&c->h->manual_now_ns, memory_order_relaxed);
	do {
		if (now_ns < cur)
			return -EINVAL;
		/* seq_cst: pairs with the load in qc_clock() */
	} while (!atomic_compare_exchange_weak_explicit(&c->h->manual_now_ns, &cur, now_ns,
							memory_order_seq_cst, memory_order_relaxed));
	atomic_fetch_add_explicit(&c->h->clock_seq, 1, memory_order_release);
	syscall(SYS_futex, &c->h->clock_seq, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
	return 0;
}

const char *quota_strerror(int err)
{
	switch (err) {
	case 0: return "success";
	case -EAGAIN: return "budget not available within the timeout; retry after retry_after_ns";
	case -E2BIG: return "request can never be admitted (above a limit's capacity, the context window or the budget)";
	case -EDQUOT: return "spend budget of the current day or month reached";
	case -ENOENT: return "no such segment or quota";
	case -EINVAL: return "invalid argument (or ticket already settled)";
	case -EACCES: return "permission denied on the segment";
	case -EPERM: return "operation not permitted (manual clock only)";
	case -EBADMSG: return "not a quota segment, or a corrupt one";
	case -EPROTONOSUPPORT: return "segment layout version or feature not supported by this library";
	case -ETIMEDOUT: return "segment still initializing";
	case -EUSERS: return "client table of the segment is full";
	case -ENOSPC: return "this process tracks in-flight requests on too many quotas";
	case -ENOMEM: return "out of memory";
	case -ECHILD: return "handle was opened by the parent process: call quota_open() in the child";
	case -ERANGE: return "value out of range";
	default: return err < 0 ? "unknown error" : "not an error code";
	}
}
