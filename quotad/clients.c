/* SPDX-License-Identifier: MIT */
/*
 * clients.c - client liveness: which processes hold slots in the client
 * table, and giving back what the dead ones held (reclaim.c does the
 * giving back; this file decides when).
 *
 * A client claims a slot with one CAS that writes its pid into the slot's
 * state word (CLAIMING), then sends a datagram to quotad's notify socket
 * (an abstract unix address derived from the segment name) and only then
 * fills the slot and makes it LIVE. On the datagram quotad looks at that
 * slot at once: it opens a pidfd for the pid and polls it through the
 * io_uring loop. So a client is watched from within microseconds of its
 * claim, including a process that dies inside quota_open() (its slot names
 * it even while CLAIMING). The table is also walked every QD_TICK_NS (one
 * load per slot) as a backstop: a lost datagram, a quotad that started
 * after the client, slots freed by quota_close().
 *
 * For a LIVE slot, the process's start time (read after the pidfd is
 * opened) must match the slot's, so that the pidfd cannot belong to a later
 * process reusing the pid; a mismatch, or no such process, means the client
 * is dead. A dead process is reclaimed as a group: every slot with its pid
 * (and start time), since its threads' rows only add up together
 * (reclaim.c). A group whose reclamation waits for an audit stays
 * RECLAIMING and is retried every tick. A stalled but living process keeps
 * what it holds.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "quotad.h"

static int pidfd_open(int pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

int qd_clients_init(struct daemon *d)
{
	d->nwatch = d->g.client_capacity;
	d->watch = calloc(d->nwatch, sizeof(*d->watch));
	if (!d->watch) {
		qd_log("error", "out of memory");
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < d->nwatch; i++)
		d->watch[i].pidfd = -1;
	return 0;
}

/* Stop watching slot @i: cancel its poll; the fd is closed when the
 * cancelled poll completes (an fd with a pending operation stays open, so
 * its number cannot be reused and confuse the completion). */
static void unwatch(struct daemon *d, uint32_t i)
{
	struct qd_watch *w = &d->watch[i];
	if (w->pidfd >= 0) {
		struct io_uring_sqe *sqe = qd_sqe(d);
		io_uring_prep_poll_remove(sqe, QD_UD(QD_EV_PIDFD, i, w->pidfd));
		io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_IGNORE, 0, 0));
		w->pidfd = -1;
	}
	w->word = 0;
	w->pending = false;
}

/* Reclaim every slot of dead process @pid (start time @start, 0 unknown). */
static void reclaim_pid(struct daemon *d, int pid, uint64_t start, const char *why)
{
	uint32_t *slots = malloc(d->nwatch * sizeof(*slots)), n = 0;
	if (!slots) {
		qd_log("error", "out of memory: reclaiming pid %d later", pid);
		return;
	}
	for (uint32_t i = 0; i < d->nwatch; i++) {
		struct qs_client *cs = qs_client_at(&d->g, i);
		uint64_t w = atomic_load_explicit(&cs->state, memory_order_acquire);
		uint32_t st = QS_CLIENT_STATUS(w);
		if (st == QS_CLIENT_FREE || st > QS_CLIENT_RECLAIMING || QS_CLIENT_PID(w) != pid)
			continue;
		uint64_t s = atomic_load_explicit(&cs->starttime, memory_order_relaxed);
		if (st == QS_CLIENT_LIVE && start && s && s != start)
			continue; /* a later process with the same pid */
		slots[n++] = i;
	}
	struct qc_reclaim_counts counts = { 0 };
	int r = n ? qc_reclaim_group(&d->g, slots, n, &counts) : 0;
	d->st.reclaimed_inflight += counts.given;
	d->st.audits += counts.audits;
	d->st.anomalies += counts.anomalies;
	d->st.repaired += counts.repaired;
	if (counts.anomalies)
		qd_log("warning", "pid %d: %u in-flight slot%s held beyond the shared count (clamped at zero)",
		       pid, counts.anomalies, counts.anomalies == 1 ? "" : "s");
	if (counts.audits)
		qd_log("info", "pid %d died mid-update: in-flight count audited", pid);
	for (uint32_t k = 0; k < n; k++) {
		struct qd_watch *w = &d->watch[slots[k]];
		if (r == -EAGAIN) {
			if (!w->pending)
				qd_log("info", "client slot %u (pid %d) %s: waiting for a quiet moment to audit",
				       slots[k], pid, why);
			w->pending = true;
			w->pid = pid;
			continue;
		}
		unwatch(d, slots[k]);
	}
	if (r == 0 && n) {
		d->st.reclaimed_slots += n;
		qd_log("info", "pid %d %s: %u client slot%s reclaimed, %u in-flight slot%s given back", pid, why,
		       n, n == 1 ? "" : "s", counts.given, counts.given == 1 ? "" : "s");
	}
	free(slots);
}

/* A LIVE or CLAIMING slot we have not seen: watch its process, or reclaim
 * it if the process is gone. */
