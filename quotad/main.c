/* SPDX-License-Identifier: MIT */
/*
 * main.c - quotad: options, then start (create the shared segment from a
 * validated config, or adopt the live one a previous quotad left), run the
 * io_uring event loop (loop.c) until SIGTERM or SIGINT, stop. Logs to stderr.
 * The workers' hot path never talks to this process; it owns setup,
 * liveness, reclamation, reload, persistence and the control socket.
 *
 * ONE DAEMON PER SEGMENT. Whoever holds an exclusive flock on the segment's
 * shm object serves it. The kernel drops the lock when its holder dies
 * (kill -9 included), so a restarted quotad takes over at once and of two
 * quotads started together exactly one wins; the loser names the winner's
 * pid (header.daemon_pid) and exits 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "quotad.h"
#include "sockpath.h"

#define EXIT_RUNTIME 1
#define EXIT_CONFIG 2

static void usage(FILE *f)
{
	fputs("Usage: quotad [OPTIONS]\n"
	      "Serve LLM API rate limits and budgets to the processes of this host\n"
	      "through a shared-memory segment (see quotad(8)).\n"
	      "\n"
	      "  -c, --config FILE         JSON configuration (default: the embedded one,\n"
	      "                            Llama 4 Scout: 1200 RPM, 900000 TPM)\n"
	      "      --segment NAME        shm segment /NAME (overrides the config's \"segment\")\n"
	      "      --socket PATH         control socket (default $QUOTA_SOCKET, else\n"
	      "                            /run/quotad.sock as root, $XDG_RUNTIME_DIR/quotad.sock)\n"
	      "      --state-dir DIR       keep the spend ledger in DIR (restored at start)\n"
	      "      --max-connections N   control connections at once (default 64)\n"
	      "      --idle-timeout SEC    drop a silent control connection (default 30)\n"
	      "      --max-line BYTES      longest control request (default 4096)\n"
	      "      --remove-on-exit      remove the segment when stopping (tests, demos)\n"
	      "      --ready-fd FD         write \"ready\\n\" to FD once the segment is served\n"
	      "      --check-config FILE   validate FILE and exit (0 valid, 2 invalid)\n"
	      "      --print-default-config  print the embedded configuration and exit\n"
	      "  -v, --verbose             log debug messages\n"
	      "  -h, --help                show this help\n"
	      "      --version             show the version\n"
	      "\n"
	      "Signals: HUP reloads the config, TERM and INT stop (the segment stays).\n"
	      "Exit status: 0 stopped by SIGTERM/SIGINT, 1 runtime error (or another quotad\n"
	      "serves the segment), 2 usage or config error.\n",
	      f);
}

/* Map an existing segment read-write and validate it. */
static int attach_existing(struct daemon *d, char *err, size_t errlen)
{
	int fd = shm_open(d->segment, O_RDWR | O_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open segment %s: %s", d->segment, strerror(errno));
		return -errno;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & S_IWOTH) ||
	    st.st_size < QS_HEADER_SIZE) {
		snprintf(err, errlen, "segment %s is not a quota segment this quotad may adopt "
			 "(world-writable, too small or not a file)", d->segment);
		close(fd);
		return -EBADMSG;
	}
	void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	/* Kept: the lock is taken on this very object (lock_segment()). */
	d->segfd = fd;
	if (base == MAP_FAILED) {
		snprintf(err, errlen, "cannot map segment %s: %s", d->segment, strerror(errno));
		return -errno;
	}
	int r;
	/* A quotad creating it right now publishes READY within milliseconds. */
	for (int i = 0; (r = qs_geom_load(&d->g, base, (uint64_t)st.st_size)) == -EAGAIN && i < 2000; i++)
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	if (r == -EAGAIN) {
		/* Its geometry validates but it stays INITIALIZING: its creator
		 * died before publishing it, or the state word was damaged. Once
		 * we hold its lock nobody else serves it: adopt it and republish
		 * everything (main() marks it READY). */
		d->initializing = true;
		return 0;
	}
	if (r < 0) {
		munmap(base, (size_t)st.st_size);
		snprintf(err, errlen, "refusing segment %s: %s", d->segment, quota_strerror(r));
		return r;
	}
	return 0;
}

