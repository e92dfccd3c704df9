/* SPDX-License-Identifier: MIT */
/*
 * main.c - quotad: creates the shared segment from a validated config, then
 * runs a single-threaded io_uring event loop (signals through signalfd and a
 * heartbeat timer) until SIGTERM or SIGINT. Logs to stderr. The workers'
 * hot path never talks to this process; it owns setup, liveness and
 * teardown.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#include "config.h"
#include "internal.h"
#include "layout.h"

#define EXIT_CONFIG 2
#define HEARTBEAT_NS (QC_NS_PER_S / 2)

enum { EV_SIGNAL = 1, EV_TIMER = 2 };

struct daemon {
	struct io_uring ring;
	int sigfd;
	struct signalfd_siginfo si;
	struct __kernel_timespec tick;
	void *base;
	uint64_t size;
	struct qs_header *h;
	char segment[QD_SEGMENT_NAME_MAX + 2]; /* "/NAME" */
	bool remove_on_exit;
	bool stop;
	int verbose;
};

static int log_verbose;

__attribute__((format(printf, 2, 3)))
static void logmsg(const char *level, const char *fmt, ...)
{
	if (strcmp(level, "debug") == 0 && !log_verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "quotad[%d]: %s: ", getpid(), level);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void usage(FILE *f)
{
	fputs("Usage: quotad [OPTIONS]\n"
	      "Serve LLM API rate limits and budgets to the processes of this host\n"
	      "through a shared-memory segment (see quotad(8)).\n"
	      "\n"
	      "  -c, --config FILE         JSON configuration (default: the embedded one,\n"
	      "                            Llama 4 Scout: 1200 RPM, 900000 TPM)\n"
	      "      --segment NAME        shm segment /NAME (overrides the config's \"segment\")\n"
	      "      --remove-on-exit      remove the segment when stopping (tests, demos)\n"
	      "      --ready-fd FD         write \"ready\\n\" to FD once the segment is served\n"
	      "      --check-config FILE   validate FILE and exit (0 valid, 2 invalid)\n"
	      "      --print-default-config  print the embedded configuration and exit\n"
	      "  -v, --verbose             log debug messages\n"
	      "  -h, --help                show this help\n"
	      "      --version             show the version\n"
	      "\n"
	      "Exit status: 0 stopped by SIGTERM/SIGINT, 1 runtime error, 2 usage or config error.\n",
	      f);
}

static void heartbeat(struct daemon *d)
{
	struct timespec rt, mono;
	clock_gettime(CLOCK_REALTIME, &rt);
	clock_gettime(CLOCK_MONOTONIC, &mono);
	int64_t rt_ns = (int64_t)rt.tv_sec * QC_NS_PER_S + rt.tv_nsec;
	int64_t mono_ns = (int64_t)mono.tv_sec * QC_NS_PER_S + mono.tv_nsec;
	if (!(d->h->incompat_flags & QS_INCOMPAT_MANUAL_CLOCK))
		atomic_store_explicit(&d->h->realtime_offset_ns, rt_ns - mono_ns, memory_order_relaxed);
	atomic_store_explicit(&d->h->heartbeat_ns, mono_ns, memory_order_relaxed);
}

static int arm_signal(struct daemon *d)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_read(sqe, d->sigfd, &d->si, sizeof(d->si), 0);
	io_uring_sqe_set_data64(sqe, EV_SIGNAL);
	return 0;
}

static int arm_timer(struct daemon *d)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);
	if (!sqe)
		return -EBUSY;
	d->tick.tv_sec = HEARTBEAT_NS / QC_NS_PER_S;
	d->tick.tv_nsec = HEARTBEAT_NS % QC_NS_PER_S;
	io_uring_prep_timeout(sqe, &d->tick, 0, 0);
	io_uring_sqe_set_data64(sqe, EV_TIMER);
	return 0;
}

static int run(struct daemon *d)
{
	int r = io_uring_queue_init(64, &d->ring, 0);
	if (r < 0) {
		logmsg("error", "io_uring_queue_init: %s", strerror(-r));
		return 1;
	}
	if (arm_signal(d) < 0 || arm_timer(d) < 0) {
		logmsg("error", "io_uring: submission queue full");
		return 1;
	}
	while (!d->stop) {
		io_uring_submit(&d->ring);
		struct io_uring_cqe *cqe;
		r = io_uring_wait_cqe(&d->ring, &cqe);
		if (r == -EINTR)
			continue;
		if (r < 0) {
			logmsg("error", "io_uring_wait_cqe: %s", strerror(-r));
			return 1;
		}
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&d->ring, head, cqe) {
			seen++;
			switch (io_uring_cqe_get_data64(cqe)) {
			case EV_SIGNAL:
				if (cqe->res == (int)sizeof(d->si)) {
					logmsg("info", "received %s, stopping", strsignal((int)d->si.ssi_signo));
					d->stop = true;
				} else {
					logmsg("warning", "signalfd read: %s",
					       cqe->res < 0 ? strerror(-cqe->res) : "short read");
					arm_signal(d);
				}
				break;
			case EV_TIMER:
				heartbeat(d);
				arm_timer(d);
				break;
			default:
				break;
			}
		}
		io_uring_cq_advance(&d->ring, seen);
	}
	io_uring_queue_exit(&d->ring);
	return 0;
}

