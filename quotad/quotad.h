/* SPDX-License-Identifier: MIT */
/*
 * quotad.h - the daemon's state and the interfaces between its files:
 * main.c (options, start: create or adopt the segment, stop), loop.c (the
 * io_uring event loop: signals, the tick, submissions), clients.c (client
 * liveness through pidfds, reclamation), control.c (the control socket and
 * its commands), reload.c (applying a config to the live segment),
 * ledger.c (the spend ledger under --state-dir), publish.c (what quotad
 * published in the segment: records, the name index, and the check that
 * it is still there).
 */
#ifndef QUOTAD_H
#define QUOTAD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <sys/types.h>

#include <liburing.h>

#include "config.h"
#include "global.h"
#include "internal.h"
#include "layout.h"

#define QD_TICK_NS (20 * 1000000LL)       /* client scan, idle checks */
#define QD_HEARTBEAT_NS (QC_NS_PER_S / 2)
#define QD_LEDGER_NS (5 * QC_NS_PER_S)    /* spend ledger flush period */
#define QD_CHECK_NS (QC_NS_PER_S / 4)     /* damage check and in-flight audit */
#define QD_AUDIT_PER_CHECK 256u           /* quotas audited per check */
#define QD_CHECK_QUOTAS 1024u             /* quotas' records compared per check */

/* Control socket defaults (overridable on the command line). */
#define QD_MAX_LINE_DEFAULT 4096
#define QD_MAX_CONNS_DEFAULT 64
#define QD_IDLE_DEFAULT_NS (30 * QC_NS_PER_S)

/* io_uring user_data: the event type in the top byte. */
enum qd_ev {
	QD_EV_SIGNAL = 1,
	QD_EV_TIMER,
	QD_EV_ACCEPT,
	QD_EV_IGNORE,  /* completions of cancellations */
	QD_EV_PIDFD,   /* | slot << 32 | fd */
	QD_EV_RECV,    /* | conn << 32 | generation */
	QD_EV_SEND,
	QD_EV_LEDGER,  /* | stage */
	QD_EV_NOTIFY,  /* a client claimed a slot (datagram) */
};
#define QD_UD(ev, hi, lo) (((uint64_t)(ev) << 56) | ((uint64_t)(hi) << 32) | (uint32_t)(lo))
#define QD_UD_EV(ud) ((unsigned)((ud) >> 56))
#define QD_UD_HI(ud) ((uint32_t)(((ud) >> 32) & 0xffffff))
#define QD_UD_LO(ud) ((uint32_t)(ud))

/* What quotad knows about one client slot. */
struct qd_watch {
	uint64_t word;    /* the slot's state word when we last acted on it; 0 none */
	int pidfd;        /* polled through io_uring; -1 none */
	int pid;
	uint64_t start;   /* the process's start time when adopted */
	bool pending;     /* RECLAIMING, waiting for an audit */
	bool warned;      /* pidfd_open failed and was logged */
};

struct qd_conn {
	int fd;           /* -1: free */
	uint32_t gen;     /* bumped when the entry is reused */
	uid_t uid;
	pid_t pid;
	bool privileged;  /* root or quotad's own uid: may change things */
	bool recv_armed, send_armed;
	bool closing;     /* shut down; freed when no operation is pending */
	bool close_after_send;
	char *in;         /* max_line + 1 bytes */
	size_t inlen;
	char *out;        /* the reply being sent */
	size_t outlen, outoff;
	int64_t last_active;
};

struct qd_stats {
	uint64_t reclaimed_slots;    /* client slots freed for dead processes */
	uint64_t reclaimed_inflight; /* in-flight slots given back */
	uint64_t audits;
	uint64_t anomalies;
	uint64_t pid_reused;         /* slots whose pid belonged to another process */
	uint64_t reloads_ok, reloads_failed;
	uint64_t conns_refused, conns_evicted, requests, bad_requests;
	uint64_t ledger_writes, ledger_errors;
	uint64_t repaired;           /* in-flight drift corrected by audits */
	uint64_t damage;             /* damaged segment parts found (and repaired) */
	uint64_t notifies;           /* client claims announced by datagram */
};

/* What quotad published for one quota id. */
struct qd_pub {
	uint64_t word;               /* the config word; 0 = id unused */
	struct qs_config cfg;
};

/* A `quotactl set` change, kept on top of the config source until the
 * next reload. */
#define QD_OVERRIDES_MAX 64
struct qd_override {
	char quota[QUOTA_NAME_MAX + 1];
	char key[24];
	double value;
};

struct daemon {
	struct io_uring ring;
	int sigfd;
	struct signalfd_siginfo si;
	struct __kernel_timespec tick;
	int64_t next_heartbeat, next_ledger;

