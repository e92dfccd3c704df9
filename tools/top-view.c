/* SPDX-License-Identifier: MIT */
/*
 * top-view.c - the layout of `quotactl top`: turns the model (top-int.h)
 * into lines of text of the screen's width, each character tagged with a
 * class (normal, heading, good, warning, bad...). top.c draws those lines
 * with ncurses, or prints them as plain text when there is no terminal; the
 * layout is therefore the same in both, and fits 80 columns (the bars grow
 * with the width).
 *
 * Per quota: a title line (name, reclaimed, backoff), then one
 * row per limit: a bar of the capacity in use, its share and units, the
 * rate admitted per second and per minute (in the limit's units), that rate
 * as a share of the limit, and the refusals per second it caused; a row for
 * in flight / max; the other refusals; the spend of today and this month
 * against the budgets.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "top-int.h"

/* ---- lines ----------------------------------------------------------- */

void top_lines_init(struct top_lines *l, int width)
{
	memset(l, 0, sizeof(*l));
	l->width = width < 20 ? 20 : width;
}

void top_lines_free(struct top_lines *l)
{
	free(l->text);
	free(l->cls);
	l->text = NULL;
	l->cls = NULL;
	l->n = l->cap = 0;
}

static char *line_text(const struct top_lines *l, int i)
{
	return l->text + (size_t)i * (size_t)l->width;
}

/* Start a new, blank line. */
static void nl(struct top_lines *l)
{
	if (l->n == l->cap) {
		int cap = l->cap ? l->cap * 2 : 32;
		char *t = realloc(l->text, (size_t)cap * (size_t)l->width);
		if (!t)
			return;
		l->text = t;
		uint8_t *c = realloc(l->cls, (size_t)cap * (size_t)l->width);
		if (!c)
			return;
		l->cls = c;
		l->cap = cap;
	}
	memset(line_text(l, l->n), ' ', (size_t)l->width);
	memset(l->cls + (size_t)l->n * (size_t)l->width, C_NORMAL, (size_t)l->width);
	l->n++;
	l->col = 0;
}

/* Append text to the current line (clipped at the width). */
__attribute__((format(printf, 3, 4)))
static void put(struct top_lines *l, int cls, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || l->n == 0)
		return;
	if (n > (int)sizeof(buf) - 1)
		n = (int)sizeof(buf) - 1;
	char *t = line_text(l, l->n - 1);
	uint8_t *c = l->cls + (size_t)(l->n - 1) * (size_t)l->width;
	for (int i = 0; i < n && l->col < l->width; i++, l->col++) {
		t[l->col] = buf[i];
		c[l->col] = (uint8_t)cls;
	}
}

/* Move to column @col of the current line (never backwards). */
static void to(struct top_lines *l, int col)
{
	if (col > l->col)
		l->col = col < l->width ? col : l->width;
}

/* Give the whole current line class @cls (a title bar). */
static void fill_line(struct top_lines *l, int cls)
{
	if (l->n)
		memset(l->cls + (size_t)(l->n - 1) * (size_t)l->width, cls, (size_t)l->width);
}

void top_lines_print(const struct top_lines *l, FILE *f)
{
	for (int i = 0; i < l->n; i++) {
		const char *t = line_text(l, i);
		int n = l->width;
		while (n > 0 && t[n - 1] == ' ')
			n--;
		fprintf(f, "%.*s\n", n, t);
	}
}

/* ---- numbers ------------------------------------------------------- */

/* A count in at most 6 characters: 999, 15.0k, 900k, 1.20M... */
static const char *human(char *buf, size_t len, double v)
{
	static const char suffix[] = " kMGTPE";
	int i = 0;
	while (v >= 999.5 && i < 6) {
		v /= 1000;
		i++;
	}
	if (i == 0)
		snprintf(buf, len, "%.0f", v);
	else
		snprintf(buf, len, v < 9.995 ? "%.2f%c" : v < 99.95 ? "%.1f%c" : "%.0f%c", v, suffix[i]);
	return buf;
}

