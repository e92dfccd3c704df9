/* SPDX-License-Identifier: MIT */
/*
 * top.c - `quotactl top`: options, the terminal and the refresh loop. On a
 * terminal it takes the screen with ncurses (keys, resizes, colours where
 * the terminal has them and $NO_COLOR is not set) and refreshes every -d
 * seconds; without one (output to a pipe or file) it reads twice, one
 * interval apart so that rates exist, prints one snapshot and exits. What
 * is shown comes from top-data.c, laid out by top-view.c.
 */
#include <curses.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../quotad/sockpath.h"
#include "top-int.h"
#include "top.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

static void usage(FILE *f)
{
	fputs("Usage: quotactl [--segment NAME] [--socket PATH] top [-d SECONDS] [-c] [-s KEY]\n"
	      "A live full-screen view of the segment's quotas (see quotactl(1)): per limit a bar\n"
	      "of the capacity in use, the rate admitted per second and per minute, refusals per\n"
	      "second by reason; in flight, spend against the budgets, backoffs, reclaimed\n"
	      "clients; and a pane of the attached processes. Without a terminal on standard\n"
	      "input and output: one snapshot (rates over one interval) on standard output.\n"
	      "\n"
	      "  -d, --delay SECONDS  refresh interval, 0.1 to 3600 (default 1)\n"
	      "  -c, --clients        start with the clients pane shown\n"
	      "  -s, --sort KEY       order of the quotas: name, use, refused, admitted\n"
	      "  -h, --help           show this help\n"
	      "\n"
	      "Keys: q quit, c clients pane on/off, s next quota order, S next clients order,\n"
	      "up/down/PgUp/PgDn/Home scroll the quotas.\n"
	      "Environment: NO_COLOR (set and not empty: no colours), COLUMNS (snapshot width).\n",
	      f);
}

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int parse_sort(const char *s, enum top_sort *ret)
{
	static const char *names[SORT_QUOTA_MODES] = { "name", "use", "refused", "admitted" };
	for (int i = 0; i < SORT_QUOTA_MODES; i++)
		if (strcmp(s, names[i]) == 0) {
			*ret = (enum top_sort)i;
			return 0;
		}
	return -EINVAL;
}