/* Take the segment's lock, or name the quotad that holds it. */
static int lock_segment(struct daemon *d, char *err, size_t errlen)
{
	/* A segment we created: its fd was closed by qd_segment_create(). */
	if (d->segfd < 0)
		d->segfd = shm_open(d->segment, O_RDONLY | O_CLOEXEC, 0);
	if (d->segfd < 0) {
		snprintf(err, errlen, "cannot open segment %s: %s", d->segment, strerror(errno));
		return -errno;
	}
	if (flock(d->segfd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	int e = errno;
	if (e != EWOULDBLOCK) {
		snprintf(err, errlen, "cannot lock segment %s: %s", d->segment, strerror(e));
		return -e;
	}
	/* The winner writes its pid right after taking the lock. */
	int pid = 0;
	for (int i = 0; i < 1000; i++) {
		pid = atomic_load_explicit(&d->h->daemon_pid, memory_order_relaxed);
		if (pid > 0 && pid != getpid() && kill(pid, 0) == 0)
			break;
		nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
	}
	snprintf(err, errlen, "segment %s is already served by quotad pid %d", d->segment, pid);
	return -EBUSY;
}

static int parse_count(const char *opt, const char *s, long min, long max, long *ret)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < min || v > max) {
		fprintf(stderr, "quotad: %s: expected an integer from %ld to %ld, got '%s'\n", opt, min,
			max, s);
		return -EINVAL;
	}
	*ret = v;
	return 0;
}

static void stop(struct daemon *d)
{
	if (d->state_dir)
		qd_ledger_save(d);
	qd_global_stop(d);
	qd_control_close(d);
	qd_clients_stop(d);
	quota_close(d->obs);
	atomic_store_explicit(&d->h->daemon_pid, 0, memory_order_relaxed);
	qd_pub_free(d);
	qd_check_state_free(d);
	munmap(d->g.base, d->g.size);
	if (d->remove_on_exit) {
		if (shm_unlink(d->segment) < 0)
			qd_log("warning", "cannot remove segment %s: %s", d->segment, strerror(errno));
		else
			qd_log("info", "removed segment %s", d->segment);
	} else {
		qd_log("info", "segment %s left in place for running workers", d->segment);
	}
	close(d->segfd); /* drops the lock last */
}

/* The command line, beyond what struct daemon keeps. */
struct args {
	const char *segment;  /* --segment, overriding the config's */
	const char *check;    /* --check-config FILE */
	long ready_fd;        /* --ready-fd, -1 none */
};

/* Step 1: options into @d and @a. Returns -1 to go on, else an exit status
 * (--help, --version, a usage error). */
