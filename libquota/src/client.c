/* SPDX-License-Identifier: MIT */
/*
 * client.c - the per-process handle: attach (open, validate the header into
 * a private geometry, make a nonce), the per-thread contexts (each claims a
 * client slot on its first use and tells quotad at once), detach (give back
 * what is held), and the in-flight release every path shares.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

uint64_t qc_fork_gen;
__thread struct qc_tls qc_tls __attribute__((tls_model("initial-exec")));
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
	return n > 0 && n <= 250 && strchr(name, '/') == NULL;
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

static uint64_t make_nonce(void)
{
	static _Atomic uint64_t counter;
	uint64_t n = 0;
	if (getrandom(&n, sizeof(n), GRND_NONBLOCK) != sizeof(n)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		n = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 40);
	}
	n ^= atomic_fetch_add(&counter, 0x9e3779b97f4a7c15ULL);
	return n ? n : 1;
}

int qc_notify_addr(const char *segment, void *sockaddr_un, unsigned *ret_len)
{
	struct sockaddr_un *a = sockaddr_un;
	uint64_t h = 14695981039346656037ULL;
	for (const char *p = segment; *p; p++) {
		h ^= (unsigned char)*p;
		h *= 1099511628211ULL;
	}
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	/* Abstract namespace: nothing on disk to leave behind. */
	int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "libquota.notify.%016llx",
			 (unsigned long long)h);
	*ret_len = (unsigned)(offsetof(struct sockaddr_un, sun_path) + 1 + (unsigned)n);
	return 0;
}

/* Tell quotad that slot @slot was claimed, so that it watches our process
 * from now on (not at its next scan). Best effort: no quotad, no harm. */
static void notify(const struct quota_client *c, uint32_t slot)
{
	struct sockaddr_un a;
	unsigned len;
	qc_notify_addr(c->segment, &a, &len);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return;
	(void)sendto(fd, &slot, sizeof(slot), MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&a, len);
	close(fd);
}

static int claim_slot(struct quota_client *c, struct qc_thread *t)
{
	int pid = getpid();
	if (pid <= 0 || pid > QS_PID_MAX)
		return -EOVERFLOW;
	uint64_t start = qc_proc_starttime(pid);
	for (uint32_t i = 0; i < c->g.client_capacity; i++) {
		struct qs_client *cs = qs_client_at(&c->g, i);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_relaxed);
		if (QS_CLIENT_STATUS(w) != QS_CLIENT_FREE)
			continue;
		uint32_t gen = QS_CLIENT_GEN(w) + 1;
		uint64_t claiming = QS_CLIENT_WORD(gen, pid, QS_CLIENT_CLAIMING);
		/* acquire: the previous owner's (or reclaimer's) writes to the slot
		 * happen before we reuse it. The word names our pid: a death from
		 * here on is quotad's to clean up. */
		if (!atomic_compare_exchange_strong_explicit(&cs->state, &w, claiming,
							     memory_order_acquire, memory_order_relaxed))
			continue;
		notify(c, i);
		atomic_store_explicit(&cs->starttime, start, memory_order_relaxed);
		atomic_store_explicit(&cs->intent, 0, memory_order_relaxed);
		atomic_store_explicit(&cs->refund_intent, 0, memory_order_relaxed);
		qc_wait_end(&c->g, cs);
		static const struct qs_row zero;
		for (uint32_t r = 0; r < QS_CLIENT_ROWS; r++)
			qs_store_words(&cs->rows[r], &zero, sizeof(zero));
		uint64_t live = QS_CLIENT_WORD(gen, pid, QS_CLIENT_LIVE);
		/* release: start time and clean rows are visible before LIVE */
		atomic_store_explicit(&cs->state, live, memory_order_release);
		atomic_fetch_add_explicit(&c->g.h->client_seq, 1, memory_order_relaxed);
		t->slot = i;
		t->cs = cs;
		t->slot_word = live;
		return 0;
	}
	return -EUSERS;
}

/* A thread that used the handle exits: its context (and client slot, with
 * what its rows hold) waits for the next thread. */
static void thread_exit(void *p)
{
	struct qc_thread *t = p;
	qc_tls.c = NULL;
	/* a thread cancelled in a lower-lane wait leaves its line */
	qc_wait_end(&t->c->g, t->cs);
	/* release: the thread's last writes to its slot happen before another
	 * thread takes the context over (pairs with the acquire below) */
	atomic_store_explicit(&t->in_use, 0, memory_order_release);
}