static void adopt(struct daemon *d, uint32_t i, uint64_t word)
{
	struct qd_watch *w = &d->watch[i];
	struct qs_client *cs = qs_client_at(&d->g, i);
	int pid = QS_CLIENT_PID(word);
	uint64_t start = atomic_load_explicit(&cs->starttime, memory_order_relaxed);
	bool live = QS_CLIENT_STATUS(word) == QS_CLIENT_LIVE;
	if (pid <= 0) {
		reclaim_pid(d, pid, 0, "has no pid");
		return;
	}
	int fd = pidfd_open(pid);
	if (fd < 0) {
		if (errno == ESRCH || errno == EINVAL) {
			reclaim_pid(d, pid, start, "is gone");
		} else if (!w->warned) {
			qd_log("warning", "client slot %u (pid %d): pidfd_open: %s (retrying)", i, pid,
			       strerror(errno));
			w->warned = true;
		}
		return;
	}
	uint64_t now_start = qc_proc_starttime(pid);
	if (live && now_start != start) {
		close(fd);
		if (now_start != 0)
			d->st.pid_reused++;
		reclaim_pid(d, pid, start, now_start ? "has a pid now used by another process" : "is gone");
		return;
	}
	w->word = word;
	w->pid = pid;
	w->start = live ? start : now_start;
	w->pidfd = fd;
	w->warned = false;
	struct io_uring_sqe *sqe = qd_sqe(d);
	io_uring_prep_poll_add(sqe, fd, POLLIN);
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_PIDFD, i, fd));
	qd_log("debug", "client slot %u: pid %d %s", i, pid, live ? "attached" : "attaching");
}

/* Look at slot @i now. */
static void examine(struct daemon *d, uint32_t i)
{
	struct qs_client *cs = qs_client_at(&d->g, i);
	/* acquire: pairs with the claimer's release of LIVE (start time set) */
	uint64_t word = atomic_load_explicit(&cs->state, memory_order_acquire);
	struct qd_watch *w = &d->watch[i];
	switch (QS_CLIENT_STATUS(word)) {
	case QS_CLIENT_LIVE:
	case QS_CLIENT_CLAIMING:
		if (w->word == word)
			break;
		/* CLAIMING -> LIVE by the same process: keep the watch, learn the
		 * start time it wrote. */
		if (w->pidfd >= 0 && QS_CLIENT_PID(w->word) == QS_CLIENT_PID(word) &&
		    QS_CLIENT_GEN(w->word) == QS_CLIENT_GEN(word)) {
			w->word = word;
			break;
		}
		if (w->word)
			unwatch(d, i); /* a new owner since we looked */
		adopt(d, i, word);
		break;
	case QS_CLIENT_RECLAIMING:
		/* Ours waiting for an audit, or left by a quotad that died. */
		if (w->word != word && w->word)
			unwatch(d, i);
		reclaim_pid(d, QS_CLIENT_PID(word), 0,
			    w->pending ? "(pending)" : "was being reclaimed by a previous quotad");
		break;
	default:
		/* FREE: closed normally (quota_close) since we looked. */
		if (w->word || w->pidfd >= 0)
			unwatch(d, i);
		w->warned = false;
		break;
	}
}

void qd_clients_scan(struct daemon *d)
{
	for (uint32_t i = 0; i < d->nwatch; i++)
		examine(d, i);
}

void qd_clients_event(struct daemon *d, uint64_t ud, int res)
{
	uint32_t i = QD_UD_HI(ud);
	int fd = (int)QD_UD_LO(ud);
	if (i >= d->nwatch) {
		close(fd);
		return;
	}
	struct qd_watch *w = &d->watch[i];
	if (w->pidfd != fd) {
		/* A poll we cancelled (unwatch): its fd is ours to close now. */
		close(fd);
		return;
	}
	w->pidfd = -1;
	close(fd);
	if (res < 0) {
		qd_log("warning", "client slot %u (pid %d): pidfd poll: %s (watching again)", i, w->pid,
		       strerror(-res));
		w->word = 0; /* the next scan adopts it again */
		return;
	}
	/* The process exited: every slot it still holds is reclaimed. */
	reclaim_pid(d, w->pid, w->start, "exited");
}

static void arm_notify(struct daemon *d)
{
	struct io_uring_sqe *sqe = qd_sqe(d);
	io_uring_prep_recv(sqe, d->nfd, &d->nbuf, sizeof(d->nbuf), 0);
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_NOTIFY, 0, 0));
}

int qd_notify_open(struct daemon *d)
{
	struct sockaddr_un a;
	unsigned len;
	qc_notify_addr(d->segment + 1, &a, &len);
	d->nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (d->nfd >= 0 && bind(d->nfd, (struct sockaddr *)&a, len) < 0) {
		qd_log("warning", "notify socket: %s: new clients are noticed by the %lld ms scan only",
		       strerror(errno), (long long)(QD_TICK_NS / 1000000));
		close(d->nfd);
		d->nfd = -1;
	}
	if (d->nfd >= 0)
		arm_notify(d);
	return 0;
}

void qd_notify_event(struct daemon *d, int res)
{
	if (res == (int)sizeof(d->nbuf) && d->nbuf < d->nwatch) {
		d->st.notifies++;
		examine(d, d->nbuf);
	}
	if (res == -ECANCELED || d->nfd < 0)
		return;
	arm_notify(d);
}

void qd_clients_stop(struct daemon *d)
{
	for (uint32_t i = 0; i < d->nwatch; i++)
		if (d->watch[i].pidfd >= 0)
			close(d->watch[i].pidfd);
	free(d->watch);
	d->watch = NULL;
	d->nwatch = 0;
	if (d->nfd >= 0)
		close(d->nfd);
	d->nfd = -1;
}
