/* SPDX-License-Identifier: MIT */
/*
 * loop.c - quotad's single-threaded io_uring event loop. Every source of
 * work is a completion: the signalfd (HUP reload, TERM/INT stop), a relative
 * timeout that ticks every QD_TICK_NS (client scan, heartbeat, idle control
 * connections, ledger), pidfd polls (a client died), and the control
 * socket's accept, recv and send; and the periodic work of the tick
 * (heartbeat, scan, idle connections, damage check and in-flight audit,
 * ledger); the notify socket's datagrams (a client claimed a slot). Nothing here
 * waits on a client: each
 * operation is asynchronous, and a handler only touches memory and issues
 * further submissions.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quotad.h"

void qd_heartbeat(struct daemon *d)
{
	struct timespec rt, mono;
	clock_gettime(CLOCK_REALTIME, &rt);
	clock_gettime(CLOCK_MONOTONIC, &mono);
	int64_t rt_ns = (int64_t)rt.tv_sec * QC_NS_PER_S + rt.tv_nsec;
	int64_t mono_ns = (int64_t)mono.tv_sec * QC_NS_PER_S + mono.tv_nsec;
	if (!(d->g.incompat_flags & QS_INCOMPAT_MANUAL_CLOCK))
		atomic_store_explicit(&d->h->realtime_offset_ns, rt_ns - mono_ns, memory_order_relaxed);
	atomic_store_explicit(&d->h->heartbeat_ns, mono_ns, memory_order_relaxed);
}

/* Estimates that learn (libquota/src/learn.c): merge the clients'
 * histograms of the quotas that learn and publish their suggestion. */
static void qd_learn(struct daemon *d)
{
	uint32_t n = qs_quota_count(&d->g), any = 0;
	uint8_t *learns = calloc(n ? n : 1, 1);
	for (uint32_t id = 0; learns && id < n; id++)
		any |= learns[id] = d->pub[id].word && (d->pub[id].cfg.flags2 & QS_REC2_KNOWN) &&
				    !(d->pub[id].cfg.flags & QS_REC_REMOVED);
	uint64_t *scratch = any ? calloc(QC_LEARN_SCRATCH(n), sizeof(uint64_t)) : NULL;
	if (scratch)
		qc_learn_publish(&d->g, learns, n, scratch);
	free(scratch);
	free(learns);
}

/* Tickets still open (libquota/src/held.c): flip the alarm phase of every
 * quota with held_s whose time came, counting the tickets open longer. */
static void qd_held(struct daemon *d)
{
	uint32_t n = qs_quota_count(&d->g);
	int64_t now = qd_now(d);
	if (!d->held_next)
		d->held_next = calloc(d->g.quota_capacity, sizeof(*d->held_next));
	if (!d->held_scratch)
		d->held_scratch = calloc(d->g.client_capacity, sizeof(*d->held_scratch));
	if (!d->held_next || !d->held_scratch)
		return;
	for (uint32_t id = 0; id < n; id++) {
		const struct qs_config *cfg = &d->pub[id].cfg;
		int64_t held = cfg->alarm_held_ns > (uint64_t)INT64_MAX / 2 ? INT64_MAX / 2 :
			       (int64_t)cfg->alarm_held_ns;
		if (!d->pub[id].word || (cfg->flags & QS_REC_REMOVED) || !held) {
			if (d->held_next[id]) {
				qc_held_forget(&d->held, id);
				atomic_store_explicit(&qs_quota_at(&d->g, id)->held_open, 0, memory_order_relaxed);
				d->held_next[id] = 0;
			}
			continue;
		}
		if (!d->held_next[id]) {
			d->held_next[id] = now + held; /* a phase lasts held_s from now */
			continue;
		}
		if (now < d->held_next[id])
			continue;
		qc_held_flip(&d->g, id, &d->held, d->held_scratch);
		/* the flip's time, read after its store (held.c) */
		d->held_next[id] = qd_now(d) + held;
	}
}

/* The lower-lane waiter counts (libquota/src/waitline.c): repaired where a
 * process died between counting a wait and publishing it, or between
 * clearing it and uncounting it. */
static void qd_wait_audit(struct daemon *d)
{
	size_t n = (size_t)d->g.quota_capacity * QS_LANES;
	if (!d->wait_prev)
		d->wait_prev = calloc(2 * n, sizeof(*d->wait_prev));
	if (!d->wait_seen)
		d->wait_seen = calloc(n, sizeof(*d->wait_seen));
	if (!d->wait_prev || !d->wait_seen)
		return;
	uint32_t fixed = qc_wait_audit(&d->g, d->wait_prev, d->wait_seen);
	if (fixed)
		qd_log("warning", "lane waiter audit: %u count%s repaired (a process died while it entered or "
		       "left a lower lane's line)", fixed, fixed == 1 ? "" : "s");
}

void qd_check_state_free(struct daemon *d)
{
	free(d->held.e);
	free(d->held_next);
	free(d->held_scratch);
	d->held = (struct qc_held_state){ 0 };
	d->held_next = NULL;
	d->held_scratch = NULL;
	free(d->wait_prev);
	free(d->wait_seen);
	d->wait_prev = d->wait_seen = NULL;
}