static void thread_free(struct qc_thread *t, uint32_t quota_capacity)
{
	if (t->cfg)
		for (uint32_t i = 0; i < quota_capacity; i++)
			free(t->cfg[i]);
	free(t->cfg);
	free(t->row_of);
	free(t);
}

struct qc_thread *qc_thread_slow(struct quota_client *c, int *err)
{
	if (c->observer) {
		*err = -EPERM;
		return NULL;
	}
	pthread_mutex_lock(&c->lock);
	struct qc_thread *t;
	for (t = c->threads; t; t = t->next) {
		int free_ = 0;
		/* acquire: pairs with thread_exit()'s release */
		if (atomic_compare_exchange_strong_explicit(&t->in_use, &free_, 1, memory_order_acquire,
							    memory_order_relaxed))
			break;
	}
	if (!t) {
		t = calloc(1, sizeof(*t));
		if (t) {
			t->c = c;
			t->row_of = calloc(c->g.quota_capacity, sizeof(*t->row_of));
			t->cfg = calloc(c->g.quota_capacity, sizeof(*t->cfg));
		}
		int r = t && t->row_of && t->cfg ? claim_slot(c, t) : -ENOMEM;
		if (r < 0) {
			if (t)
				thread_free(t, c->g.quota_capacity);
			pthread_mutex_unlock(&c->lock);
			*err = r;
			return NULL;
		}
		atomic_store_explicit(&t->in_use, 1, memory_order_relaxed);
		t->next = c->threads;
		c->threads = t;
	}
	pthread_mutex_unlock(&c->lock);
	pthread_setspecific(c->key, t);
	return t;
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
	struct quota_client *c = calloc(1, sizeof(*c));
	if (!c) {
		munmap(base, size);
		return -ENOMEM;
	}
	/* quotad publishes READY when the segment is complete: wait a little
	 * for one that is starting. */
	for (int i = 0; (r = qs_geom_load(&c->g, base, size)) == -EAGAIN && i < 2000; i++)
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	if (r == 0 && pthread_key_create(&c->key, thread_exit) != 0)
		r = -EAGAIN;
	if (r < 0) {
		munmap(base, size);
		free(c);
		return r == -EAGAIN ? -ETIMEDOUT : r;
	}
	c->manual = (c->g.incompat_flags & QS_INCOMPAT_MANUAL_CLOCK) != 0;
	c->observer = observer;
	c->nonce = make_nonce();
	c->fork_gen = qc_fork_gen;
	snprintf(c->segment, sizeof(c->segment), "%s", segment);
	pthread_mutex_init(&c->lock, NULL);
	if (!observer) {
		c->first = qc_thread_slow(c, &r);
		if (!c->first) {
			pthread_key_delete(c->key);
			pthread_mutex_destroy(&c->lock);
			munmap(base, size);
			free(c);
			return r;
		}
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

/* Every row taken: give up one that holds no in-flight slot and counts no
 * open ticket (its statistics folded into its quota's totals), round robin:
 * a row that holds either is part of its process's exact sum. The index of
 * the row, or QS_CLIENT_ROWS if every row holds something. */
static uint32_t evict_row(struct qc_thread *t)
{
	for (uint32_t i = 0; i < QS_CLIENT_ROWS; i++) {
		uint32_t r = (t->evict_next + i) % QS_CLIENT_ROWS;
		struct qs_row *row = &t->cs->rows[r];
		uint32_t old1 = atomic_load_explicit(&row->quota1, memory_order_relaxed);
		if (atomic_load_explicit(&row->held, memory_order_relaxed) != 0 ||
		    atomic_load_explicit(&row->open[0], memory_order_relaxed) != 0 ||
		    atomic_load_explicit(&row->open[1], memory_order_relaxed) != 0 || old1 == 0 ||
		    old1 > t->c->g.quota_capacity)
			continue;
		qc_row_fold(qs_quota_at(&t->c->g, old1 - 1), row);
		static const struct qs_row zero;
		qs_store_words(row, &zero, sizeof(zero));
		t->row_of[old1 - 1] = 0;
		t->evict_next = r + 1;
		return r;
	}
	return QS_CLIENT_ROWS;
}

struct qs_row *qc_row_new(struct qc_thread *t, uint32_t id)
{
	uint32_t r = t->rows_used < QS_CLIENT_ROWS ? t->rows_used++ : evict_row(t);
	if (r == QS_CLIENT_ROWS)
		return NULL;
	struct qs_row *row = &t->cs->rows[r];
	/* release: readers that see quota1 see the zeroed counters */
	atomic_store_explicit(&row->quota1, id + 1, memory_order_release);
	t->row_of[id] = (uint16_t)(r + 1);
	return row;
}

void qc_inflight_wake(struct qs_quota *q)
{
	/* seq_cst, with the RMW on the in-flight word before it: either a
	 * waiter (reserve.c) sees the release, or we see its count and wake it */
	if (atomic_load_explicit(&q->inflight_waiters, memory_order_seq_cst)) {
		atomic_fetch_add_explicit(&q->inflight_futex, 1, memory_order_release);
		syscall(SYS_futex, &q->inflight_futex, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
	}
}

/* Lower the in-flight count by @n, saturating at zero. */
static void inflight_sub(struct qs_quota *q, uint32_t n)
{
	uint64_t w = atomic_load_explicit(&q->inflight, memory_order_relaxed), next;
	do {
		uint32_t cnt = QS_INFLIGHT_COUNT(w);
		next = w - (cnt < n ? cnt : n) + QS_INFLIGHT_SEQ1;
		/* seq_cst: see qc_inflight_wake() */
	} while (!atomic_compare_exchange_weak_explicit(&q->inflight, &w, next, memory_order_seq_cst,
							memory_order_relaxed));
}

void qc_inflight_release(struct qc_thread *t, struct qs_quota *q, struct qs_row *row, uint32_t id,
			 uint32_t n)
{
	/* release: the intent is visible before the counter changes, so that a
	 * reclaimer that finds us dead in between knows it cannot trust held. */
	atomic_store_explicit(&t->cs->intent, ((uint64_t)n << 32) | (id + 1), memory_order_release);
	inflight_sub(q, n);
	atomic_store_explicit(&row->held, atomic_load_explicit(&row->held, memory_order_relaxed) - (int32_t)n,
			      memory_order_relaxed);
	/* release: held is final before the intent is withdrawn */
	atomic_store_explicit(&t->cs->intent, 0, memory_order_release);
	qc_inflight_wake(q);
}

/* Give back what every context's rows hold for quota @id, net (one thread
 * may have settled another's tickets), through @t0's intent. */
static void close_quota(struct quota_client *c, struct qc_thread *t0, uint32_t id)
{
	struct qs_quota *q = qs_quota_at(&c->g, id);
	int64_t net = 0;
	for (struct qc_thread *t = c->threads; t; t = t->next)
		if (t->row_of[id])
			net += atomic_load_explicit(&t->cs->rows[t->row_of[id] - 1].held, memory_order_relaxed);
	uint32_t n = net > 0 ? (net > UINT32_MAX ? UINT32_MAX : (uint32_t)net) : 0;
	atomic_store_explicit(&t0->cs->intent, ((uint64_t)n << 32) | (id + 1), memory_order_release);
	if (n)
		inflight_sub(q, n);
	for (struct qc_thread *t = c->threads; t; t = t->next)
		if (t->row_of[id])
			atomic_store_explicit(&t->cs->rows[t->row_of[id] - 1].held, 0, memory_order_relaxed);
	atomic_store_explicit(&t0->cs->intent, 0, memory_order_release);
	if (n)
		qc_inflight_wake(q);
}

/* Read a counter and zero it (its one writer is gone or is us). */
static uint64_t take(_Atomic uint64_t *f)
{
	uint64_t v = atomic_load_explicit(f, memory_order_relaxed);
	atomic_store_explicit(f, 0, memory_order_relaxed);
	return v;
}

void qc_row_fold(struct qs_quota *q, struct qs_row *row)
{
	/* Counters taken (zeroed) and the row freed before they are added: a
	 * reader, or a process killed in between, undercounts for a moment
	 * rather than counting twice. */
	uint64_t adm = take(&row->admitted), in = take(&row->in_tokens), out = take(&row->out_tokens);
	uint64_t rej[QS_REASONS];
	for (unsigned k = 0; k < QS_REASONS; k++)
		rej[k] = take(&row->rejected[k]);
	uint32_t held = atomic_exchange_explicit(&row->alarm_held, 0, memory_order_relaxed);
	uint32_t over = atomic_exchange_explicit(&row->alarm_over, 0, memory_order_relaxed);
	/* Dropped, not folded: the histograms are a picture of live clients,
	 * and the open tickets of a handle that closed or a process that died
	 * can never be settled (an evicted row counts none). */
	for (int p = 0; p < 2; p++)
		atomic_store_explicit(&row->open[p], 0, memory_order_relaxed);
	atomic_store_explicit(&row->quota1, 0, memory_order_release);
	atomic_fetch_add_explicit(&q->st_alarm_held, held, memory_order_relaxed);
	atomic_fetch_add_explicit(&q->st_alarm_over, over, memory_order_relaxed);
	atomic_fetch_add_explicit(&q->st_admitted, adm, memory_order_relaxed);
	atomic_fetch_add_explicit(&q->st_in_tokens, in, memory_order_relaxed);
	atomic_fetch_add_explicit(&q->st_out_tokens, out, memory_order_relaxed);
	for (unsigned k = 0; k < QS_REASONS; k++)
		atomic_fetch_add_explicit(&q->st_rejected[k], rej[k], memory_order_relaxed);
}

/* Give back everything the handle's slots hold and free them. */
static void close_slots(struct quota_client *c)
{
	struct qc_thread *t0 = c->first ? c->first : c->threads;
	for (struct qc_thread *t = c->threads; t; t = t->next)
		for (uint32_t id = 0; id < c->g.quota_capacity && t->rows_used; id++)
			if (t->row_of[id])
				close_quota(c, t0, id);
	for (struct qc_thread *t = c->threads; t; t = t->next) {
		for (uint32_t id = 0; id < c->g.quota_capacity && t->rows_used; id++)
			if (t->row_of[id])
				qc_row_fold(qs_quota_at(&c->g, id), &t->cs->rows[t->row_of[id] - 1]);
		qc_wait_end(&c->g, t->cs);
		uint64_t w = t->slot_word;
		uint64_t free_word = QS_CLIENT_WORD(QS_CLIENT_GEN(w), 0, QS_CLIENT_FREE);
		/* release: our last writes to the slot happen before it is reused */
		atomic_compare_exchange_strong_explicit(&t->cs->state, &w, free_word,
							memory_order_release, memory_order_relaxed);
	}
}

void quota_close(quota_client *c)
{
	if (!c)
		return;
	/* A forked child holds a copy of its parent's handle: the slots are
	 * not its to give back. */
	if (!c->observer && c->fork_gen == qc_fork_gen)
		close_slots(c);
	pthread_key_delete(c->key);
	if (qc_tls.c == c)
		qc_tls.c = NULL;
	struct qc_thread *t = c->threads;
	while (t) {
		struct qc_thread *next = t->next;
		thread_free(t, c->g.quota_capacity);
		t = next;
	}
	pthread_mutex_destroy(&c->lock);
	munmap(c->g.base, c->g.size);
	free(c);
}

int quota_find(quota_client *c, const char *quota_name)
{
	if (!c || !quota_name)
		return -EINVAL;
	size_t n = strnlen(quota_name, QUOTA_NAME_MAX + 1);
	if (n == 0 || n > QUOTA_NAME_MAX)
		return -EINVAL;
	return qs_index_find(&c->g, quota_name);
}

int quota_count(quota_client *c)
{
	if (!c)
		return -EINVAL;
	return (int)qs_quota_count(&c->g);
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
	if (!c->manual || c->observer)
		return -EPERM;
	struct qs_header *h = c->g.h;
	int64_t cur = atomic_load_explicit(&h->manual_now_ns, memory_order_relaxed);
	do {
		if (now_ns < cur)
			return -EINVAL;
		/* seq_cst: pairs with the load in qc_clock() */
	} while (!atomic_compare_exchange_weak_explicit(&h->manual_now_ns, &cur, now_ns,
							memory_order_seq_cst, memory_order_relaxed));
	atomic_fetch_add_explicit(&h->clock_seq, 1, memory_order_release);
	syscall(SYS_futex, &h->clock_seq, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
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
	case -EINVAL: return "invalid argument (or a ticket already settled, or of another handle)";
	case -EACCES: return "permission denied on the segment";
	case -EPERM: return "operation not permitted (manual clock only, or a read-only handle)";
	case -EBADMSG: return "not a quota segment, or a corrupt one";
	case -EPROTONOSUPPORT: return "segment layout version or feature not supported by this library";
	case -ETIMEDOUT: return "segment still initializing";
	case -EUSERS: return "client table of the segment is full";
	case -ENOSPC: return "this thread tracks in-flight requests on too many quotas";
	case -ENOMEM: return "out of memory";
	case -ECHILD: return "handle was opened by the parent process: call quota_open() in the child";
	case -ERANGE: return "value out of range";
	case -EOVERFLOW: return "process id too large for the segment's client table";
	default: return err < 0 ? "unknown error" : "not an error code";
	}
}