/* A rate: one decimal below 100, else as human(). */
static const char *rate(char *buf, size_t len, double v)
{
	if (v < 0)
		v = 0;
	if (v < 99.95)
		snprintf(buf, len, "%.1f", v);
	else
		human(buf, len, v);
	return buf;
}

static const char *duration(char *buf, size_t len, double s)
{
	if (s < 60)
		snprintf(buf, len, "%.1fs", s);
	else if (s < 3600)
		snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
	else if (s < 86400)
		snprintf(buf, len, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
	else
		snprintf(buf, len, "%dd%02dh", (int)(s / 86400), (int)s % 86400 / 3600);
	return buf;
}

static int level(double frac)
{
	return frac < 0.7 ? C_OK : frac < 0.9 ? C_WARN : C_BAD;
}

/* "[||||      ]" of @width characters, brackets included. */
static void bar(struct top_lines *l, int width, double frac)
{
	int inner = width - 2;
	if (inner < 1)
		return;
	if (frac < 0)
		frac = 0;
	if (frac > 1)
		frac = 1;
	int fill = (int)(frac * inner + 0.5);
	if (fill == 0 && frac > 0)
		fill = 1;
	put(l, C_DIM, "[");
	for (int i = 0; i < inner; i++)
		put(l, i < fill ? level(frac) : C_DIM, "%c", i < fill ? '|' : ' ');
	put(l, C_DIM, "]");
}

/* ---- the header ---------------------------------------------------- */

void top_view_header(const struct top *t, struct top_lines *out)
{
	char clock[16] = "";
	time_t now = time(NULL);
	struct tm tm;
	if (localtime_r(&now, &tm))
		strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
	nl(out);
	put(out, C_TITLE, " quotactl top  segment /%s  every %.1f s", t->segment, t->delay_s);
	to(out, out->width - 9);
	put(out, C_TITLE, "%s", clock);
	fill_line(out, C_TITLE);

	nl(out);
	const struct top_daemon *d = &t->d;
	char up[32];
	if (d->reachable) {
		put(out, C_OK, " quotad up");
		put(out, C_NORMAL, ": pid %d, up %s, %d client%s attached, %llu dead client%s reclaimed", d->pid,
		    duration(up, sizeof(up), d->uptime_s), d->clients, d->clients == 1 ? "" : "s",
		    (unsigned long long)d->reclaimed_slots, d->reclaimed_slots == 1 ? "" : "s");
	} else {
		put(out, C_BAD, " quotad not answering");
		put(out, C_NORMAL, " (%s); workers still enforce the limits", d->why);
	}
	if (t->seg_err < 0) {
		nl(out);
		put(out, C_BAD, " segment /%s: %s (retrying every %.1f s)", t->segment,
		    quota_strerror(t->seg_err), t->delay_s);
	}
}

/* ---- quotas --------------------------------------------------------- */

/* Columns of a limit row; the bar takes what the others leave. */
struct cols {
	int bar, bar_w, pct, used, adm_s, adm_min, of_limit, refused;
};

static struct cols columns(int width)
{
	/* kind(7) bar pct(5) used(12) /s(8) /min(9) %(7) refused/s(10) */
	struct cols c;
	c.bar = 8;
	int right = 5 + 12 + 8 + 9 + 7 + 10;
	c.bar_w = width - c.bar - right - 1;
	if (c.bar_w < 8)
		c.bar_w = 8;
	c.pct = c.bar + c.bar_w + 1;
	c.used = c.pct + 5;
	c.adm_s = c.used + 12;
	c.adm_min = c.adm_s + 8;
	c.of_limit = c.adm_min + 9;
	c.refused = c.of_limit + 7;
	return c;
}

/* Right-align @s so that it ends at column @end. */
static void rput(struct top_lines *l, int cls, int end, const char *s)
{
	int n = (int)strlen(s);
	to(l, end - n);
	put(l, cls, "%s", s);
}

static void limit_header(struct top_lines *out, const struct cols *c)
{
	nl(out);
	put(out, C_DIM, "  LIMIT");
	to(out, c->bar);
	put(out, C_DIM, "USED OF CAPACITY");
	rput(out, C_DIM, c->used + 11, "USED");
	rput(out, C_DIM, c->adm_min - 1, "ADMIT/s");
	rput(out, C_DIM, c->of_limit - 1, "LAST MIN");
	rput(out, C_DIM, c->refused - 1, "OF LIM");
	rput(out, C_DIM, c->refused + 9, "REFUSED/s");
}

static void limit_row(const struct top_quota *q, int k, struct top_lines *out, const struct cols *c)
{
	uint64_t cap = q->s.rate[k].capacity, av = q->s.rate[k].available;
	uint64_t used = cap - (av < cap ? av : cap);
	double frac = cap ? (double)used / (double)cap : 0;
	char a[16], b[16], buf[40];
	nl(out);
	put(out, C_NORMAL, "  %s", top_kind_name(k));
	to(out, c->bar);
	bar(out, c->bar_w, frac);
	snprintf(buf, sizeof(buf), "%3.0f%%", frac * 100);
	rput(out, level(frac), c->pct + 4, buf);
	snprintf(buf, sizeof(buf), "%s/%s", human(a, sizeof(a), (double)used), human(b, sizeof(b), (double)cap));
	rput(out, C_NORMAL, c->used + 11, buf);
	if (!q->have_rates) {
		rput(out, C_DIM, c->adm_min - 1, "-");
		rput(out, C_DIM, c->of_limit - 1, "-");
		rput(out, C_DIM, c->refused - 1, "-");
		rput(out, C_DIM, c->refused + 9, "-");
		return;
	}
	rput(out, C_NORMAL, c->adm_min - 1, rate(a, sizeof(a), q->adm_s[k]));
	/* Admitted per minute over the last minute, and that as a share of
	 * the limit's rate (for a per-day limit: the pace, were it kept all
	 * day). Dim while top has watched for less than a minute. */
	int mcls = q->min_span_s < 59 ? C_DIM : C_NORMAL;
	rput(out, mcls, c->of_limit - 1, human(a, sizeof(a), q->adm_min[k]));
	int64_t period = q->s.rate[k].period_ns;
	double per_min = period > 0 ? (double)q->s.rate[k].limit * 60e9 / (double)period : 0;
	snprintf(buf, sizeof(buf), "%.0f%%", per_min > 0 ? q->adm_min[k] / per_min * 100 : 0);
	rput(out, mcls, c->refused - 1, buf);
	double rj = q->rej_s[k];
	rput(out, rj > 0 ? C_WARN : C_NORMAL, c->refused + 9, rate(a, sizeof(a), rj));
}

static void inflight_row(const struct top_quota *q, struct top_lines *out, const struct cols *c)
{
	double frac = (double)q->s.inflight / (double)q->s.max_inflight;
	char a[16], b[16], buf[40];
	nl(out);
	put(out, C_NORMAL, "  in-fl");
	to(out, c->bar);
	bar(out, c->bar_w, frac);
	snprintf(buf, sizeof(buf), "%3.0f%%", (frac > 1 ? 1 : frac) * 100);
	rput(out, level(frac), c->pct + 4, buf);
	snprintf(buf, sizeof(buf), "%s/%s", human(a, sizeof(a), (double)q->s.inflight),
		 human(b, sizeof(b), (double)q->s.max_inflight));
	rput(out, C_NORMAL, c->used + 11, buf);
	double rj = q->rej_s[QUOTA_REJECT_INFLIGHT];
	rput(out, rj > 0 ? C_WARN : q->have_rates ? C_NORMAL : C_DIM, c->refused + 9,
	     q->have_rates ? rate(a, sizeof(a), rj) : "-");
}

static void spend_part(struct top_lines *out, const char *what, uint64_t spent, uint64_t budget, int bar_w)
{
	put(out, C_NORMAL, "%s $%.6f", what, (double)spent / 1e9);
	if (!budget) {
		put(out, C_DIM, " (no budget)");
		return;
	}
	double frac = (double)spent / (double)budget;
	put(out, C_NORMAL, " of $%.2f ", (double)budget / 1e9);
	bar(out, bar_w, frac);
	put(out, level(frac), " %.0f%%", frac * 100);
}

static void quota_block(const struct top_quota *q, struct top_lines *out, const struct cols *c)
{
	char a[16];
	nl(out);
	put(out, C_HEAD, "%s", q->s.name);
	/* In flight is counted only for quotas with a max_inflight. */
	if (!q->s.max_inflight && q->s.inflight)
		put(out, C_NORMAL, "   in flight %llu", (unsigned long long)q->s.inflight);
	put(out, C_NORMAL, "   reclaimed %llu", (unsigned long long)q->s.c.reclaimed);
	if (q->s.has_waits) {
		char b[16];
		put(out, C_NORMAL, "   wait p50 %s p99 %s", duration(a, sizeof(a), (double)q->s.wait_p50_ns / 1e9),
		    duration(b, sizeof(b), (double)q->s.wait_p99_ns / 1e9));
	}
	if (q->s.paused_ns > 0)
		put(out, C_BAD, "   BACKOFF %s left", duration(a, sizeof(a), (double)q->s.paused_ns / 1e9));
	else
		put(out, C_DIM, "   no backoff");

	limit_header(out, c);
	for (int k = 0; k < QUOTA_RATE_KINDS; k++)
		if (q->s.rate[k].limit)
			limit_row(q, k, out, c);
	if (q->s.max_inflight)
		inflight_row(q, out, c);

	nl(out);
	put(out, C_NORMAL, "  refused/s:");
	for (int r = QUOTA_REJECT_SPEND; r < QUOTA_REJECT_REASONS; r++) {
		double v = q->rej_s[r];
		put(out, C_NORMAL, "  %s ", top_reason_name(r));
		put(out, q->have_rates && v > 0 ? C_WARN : q->have_rates ? C_NORMAL : C_DIM, "%s",
		    q->have_rates ? rate(a, sizeof(a), v) : "-");
	}
	if (!q->s.max_inflight && q->have_rates && q->rej_s[QUOTA_REJECT_INFLIGHT] > 0)
		put(out, C_WARN, "  in-flight %s", rate(a, sizeof(a), q->rej_s[QUOTA_REJECT_INFLIGHT]));

	int bw = c->bar_w / 2 < 10 ? 10 : c->bar_w / 2;
	nl(out);
	if (!q->s.budget_day_nusd && !q->s.budget_month_nusd) {
		put(out, C_NORMAL, "  spend today $%.6f, this month $%.6f", (double)q->s.spent_day_nusd / 1e9,
		    (double)q->s.spent_month_nusd / 1e9);
		put(out, C_DIM, " (no budgets)");
	} else {
		spend_part(out, "  spend today", q->s.spent_day_nusd, q->s.budget_day_nusd, bw);
		nl(out);
		spend_part(out, "  this month ", q->s.spent_month_nusd, q->s.budget_month_nusd, bw);
	}
}

static const struct top *sort_ctx;

static double refused_s(const struct top_quota *q)
{
	double s = 0;
	for (int r = 0; r < QUOTA_REJECT_REASONS; r++)
		s += q->rej_s[r];
	return s;
}

static double admitted_s(const struct top_quota *q)
{
	return q->adm_s[QUOTA_RPM]; /* reservations per second: the request kinds count them */
}

static int cmp_quota(const void *a, const void *b)
{
	const struct top_quota *x = &sort_ctx->q[*(const int *)a], *y = &sort_ctx->q[*(const int *)b];
	double dx = 0, dy = 0;
	switch (sort_ctx->sort) {
	case SORT_USE: dx = x->use, dy = y->use; break;
	case SORT_REFUSED: dx = refused_s(x), dy = refused_s(y); break;
	case SORT_ADMITTED: dx = admitted_s(x), dy = admitted_s(y); break;
	default: break;
	}
	if (dx != dy)
		return dx < dy ? 1 : -1; /* largest first */
	return strcmp(x->s.name, y->s.name);
}

void top_view_quotas(const struct top *t, struct top_lines *out)
{
	int *ids = malloc((size_t)(t->nquota > 0 ? t->nquota : 1) * sizeof(*ids));
	int n = 0;
	for (int id = 0; ids && id < t->nquota; id++)
		if (t->q[id].present)
			ids[n++] = id;
	sort_ctx = t;
	if (n > 1)
		qsort(ids, (size_t)n, sizeof(*ids), cmp_quota);
	struct cols c = columns(out->width);
	if (n == 0 && t->seg_err == 0) {
		nl(out);
		put(out, C_DIM, "  (no quotas in this segment)");
	}
	for (int i = 0; i < n; i++) {
		if (i)
			nl(out);
		quota_block(&t->q[ids[i]], out, &c);
	}
	free(ids);
}

/* ---- clients ------------------------------------------------------- */

static int cmp_client(const void *a, const void *b)
{
	const struct top_client *x = a, *y = b;
	switch (sort_ctx->csort) {
	case CSORT_HELD:
		if (x->held != y->held)
			return x->held < y->held ? 1 : -1;
		break;
	case CSORT_ADMITTED:
		if (x->adm_s != y->adm_s)
			return x->adm_s < y->adm_s ? 1 : -1;
		if (x->admitted != y->admitted)
			return x->admitted < y->admitted ? 1 : -1;
		break;
	default:
		break;
	}
	return x->pid - y->pid;
}

void top_view_clients(const struct top *t, struct top_lines *out, int max_rows)
{
	nl(out);
	put(out, C_TITLE, " %-7s %-15s %-7s %4s %8s %7s %7s  %s", "PID", "COMMAND", "STATE", "HELD", "ADMITTED",
	    "ADMIT/s", "REFUSED", "QUOTAS");
	fill_line(out, C_TITLE);
	if (!t->clients_loaded || t->clients_err < 0) {
		nl(out);
		put(out, t->clients_err < 0 ? C_BAD : C_DIM, " %s",
		    t->clients_err < 0 ? t->clients_why : "(asking quotad...)");
		return;
	}
	if (t->nclient == 0) {
		nl(out);
		put(out, C_DIM, " (no process attached)");
		return;
	}
	sort_ctx = t;
	qsort(t->cl, (size_t)t->nclient, sizeof(*t->cl), cmp_client);
	for (int i = 0; i < t->nclient; i++) {
		if (max_rows >= 0 && i == max_rows - 1 && t->nclient > max_rows) {
			nl(out);
			put(out, C_DIM, " ... %d more", t->nclient - i);
			break;
		}
		const struct top_client *cl = &t->cl[i];
		char a[16], b[16], r[16];
		nl(out);
		put(out, C_NORMAL, " %-7d %-15.15s %-7.7s %4llu %8s %7s %7s  %s", cl->pid, cl->comm, cl->state,
		    (unsigned long long)cl->held, human(a, sizeof(a), (double)cl->admitted),
		    cl->have_rate ? rate(b, sizeof(b), cl->adm_s) : "-", human(r, sizeof(r), (double)cl->rejected),
		    cl->quotas);
	}
}

/* ---- keys ------------------------------------------------------------ */

static const char *sort_names[SORT_QUOTA_MODES] = { "name", "use", "refused", "admitted" };
static const char *csort_names[SORT_CLIENT_MODES] = { "admitted", "held", "pid" };

void top_view_keys(const struct top *t, struct top_lines *out)
{
	nl(out);
	put(out, C_KEY, " q");
	put(out, C_NORMAL, " quit ");
	put(out, C_KEY, " c");
	put(out, C_NORMAL, " clients %s ", t->show_clients ? "off" : "on");
	put(out, C_KEY, " s");
	put(out, C_NORMAL, " sort: %s ", sort_names[t->sort]);
	if (t->show_clients) {
		put(out, C_KEY, " S");
		put(out, C_NORMAL, " clients by: %s ", csort_names[t->csort]);
	}
	put(out, C_KEY, " arrows");
	put(out, C_NORMAL, " scroll");
}