void qd_tick(struct daemon *d)
{
	int64_t now = qd_mono();
	if (now >= d->next_heartbeat) {
		qd_heartbeat(d);
		d->next_heartbeat = now + QD_HEARTBEAT_NS;
	}
	qd_clients_scan(d);
	qd_global_tick(d);
	qd_control_tick(d);
	if (now >= d->next_check) {
		qd_check(d);
		struct qc_reclaim_counts counts = { 0 };
		(void)qc_audit_some(&d->g, &d->audit_cursor, QD_AUDIT_PER_CHECK, &counts);
		if (counts.repaired) {
			d->st.repaired += counts.repaired;
			qd_log("warning", "in-flight audit: %u slot%s of drift repaired (a count that no live "
			       "client's holdings explain)", counts.repaired, counts.repaired == 1 ? "" : "s");
		}
		d->st.audits += counts.audits;
		qd_learn(d);
		qd_held(d);
		qd_wait_audit(d);
		d->next_check = now + QD_CHECK_NS;
	}
	if (d->state_dir && now >= d->next_ledger) {
		qd_ledger_flush(d);
		d->next_ledger = now + QD_LEDGER_NS;
	}
}

struct io_uring_sqe *qd_sqe(struct daemon *d)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);
	if (!sqe) {
		/* Submission queue full: hand what is queued to the kernel. */
		io_uring_submit(&d->ring);
		sqe = io_uring_get_sqe(&d->ring);
	}
	return sqe;
}

int qd_loop_init(struct daemon *d)
{
	/* Room for a completion per client slot's pidfd poll and per control
	 * connection's recv and send, plus the fixed ones. */
	struct io_uring_params p = { .flags = IORING_SETUP_CQSIZE };
	p.cq_entries = 2 * (d->g.client_capacity + 4 * d->max_conns + 16);
	int r = io_uring_queue_init_params(256, &d->ring, &p);
	if (r < 0)
		qd_log("error", "io_uring_queue_init: %s", strerror(-r));
	return r;
}

void qd_loop_exit(struct daemon *d)
{
	io_uring_queue_exit(&d->ring);
}

static void arm_signal(struct daemon *d)
{
	struct io_uring_sqe *sqe = qd_sqe(d);
	io_uring_prep_read(sqe, d->sigfd, &d->si, sizeof(d->si), 0);
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_SIGNAL, 0, 0));
}

static void arm_timer(struct daemon *d)
{
	struct io_uring_sqe *sqe = qd_sqe(d);
	d->tick.tv_sec = QD_TICK_NS / QC_NS_PER_S;
	d->tick.tv_nsec = QD_TICK_NS % QC_NS_PER_S;
	io_uring_prep_timeout(sqe, &d->tick, 0, 0);
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_TIMER, 0, 0));
}

static void on_signal(struct daemon *d, int res)
{
	if (res != (int)sizeof(d->si)) {
		qd_log("warning", "signalfd read: %s", res < 0 ? strerror(-res) : "short read");
	} else if (d->si.ssi_signo == SIGHUP) {
		char err[512];
		qd_log("info", "received SIGHUP, reloading %s",
		       d->config_path ? d->config_path : "the embedded default");
		if (qd_reload(d, err, sizeof(err)) < 0)
			qd_log("error", "reload refused, the running config stays: %s", err);
	} else {
		qd_log("info", "received %s, stopping", strsignal((int)d->si.ssi_signo));
		d->stop = true;
		return;
	}
	arm_signal(d);
}

static void dispatch(struct daemon *d, uint64_t ud, int res)
{
	switch (QD_UD_EV(ud)) {
	case QD_EV_SIGNAL:
		on_signal(d, res);
		break;
	case QD_EV_TIMER:
		qd_tick(d);
		arm_timer(d);
		break;
	case QD_EV_PIDFD:
		qd_clients_event(d, ud, res);
		break;
	case QD_EV_LEDGER:
		qd_ledger_event(d, ud, res);
		break;
	case QD_EV_NOTIFY:
		qd_notify_event(d, res);
		break;
	case QD_EV_ACCEPT:
	case QD_EV_RECV:
	case QD_EV_SEND:
		qd_control_event(d, ud, res);
		break;
	default:
		break;
	}
}

int qd_loop_run(struct daemon *d)
{
	arm_signal(d);
	arm_timer(d);
	while (!d->stop) {
		int r = io_uring_submit_and_wait(&d->ring, 1);
		if (r < 0 && r != -EINTR && r != -EBUSY) {
			qd_log("error", "io_uring_submit_and_wait: %s", strerror(-r));
			return 1;
		}
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		/* Handlers queue submissions only (never wait): safe while the
		 * completion ring is being walked. */
		io_uring_for_each_cqe(&d->ring, head, cqe) {
			seen++;
			dispatch(d, io_uring_cqe_get_data64(cqe), cqe->res);
			if (d->stop)
				break;
		}
		io_uring_cq_advance(&d->ring, seen);
	}
	return 0;
}