	struct qs_geom g;          /* validated geometry: every address comes from here */
	struct qs_header *h;       /* = g.h, for the control-state words */
	struct qs_header hcopy;    /* the identity and geometry words as published */
	struct qd_pub *pub;        /* per quota id */
	uint8_t *rec_used;         /* per record: named by a config word */
	uint64_t index_word;       /* the name index word as published */
	uint32_t audit_cursor, check_cursor;
	int64_t next_check;
	int nfd;                   /* notify datagram socket, -1 none */
	uint32_t nbuf;             /* its receive buffer: a slot number */
	int segfd;                 /* kept open: holds the segment's flock */
	char segment[QD_SEGMENT_NAME_MAX + 2]; /* "/NAME" */
	quota_client *obs;         /* read-only handle for quota_info() */
	const char *config_path;   /* NULL: the embedded default */
	struct qd_override overrides[QD_OVERRIDES_MAX]; /* `set`, until the next reload */
	uint32_t noverrides;
	bool adopted;
	bool initializing;         /* adopted a segment left INITIALIZING */
	int64_t started_mono;

	/* Clients. */
	struct qd_watch *watch;
	uint32_t nwatch;

	/* Control socket. */
	char socket_path[108];
	bool socket_explicit;
	int lfd;
	bool accept_armed;
	struct qd_conn *conns;
	uint32_t nconns;           /* entries in conns (2 * max_conns) */
	uint32_t max_conns, max_line;
	int64_t idle_ns;

	const char *state_dir;
	bool remove_on_exit;
	bool stop;
	struct qd_stats st;
	struct qd_global *glob;     /* global quotas (global.c); NULL: none */

	/* Tickets still open (loop.c, libquota/src/held.c). */
	struct qc_held_state held;  /* per process and quota, from the last flips */
	int64_t *held_next;         /* per quota id: its next phase flip; 0 = no alarm */
	struct qc_held_group *held_scratch; /* client_capacity entries */

	/* The lower-lane waiter counts' audit (loop.c, libquota/src/waitline.c). */
	uint32_t *wait_prev, *wait_seen;
};

/* log.c */
__attribute__((format(printf, 2, 3)))
void qd_log(const char *level, const char *fmt, ...);
extern int qd_verbose;

/* The segment's clock (monotonic, or the manual time). */
int64_t qd_now(const struct daemon *d);
int64_t qd_mono(void);

/* loop.c */
/* The periodic work, every QD_TICK_NS; the header's heartbeat and clock offset. */
void qd_tick(struct daemon *d);
void qd_heartbeat(struct daemon *d);
int qd_loop_init(struct daemon *d);
void qd_loop_exit(struct daemon *d);
/* A submission entry (submits what is queued if the ring is full). */
struct io_uring_sqe *qd_sqe(struct daemon *d);
int qd_loop_run(struct daemon *d);
/* Free what the periodic checks keep (alarm phase flips, waiter counts). */
void qd_check_state_free(struct daemon *d);

/* clients.c */
void qd_clients_scan(struct daemon *d);
/* The notify socket: clients announce a claimed slot (client.c). */
int qd_notify_open(struct daemon *d);
void qd_notify_event(struct daemon *d, int res);
void qd_clients_event(struct daemon *d, uint64_t ud, int res);
void qd_clients_stop(struct daemon *d);
int qd_clients_init(struct daemon *d);

/* control.c */
int qd_control_open(struct daemon *d);
void qd_control_event(struct daemon *d, uint64_t ud, int res);
void qd_control_tick(struct daemon *d);
void qd_control_close(struct daemon *d);
/* A command as JSON text (tests and the fuzzer call it without a socket).
 * Returns the reply (malloc'ed, newline-terminated). */
char *qd_control_handle(struct daemon *d, const char *line, size_t len, bool privileged);

/* publish.c */
/* Learn what the segment's config words name (at start and adoption). */
int qd_pub_init(struct daemon *d);
void qd_pub_free(struct daemon *d);
/* Publish @cfg as quota cfg->quota_id's config in a free record. */
int qd_publish(struct daemon *d, const struct qs_config *cfg);
/* Publish the name index of every quota not removed. */
int qd_publish_index(struct daemon *d);
/* Compare the segment with what was published; repair and report damage. */
void qd_check(struct daemon *d);

/* reload.c */
/* Apply a validated config to the live segment: a new record published for
 * each quota that changed (TATs kept), quotas added and removed. Returns 0,
 * or -errno with the reason in @err and nothing changed. */
int qd_reload_apply(struct daemon *d, const struct qd_config *cfg, char *err, size_t errlen);
/* Load @d->config_path (or the embedded default) and apply it. */
int qd_reload(struct daemon *d, char *err, size_t errlen);

/* ledger.c */
int qd_ledger_restore(struct daemon *d);
/* Write now, synchronously (at stop). */
int qd_ledger_save(struct daemon *d);
/* Write through the loop if it changed and no write is under way. */
void qd_ledger_flush(struct daemon *d);
void qd_ledger_event(struct daemon *d, uint64_t ud, int res);

#endif /* QUOTAD_H */