int main(int argc, char **argv)
{
	enum { OPT_SEGMENT = 256, OPT_REMOVE, OPT_CHECK, OPT_PRINT, OPT_VERSION, OPT_READY };
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "segment", required_argument, NULL, OPT_SEGMENT },
		{ "remove-on-exit", no_argument, NULL, OPT_REMOVE },
		{ "ready-fd", required_argument, NULL, OPT_READY },
		{ "check-config", required_argument, NULL, OPT_CHECK },
		{ "print-default-config", no_argument, NULL, OPT_PRINT },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ 0 },
	};
	const char *config = NULL, *segment = NULL, *check = NULL;
	struct daemon d = { .sigfd = -1 };
	int ready_fd = -1;
	int o;
	while ((o = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
		switch (o) {
		case 'c': config = optarg; break;
		case OPT_SEGMENT: segment = optarg; break;
		case OPT_REMOVE: d.remove_on_exit = true; break;
		case OPT_CHECK: check = optarg; break;
		case OPT_READY: {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 0 || v > 65535) {
				fprintf(stderr, "quotad: --ready-fd: not a file descriptor: %s\n", optarg);
				return EXIT_CONFIG;
			}
			ready_fd = (int)v;
			break;
		}
		case OPT_PRINT: fputs(qd_default_config, stdout); return 0;
		case 'v': log_verbose = 1; break;
		case 'h': usage(stdout); return 0;
		case OPT_VERSION: printf("quotad %d.%d\n", QUOTA_VERSION_MAJOR, QUOTA_VERSION_MINOR); return 0;
		default: usage(stderr); return EXIT_CONFIG;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "quotad: unexpected argument: %s\n", argv[optind]);
		usage(stderr);
		return EXIT_CONFIG;
	}

	char err[512];
	struct qd_config cfg;
	if (check) {
		if (qd_config_load(check, &cfg, err, sizeof(err)) < 0) {
			fprintf(stderr, "quotad: %s\n", err);
			return EXIT_CONFIG;
		}
		printf("%s: valid, %u quota%s\n", check, cfg.nquotas, cfg.nquotas == 1 ? "" : "s");
		qd_config_free(&cfg);
		return 0;
	}
	int r = config ? qd_config_load(config, &cfg, err, sizeof(err)) :
			 qd_config_parse(qd_default_config, strlen(qd_default_config), "<embedded default>",
					 &cfg, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "quotad: %s\n", err);
		return EXIT_CONFIG;
	}
	if (segment) {
		if (!*segment || strlen(segment) > QD_SEGMENT_NAME_MAX || strchr(segment, '/')) {
			fprintf(stderr, "quotad: --segment: 1 to %d characters without '/'\n", QD_SEGMENT_NAME_MAX);
			qd_config_free(&cfg);
			return EXIT_CONFIG;
		}
		snprintf(cfg.segment, sizeof(cfg.segment), "%s", segment);
	}
	snprintf(d.segment, sizeof(d.segment), "/%s", cfg.segment);

	/* Signals first, so that a TERM during setup is not lost. */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	d.sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (d.sigfd < 0) {
		logmsg("error", "signalfd: %s", strerror(errno));
		qd_config_free(&cfg);
		return 1;
	}

	r = qd_segment_create(&cfg, cfg.segment, &d.base, &d.size, err, sizeof(err));
	if (r < 0) {
		logmsg("error", "%s", err);
		qd_config_free(&cfg);
		return 1;
	}
	d.h = d.base;
	atomic_store_explicit(&d.h->daemon_pid, getpid(), memory_order_relaxed);
	atomic_store_explicit(&d.h->daemon_starttime, qc_proc_starttime(getpid()), memory_order_relaxed);
	heartbeat(&d);
	logmsg("info", "serving %u quota%s on segment %s (%llu bytes, %u clients max, %s clock)",
	       cfg.nquotas, cfg.nquotas == 1 ? "" : "s", d.segment, (unsigned long long)d.size,
	       cfg.max_clients, cfg.manual_clock ? "manual" : "monotonic");
	for (uint32_t i = 0; i < cfg.nquotas; i++)
		logmsg("debug", "quota %u: %s", i, cfg.quotas[i].name);
	qd_config_free(&cfg);
	if (ready_fd >= 0) {
		if (write(ready_fd, "ready\n", 6) != 6)
			logmsg("warning", "--ready-fd %d: %s", ready_fd, strerror(errno));
		close(ready_fd);
	}

	int status = run(&d);

	atomic_store_explicit(&d.h->daemon_pid, 0, memory_order_relaxed);
	munmap(d.base, d.size);
	if (d.remove_on_exit) {
		if (shm_unlink(d.segment) < 0)
			logmsg("warning", "cannot remove segment %s: %s", d.segment, strerror(errno));
		else
			logmsg("info", "removed segment %s", d.segment);
	} else {
		logmsg("info", "segment %s left in place for running workers", d.segment);
	}
	close(d.sigfd);
	return status;
}