static int parse_args(int argc, char **argv, struct daemon *d, struct args *a)
{
	enum { OPT_SEGMENT = 256, OPT_REMOVE, OPT_CHECK, OPT_PRINT, OPT_VERSION, OPT_READY,
	       OPT_SOCKET, OPT_STATE, OPT_MAXCONN, OPT_IDLE, OPT_MAXLINE };
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "segment", required_argument, NULL, OPT_SEGMENT },
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "state-dir", required_argument, NULL, OPT_STATE },
		{ "max-connections", required_argument, NULL, OPT_MAXCONN },
		{ "idle-timeout", required_argument, NULL, OPT_IDLE },
		{ "max-line", required_argument, NULL, OPT_MAXLINE },
		{ "remove-on-exit", no_argument, NULL, OPT_REMOVE },
		{ "ready-fd", required_argument, NULL, OPT_READY },
		{ "check-config", required_argument, NULL, OPT_CHECK },
		{ "print-default-config", no_argument, NULL, OPT_PRINT },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ 0 },
	};
	long v;
	int o;
	while ((o = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
		switch (o) {
		case 'c': d->config_path = optarg; break;
		case OPT_SEGMENT: a->segment = optarg; break;
		case OPT_SOCKET:
			if (!*optarg || strlen(optarg) >= sizeof(d->socket_path)) {
				fprintf(stderr, "quotad: --socket: 1 to %zu characters\n", sizeof(d->socket_path) - 1);
				return EXIT_CONFIG;
			}
			strcpy(d->socket_path, optarg);
			d->socket_explicit = true;
			break;
		case OPT_STATE: d->state_dir = optarg; break;
		case OPT_MAXCONN:
			if (parse_count("--max-connections", optarg, 1, 100000, &v) < 0)
				return EXIT_CONFIG;
			d->max_conns = (uint32_t)v;
			break;
		case OPT_IDLE:
			if (parse_count("--idle-timeout", optarg, 1, 86400, &v) < 0)
				return EXIT_CONFIG;
			d->idle_ns = v * QC_NS_PER_S;
			break;
		case OPT_MAXLINE:
			if (parse_count("--max-line", optarg, 64, 1 << 20, &v) < 0)
				return EXIT_CONFIG;
			d->max_line = (uint32_t)v;
			break;
		case OPT_REMOVE: d->remove_on_exit = true; break;
		case OPT_CHECK: a->check = optarg; break;
		case OPT_READY:
			if (parse_count("--ready-fd", optarg, 0, 65535, &a->ready_fd) < 0)
				return EXIT_CONFIG;
			break;
		case OPT_PRINT: fputs(qd_default_config, stdout); return 0;
		case 'v': qd_verbose = 1; break;
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
	return -1;
}

/* Step 2: the config (file or embedded) into @cfg, the segment's name into
 * @d. Returns -1 to go on, else an exit status (--check-config included). */
static int load_config(struct daemon *d, const struct args *a, struct qd_config *cfg)
{
	char err[1024];
	if (a->check) {
		if (qd_config_load(a->check, cfg, err, sizeof(err)) < 0) {
			fprintf(stderr, "quotad: %s\n", err);
			return EXIT_CONFIG;
		}
		printf("%s: valid, %u quota%s\n", a->check, cfg->nquotas, cfg->nquotas == 1 ? "" : "s");
		qd_config_free(cfg);
		return 0;
	}
	int r = d->config_path ? qd_config_load(d->config_path, cfg, err, sizeof(err)) :
			  qd_config_parse(qd_default_config, strlen(qd_default_config), "<embedded default>",
					  cfg, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "quotad: %s\n", err);
		return EXIT_CONFIG;
	}
	if (a->segment) {
		if (!*a->segment || strlen(a->segment) > QD_SEGMENT_NAME_MAX || strchr(a->segment, '/')) {
			fprintf(stderr, "quotad: --segment: 1 to %d characters without '/'\n", QD_SEGMENT_NAME_MAX);
			qd_config_free(cfg);
			return EXIT_CONFIG;
		}
		snprintf(cfg->segment, sizeof(cfg->segment), "%s", a->segment);
	}
	snprintf(d->segment, sizeof(d->segment), "/%s", cfg->segment);
	if (!d->socket_explicit && qd_default_socket_path(d->socket_path, sizeof(d->socket_path)) < 0)
		d->socket_path[0] = '\0';
	return -1;
}

/* Step 3: signals (blocked, read through a signalfd: a TERM during setup
 * is not lost). */
static int open_signals(struct daemon *d)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	d->sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (d->sigfd < 0) {
		qd_log("error", "signalfd: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

/* Step 4: create the segment, or adopt the existing one, and take its lock.
 * *@prev gets the pid of the quotad that served it before. */
static int open_segment(struct daemon *d, const struct qd_config *cfg, int *prev)
{
	char err[1024];
	void *base;
	uint64_t size;
	int r = qd_segment_create(cfg, cfg->segment, &base, &size, err, sizeof(err));
	if (r == 0 && qs_geom_load(&d->g, base, size) < 0) {
		snprintf(err, sizeof(err), "the segment just created does not validate");
		r = -EBADMSG;
	}
	if (r == -EEXIST) {
		d->adopted = true;
		r = attach_existing(d, err, sizeof(err));
	}
	if (r < 0) {
		qd_log("error", "%s", err);
		return r;
	}
	d->h = d->g.h;
	r = lock_segment(d, err, sizeof(err));
	if (r < 0) {
		qd_log("error", "%s", err);
		munmap(d->g.base, d->g.size);
		return r;
	}
	*prev = atomic_exchange_explicit(&d->h->daemon_pid, getpid(), memory_order_relaxed);
	atomic_store_explicit(&d->h->daemon_starttime, qc_proc_starttime(getpid()), memory_order_relaxed);
	qd_heartbeat(d);
	d->started_mono = qd_mono();
	return 0;
}

/* Step 5: learn what the segment holds and apply the config to an adopted
 * one (a reload); publish READY for one left INITIALIZING. */
static int apply_config(struct daemon *d, const struct qd_config *cfg, int prev)
{
	char err[1024];
	if (qd_pub_init(d) < 0)
		return -ENOMEM;
	if (d->initializing)
		qd_log("warning", "segment %s was left INITIALIZING (its creator died, or its state word was "
		       "damaged): adopting it and publishing the configuration again", d->segment);
	if (d->adopted) {
		qd_log("info", "adopting live segment %s (previous quotad pid %d, generation %llu): "
		       "budget state kept", d->segment, prev,
		       (unsigned long long)atomic_load_explicit(&d->h->generation, memory_order_relaxed));
		/* The command line's config, applied like a reload. */
		if (qd_reload_apply(d, cfg, err, sizeof(err)) < 0)
			qd_log("error", "config not applied, serving the segment's current quotas: %s", err);
	}
	if (d->initializing) {
		if (qd_publish_index(d) < 0)
			qd_log("error", "cannot publish the name index");
		/* release: everything published above is visible before READY */
		atomic_store_explicit(&d->h->state, QS_STATE_READY, memory_order_release);
	}
	return 0;
}

/* Step 6: the observer handle, the ledger, descriptors, the loop, clients,
 * the control and notify sockets. On failure what was started is stopped. */
static int start_services(struct daemon *d, const struct qd_config *cfg)
{
	int r = qc_open_observer(cfg->segment, &d->obs);
	if (r < 0) {
		qd_log("error", "cannot observe segment %s: %s", d->segment, quota_strerror(r));
		stop(d);
		return r;
	}
	if (d->state_dir)
		qd_ledger_restore(d);
	if (qd_global_apply(d, cfg) < 0)
		qd_log("error", "global quotas not served");
	/* One pidfd per client slot plus the control connections. */
	struct rlimit rl;
	rlim_t need = (rlim_t)d->g.client_capacity + 2 * d->max_conns + 64;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
		rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < need)
			qd_log("warning", "RLIMIT_NOFILE %llu is below the %llu descriptors %u clients may need",
			       (unsigned long long)rl.rlim_cur, (unsigned long long)need, d->g.client_capacity);
	}
	if ((r = qd_loop_init(d)) < 0) {
		stop(d);
		return r;
	}
	if ((r = qd_clients_init(d)) < 0 || (r = qd_control_open(d)) < 0 || (r = qd_notify_open(d)) < 0) {
		qd_loop_exit(d);
		stop(d);
		return r;
	}
	qd_log("info", "serving %u quota%s on segment %s (%llu bytes, %u clients max, %s clock)%s%s",
	       cfg->nquotas, cfg->nquotas == 1 ? "" : "s", d->segment, (unsigned long long)d->g.size,
	       d->g.client_capacity,
	       (d->g.incompat_flags & QS_INCOMPAT_MANUAL_CLOCK) ? "manual" : "monotonic",
	       d->lfd >= 0 ? ", control socket " : "", d->lfd >= 0 ? d->socket_path : "");
	for (uint32_t i = 0; i < cfg->nquotas; i++)
		qd_log("debug", "quota %u: %s", i, cfg->quotas[i].name);
	return 0;
}

int main(int argc, char **argv)
{
	static struct daemon d = { .sigfd = -1, .segfd = -1, .lfd = -1, .nfd = -1 };
	d.max_conns = QD_MAX_CONNS_DEFAULT;
	d.max_line = QD_MAX_LINE_DEFAULT;
	d.idle_ns = QD_IDLE_DEFAULT_NS;
	struct args a = { .ready_fd = -1 };
	struct qd_config cfg;
	int status = parse_args(argc, argv, &d, &a);
	if (status < 0)
		status = load_config(&d, &a, &cfg);
	if (status >= 0)
		return status;
	/* Start times tell a client from a later process that reuses its pid:
	 * without /proc every client would look dead. */
	int prev = 0;
	if (qc_proc_starttime(getpid()) == 0) {
		qd_log("error", "cannot read process start times from /proc: refusing to judge client liveness");
		status = EXIT_RUNTIME;
	} else if (open_signals(&d) < 0 || open_segment(&d, &cfg, &prev) < 0) {
		status = EXIT_RUNTIME;
	} else if (apply_config(&d, &cfg, prev) < 0) {
		munmap(d.g.base, d.g.size);
		status = EXIT_RUNTIME;
	} else if (start_services(&d, &cfg) < 0) {
		status = EXIT_RUNTIME;
	}
	qd_config_free(&cfg);
	if (status >= 0)
		return status;

	/* Adopt the clients that are there, reclaim the dead, before ready. */
	qd_clients_scan(&d);
	if (a.ready_fd >= 0) {
		if (write((int)a.ready_fd, "ready\n", 6) != 6)
			qd_log("warning", "--ready-fd %ld: %s", a.ready_fd, strerror(errno));
		close((int)a.ready_fd);
	}
	status = qd_loop_run(&d);
	stop(&d);
	qd_loop_exit(&d);
	close(d.sigfd);
	return status;
}
