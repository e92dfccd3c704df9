/* SPDX-License-Identifier: MIT */
/*
 * clients.c - client liveness: which processes hold a slot in the client
 * table, and giving back what the dead ones held (reclaim.c does the
 * giving back; this file decides when).
 *
 * quota_open() claims a slot (pid, /proc start time) and bumps
 * header.client_seq. quotad walks the whole table at start and on every tick
 * anyway (one load per slot; it also sees slots freed by quota_close() that
 * way), so a new client is noticed within QD_TICK_NS. For a
 * LIVE slot it has not seen yet it opens a pidfd, then compares the
 * process's start time with the slot's: equal, the pidfd is the client and a
 * POLLIN poll on it goes to the io_uring loop; different (the pid now names
 * another process) or no such process, the client is dead and its slot is
 * reclaimed at once, never adopted. The start time is read after the pidfd
 * is opened, so the pidfd cannot belong to a process that took the pid
 * later. The pidfd completes when the process exits, kill -9 included.
 * A stalled but living process keeps what it holds.
 *
 * A slot whose reclamation waits for an audit (reclaim.c) stays RECLAIMING
 * and is retried every tick. A slot stuck in CLAIMING (its process died in
 * the middle of quota_open) holds nothing; it is logged and left alone,
 * since freeing it could race with a claimer that is merely slow.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "quotad.h"

static int pidfd_open(int pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

int qd_clients_init(struct daemon *d)
{
	d->nwatch = d->h->client_capacity;
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

static void reclaim(struct daemon *d, uint32_t i, uint64_t word, const char *why)
{
	struct qd_watch *w = &d->watch[i];
	struct qs_client *cs = qs_client_at(d->base, i);
	int pid = atomic_load_explicit(&cs->pid, memory_order_relaxed);
	uint32_t counts[3] = { 0, 0, 0 };
	int r = qc_reclaim_slot(d->base, i, word, counts);
	d->st.reclaimed_inflight += counts[0];
	d->st.audits += counts[1];
	d->st.anomalies += counts[2];
	if (counts[2])
		qd_log("warning", "client slot %u (pid %d): %u in-flight slot%s held beyond the shared count "
		       "(clamped at zero)", i, pid, counts[2], counts[2] == 1 ? "" : "s");
	if (counts[1])
		qd_log("info", "client slot %u (pid %d) died mid-update: in-flight count audited", i, pid);
	if (r == -EAGAIN) {
		if (!w->pending)
			qd_log("info", "client slot %u (pid %d) %s: waiting for a quiet moment to audit", i,
			       pid, why);
		w->word = (word & ~0xffULL) | QS_CLIENT_RECLAIMING;
		w->pending = true;
		return;
	}
	if (r == 0) {
		d->st.reclaimed_slots++;
		qd_log("info", "client slot %u (pid %d) %s: reclaimed, %u in-flight slot%s given back", i, pid,
		       why, counts[0], counts[0] == 1 ? "" : "s");
	}
	w->word = 0;
	w->pending = false;
}

/* A LIVE slot we have not seen: watch its process or reclaim it. */
static void adopt(struct daemon *d, uint32_t i, uint64_t word)
{
	struct qd_watch *w = &d->watch[i];
	struct qs_client *cs = qs_client_at(d->base, i);
	int pid = atomic_load_explicit(&cs->pid, memory_order_relaxed);
	uint64_t start = atomic_load_explicit(&cs->starttime, memory_order_relaxed);
	if (pid <= 0) {
		reclaim(d, i, word, "has no pid");
		return;
	}
	int fd = pidfd_open(pid);
	if (fd < 0) {
		if (errno == ESRCH || errno == EINVAL) {
			reclaim(d, i, word, "is gone");
		} else if (!w->warned) {
			qd_log("warning", "client slot %u (pid %d): pidfd_open: %s (retrying)", i, pid,
			       strerror(errno));
			w->warned = true;
		}
		return;
	}
	uint64_t now_start = qc_proc_starttime(pid);
	if (now_start != start) {
		close(fd);
		if (now_start != 0) {
			d->st.pid_reused++;
			reclaim(d, i, word, "has a pid now used by another process");
		} else {
			reclaim(d, i, word, "is gone");
		}
		return;
	}
	w->word = word;
	w->pid = pid;
	w->pidfd = fd;
	w->warned = false;
	struct io_uring_sqe *sqe = qd_sqe(d);
	io_uring_prep_poll_add(sqe, fd, POLLIN);
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_PIDFD, i, fd));
	qd_log("debug", "client slot %u: pid %d attached", i, pid);
}

void qd_clients_scan(struct daemon *d)
{
	for (uint32_t i = 0; i < d->nwatch; i++) {
		struct qs_client *cs = qs_client_at(d->base, i);
		/* acquire: pairs with the claimer's release of LIVE (pid and
		 * start time are set) */
		uint64_t word = atomic_load_explicit(&cs->state, memory_order_acquire);
		struct qd_watch *w = &d->watch[i];
		switch (QS_CLIENT_STATUS(word)) {
		case QS_CLIENT_LIVE:
			if (w->word == word)
				break;
			if (w->word)
				unwatch(d, i); /* a new owner since we looked */
			adopt(d, i, word);
			break;
		case QS_CLIENT_RECLAIMING:
			/* Ours waiting for an audit, or left by a quotad that died. */
			if (w->word != word && w->word)
				unwatch(d, i);
			reclaim(d, i, word, w->pending ? "(pending)" : "was being reclaimed by a previous quotad");
			break;
		case QS_CLIENT_CLAIMING:
			if (w->word && w->word != word)
				unwatch(d, i);
			w->ticks = w->word == word ? w->ticks + 1 : 0;
			if (!w->warned && w->ticks == (uint32_t)(5 * QC_NS_PER_S / QD_TICK_NS)) {
				qd_log("warning", "client slot %u stuck in quota_open() (its process died there?); "
				       "left alone", i);
				w->warned = true;
			}
			w->word = word;
			break;
		default:
			/* FREE: closed normally (quota_close) since we looked. */
			if (w->word)
				unwatch(d, i);
			w->warned = false;
			break;
		}
	}
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
	/* The process exited. If the slot still carries the word we watched,
	 * its owner died without quota_close(). */
	reclaim(d, i, w->word, "exited");
}

void qd_clients_stop(struct daemon *d)
{
	for (uint32_t i = 0; i < d->nwatch; i++)
		if (d->watch[i].pidfd >= 0)
			close(d->watch[i].pidfd);
	free(d->watch);
	d->watch = NULL;
	d->nwatch = 0;
}