static int parse_options(struct top *t, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "delay", required_argument, NULL, 'd' },
		{ "clients", no_argument, NULL, 'c' },
		{ "sort", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o;
	optind = 0; /* quotactl's own getopt_long stopped at "top": start afresh */
	while ((o = getopt_long(argc, argv, "+d:cs:h", opts, NULL)) != -1) {
		switch (o) {
		case 'd': {
			char *end;
			errno = 0;
			double v = strtod(optarg, &end);
			if (errno || end == optarg || *end || !isfinite(v) || v < 0.1 || v > 3600) {
				fprintf(stderr, "quotactl top: -d: expected seconds in [0.1, 3600], got '%s'\n",
					optarg);
				return EXIT_USAGE;
			}
			t->delay_s = v;
			break;
		}
		case 'c': t->show_clients = true; break;
		case 's':
			if (parse_sort(optarg, &t->sort) < 0) {
				fprintf(stderr, "quotactl top: --sort: name, use, refused or admitted, not '%s'\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case 'h': usage(stdout); return -1;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "quotactl top: unexpected argument '%s'\n", argv[optind]);
		return EXIT_USAGE;
	}
	return 0;
}

static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !stop)
		;
}

/* No terminal: read, wait one interval, read again (rates), print once. */
static int snapshot(struct top *t)
{
	int width = 80;
	const char *cols = getenv("COLUMNS");
	if (cols && atoi(cols) >= 40 && atoi(cols) <= 1000)
		width = atoi(cols);
	if (top_refresh(t) == 0) {
		sleep_s(t->delay_s);
		top_refresh(t);
	}
	if (t->seg_err < 0) {
		fprintf(stderr, "quotactl top: segment /%s: %s\n", t->segment, quota_strerror(t->seg_err));
		return EXIT_RUNTIME;
	}
	struct top_lines l;
	top_lines_init(&l, width);
	top_view_header(t, &l);
	top_view_quotas(t, &l);
	if (t->show_clients)
		top_view_clients(t, &l, -1);
	top_lines_print(&l, stdout);
	top_lines_free(&l);
	return fflush(stdout) == 0 ? 0 : EXIT_RUNTIME;
}

/* ---- the terminal ---------------------------------------------------- */

enum { PAIR_OK = 1, PAIR_WARN, PAIR_BAD };

static chtype attr_of(const struct top *t, int cls)
{
	switch (cls) {
	case C_HEAD: return A_BOLD;
	case C_TITLE: return A_REVERSE;
	case C_OK: return t->color ? COLOR_PAIR(PAIR_OK) : A_NORMAL;
	case C_WARN: return t->color ? COLOR_PAIR(PAIR_WARN) | A_BOLD : A_BOLD;
	case C_BAD: return t->color ? COLOR_PAIR(PAIR_BAD) | A_BOLD : A_BOLD;
	case C_DIM: return A_DIM;
	case C_KEY: return A_REVERSE | A_BOLD;
	default: return A_NORMAL;
	}
}

/* Draw lines @from.. of @l on screen rows @y.. (at most @rows of them). */
static int blit(const struct top *t, const struct top_lines *l, int from, int y, int rows)
{
	int n = 0;
	for (int i = from; i < l->n && n < rows; i++, n++) {
		const char *text = l->text + (size_t)i * (size_t)l->width;
		const uint8_t *cls = l->cls + (size_t)i * (size_t)l->width;
		for (int x = 0; x < l->width && x < COLS; x++)
			mvaddch(y + n, x, (chtype)(unsigned char)text[x] | attr_of(t, cls[x]));
	}
	return n;
}

static void draw(const struct top *t, int *scroll)
{
	struct top_lines head, quotas, clients, keys;
	int w = COLS;
	top_lines_init(&head, w);
	top_lines_init(&quotas, w);
	top_lines_init(&clients, w);
	top_lines_init(&keys, w);
	top_view_header(t, &head);
	top_view_quotas(t, &quotas);
	top_view_keys(t, &keys);

	int avail = LINES - head.n - 1; /* the keys line at the bottom */
	if (avail < 1)
		avail = 1;
	int qrows = avail;
	if (t->show_clients) {
		/* The clients pane takes what the quotas leave, at least a third
		 * of the screen (a header and two rows). */
		int crows = avail - quotas.n;
		if (crows < avail / 3)
			crows = avail / 3;
		if (crows < 3)
			crows = 3 < avail ? 3 : avail;
		qrows = avail - crows;
		top_view_clients(t, &clients, crows - 1);
	}
	if (*scroll > quotas.n - qrows)
		*scroll = quotas.n - qrows;
	if (*scroll < 0)
		*scroll = 0;

	erase();
	int y = blit(t, &head, 0, 0, head.n);
	blit(t, &quotas, *scroll, y, qrows);
	if (t->show_clients)
		blit(t, &clients, 0, y + qrows, avail - qrows);
	blit(t, &keys, 0, LINES - 1, 1);
	if (quotas.n > qrows && COLS > 30) {
		char pos[40];
		snprintf(pos, sizeof(pos), " lines %d-%d of %d ", *scroll + 1,
			 *scroll + qrows < quotas.n ? *scroll + qrows : quotas.n, quotas.n);
		mvaddstr(LINES - 1, COLS - (int)strlen(pos) - 1, pos);
	}
	refresh();
	top_lines_free(&head);
	top_lines_free(&quotas);
	top_lines_free(&clients);
	top_lines_free(&keys);
}

static bool no_color(void)
{
	const char *s = getenv("NO_COLOR");
	return s && *s; /* no-color.org: set and not empty */
}

static int interactive(struct top *t, SCREEN *scr)
{
	set_term(scr);
	cbreak();
	noecho();
	nonl();
	keypad(stdscr, TRUE);
	curs_set(0);
	t->color = has_colors() && !no_color();
	if (t->color) {
		start_color();
		use_default_colors();
		init_pair(PAIR_OK, COLOR_GREEN, -1);
		init_pair(PAIR_WARN, COLOR_YELLOW, -1);
		init_pair(PAIR_BAD, COLOR_RED, -1);
	}
	int64_t delay_ns = (int64_t)(t->delay_s * 1e9), next = 0;
	int scroll = 0;
	while (!stop) {
		int64_t now = top_mono_ns();
		if (now >= next) {
			top_refresh(t);
			next = now + delay_ns;
			draw(t, &scroll);
		}
		int64_t left_ms = (next - top_mono_ns()) / 1000000 + 1;
		timeout(left_ms < 1 ? 1 : left_ms > 1000 ? 1000 : (int)left_ms);
		int ch = getch();
		int page = LINES > 8 ? LINES - 6 : 1;
		switch (ch) {
		case 'q': case 'Q': stop = 1; continue;
		case 'c':
			t->show_clients = !t->show_clients;
			if (t->show_clients)
				top_refresh_clients(t);
			break;
		case 's': t->sort = (enum top_sort)((t->sort + 1) % SORT_QUOTA_MODES); break;
		case 'S': t->csort = (enum top_csort)((t->csort + 1) % SORT_CLIENT_MODES); break;
		case KEY_UP: case 'k': scroll--; break;
		case KEY_DOWN: case 'j': scroll++; break;
		case KEY_PPAGE: scroll -= page; break;
		case KEY_NPAGE: case ' ': scroll += page; break;
		case KEY_HOME: case 'g': scroll = 0; break;
		case KEY_RESIZE: break;
		case 12: clear(); break; /* ^L */
		default: continue;        /* ERR (no key) or a key we do not use */
		}
		draw(t, &scroll);
	}
	endwin();
	delscreen(scr);
	return 0;
}

int quotactl_top(const char *segment, const char *socket_path, int argc, char **argv)
{
	struct top t = { .segment = segment, .delay_s = 1, .sort = SORT_NAME, .csort = CSORT_ADMITTED };
	int r = parse_options(&t, argc, argv);
	if (r)
		return r < 0 ? 0 : r;
	if (socket_path && *socket_path)
		snprintf(t.socket_path, sizeof(t.socket_path), "%s", socket_path);
	else if (qd_default_socket_path(t.socket_path, sizeof(t.socket_path)) < 0)
		t.socket_path[0] = 0; /* shown on screen: the segment alone still works */

	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: wake getch() */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	SCREEN *scr = NULL;
	if (isatty(STDOUT_FILENO) && isatty(STDIN_FILENO)) {
		scr = newterm(NULL, stdout, stdin);
		if (!scr)
			fprintf(stderr, "quotactl top: cannot use terminal type '%s'; printing one snapshot\n",
				getenv("TERM") ? getenv("TERM") : "");
	}
	r = scr ? interactive(&t, scr) : snapshot(&t);
	top_free(&t);
	return r;
}
