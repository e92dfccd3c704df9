/* SPDX-License-Identifier: MIT */
/*
 * report.c - turns a run's raw results into what a reader sees: medians and
 * percentiles per scenario, the targets as measured ratios, the
 * machine's description, and the table, JSON and PNG outputs.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "report.h"

/* ---- Machine -------------------------------------------------------------- */

static void read_line(const char *path, char *out, size_t len)
{
	FILE *f = fopen(path, "re");
	out[0] = 0;
	if (f) {
		if (fgets(out, (int)len, f))
			out[strcspn(out, "\n")] = 0;
		fclose(f);
	}
	if (!out[0])
		snprintf(out, len, "unknown");
}

static void read_loadavg(char *out, size_t len)
{
	read_line("/proc/loadavg", out, len);
	char *sp = out;
	for (int i = 0; i < 3 && sp; i++)
		sp = strchr(sp + 1, ' ');
	if (sp)
		*sp = 0;
}

void qb_machine_load(struct qb_machine *m)
{
	read_loadavg(m->loadavg_end, sizeof(m->loadavg_end));
}

void qb_machine_describe(struct qb_machine *m)
{
	memset(m, 0, sizeof(*m));
	FILE *f = fopen("/proc/cpuinfo", "re");
	char line[512];
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "model name", 10)) {
			char *v = strchr(line, ':');
			if (v) {
				v += 1 + strspn(v + 1, " \t");
				v[strcspn(v, "\n")] = 0;
				snprintf(m->cpu, sizeof(m->cpu), "%s", v);
			}
			break;
		}
	if (f)
		fclose(f);
	if (!m->cpu[0])
		snprintf(m->cpu, sizeof(m->cpu), "unknown");
	m->cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
	struct utsname u;
	if (uname(&u) == 0)
		snprintf(m->kernel, sizeof(m->kernel), "%s %s %s", u.sysname, u.release, u.machine);
	read_line("/sys/devices/system/clocksource/clocksource0/current_clocksource", m->clocksource,
		  sizeof(m->clocksource));
	read_loadavg(m->loadavg, sizeof(m->loadavg));
	time_t t = time(NULL);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(m->date, sizeof(m->date), "%Y-%m-%dT%H:%M:%SZ", &tm);
#ifdef __VERSION__
	snprintf(m->compiler, sizeof(m->compiler), "cc %s", __VERSION__);
#endif
	snprintf(m->redis_version, sizeof(m->redis_version), "unknown");
	/* What sampling adds to each sampled latency: two clock reads around
	 * nothing. */
	static struct qb_hist h;
	memset(&h, 0, sizeof(h));
	for (int i = 0; i < 200000; i++) {
		int64_t a = qb_now_ns();
		int64_t b = qb_now_ns();
		qb_hist_add(&h, (uint64_t)(b - a));
	}
	m->timer_p50_ns = qb_hist_quantile(&h, 0.5);
}

void qb_print_machine(FILE *f, const struct qb_machine *m)
{
	fprintf(f,
		"machine: %s, %d CPUs online, %s, clocksource %s\n"
		"         load average %s at start%s%s%s, %s, %s\n"
		"         timer: a timed empty operation reads %llu ns (p50); included in every latency\n",
		m->cpu, m->cpus, m->kernel, m->clocksource, m->loadavg,
		m->loadavg_end[0] ? ", " : "", m->loadavg_end, m->loadavg_end[0] ? " at end" : "",
		m->date, m->compiler,
		(unsigned long long)m->timer_p50_ns);
}

/* ---- Statistics ----------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

void qb_result_summarize(struct qb_result *r)
{
	if (r->runs > 0) {
		double v[QB_MAX_RUNS];
		memcpy(v, r->ops_per_s, sizeof(double) * (size_t)r->runs);
		qsort(v, (size_t)r->runs, sizeof(double), cmp_double);
		int n = r->runs;
		r->median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
		r->min = v[0];
	}
	r->samples = qb_hist_total(&r->h);
	r->p50 = qb_hist_quantile(&r->h, 0.5);
	r->p99 = qb_hist_quantile(&r->h, 0.99);
	r->p999 = qb_hist_quantile(&r->h, 0.999);
	r->p9999 = qb_hist_quantile(&r->h, 0.9999);
	r->retries_per_op = r->im->has_retries && r->c.ops ? (double)r->c.retries / (double)r->c.ops
							 : -1;
}

/* ---- Targets -------------------------------------------------------------- */

static const struct qb_result *find(const struct qb_report *rep, const char *sc, const char *im)
{
	for (int i = 0; i < rep->nresults; i++) {
		const struct qb_result *r = &rep->results[i];
		if (!strcmp(r->sc->id, sc) && !strcmp(r->im->name, im) && !r->err && r->runs)
			return r;
	}
	return NULL;
}

static struct qb_target *add_target(struct qb_report *rep, const char *name, const char *goal,
				    double threshold)
{
	if (rep->ntargets == QB_MAX_TARGETS)
		return NULL;
	struct qb_target *t = &rep->targets[rep->ntargets++];
	t->name = name;
	t->goal = goal;
	t->threshold = threshold;
	t->value = NAN;
	return t;
}

__attribute__((format(printf, 2, 3))) static void detail_cat(struct qb_target *t, const char *fmt, ...)
{
	size_t n = strlen(t->detail);
	va_list ap;
	va_start(ap, fmt);
	if (n < sizeof(t->detail))
		vsnprintf(t->detail + n, sizeof(t->detail) - n, fmt, ap);
	va_end(ap);
}

static const char *hot_ids[] = { "hot-2", "hot-4", "hot-8", "hot-16" };

static void targets_for(struct qb_report *rep, const char *im, const char *prefix)
{
	static char names[2][8][96];
	int w = !strcmp(prefix, "") ? 0 : 1;
	const struct qb_result *a, *b;
	struct qb_target *t;
#define NAME(i, s) (snprintf(names[w][i], sizeof(names[w][i]), "%s%s", prefix, s), names[w][i])

	t = add_target(rep, NAME(0, "1-process reserve / physical floor"), ">= 0.75", 0.75);
	a = find(rep, "reserve-1l", im);
	b = find(rep, "floor", "floor");
	if (t && a && b) {
		t->value = a->median / b->median;
		snprintf(t->detail, sizeof(t->detail), "1 limit %.3g vs floor %.3g ops/s", a->median,
			 b->median);
		if ((a = find(rep, "reserve", im)))
			detail_cat(t, "; 2 limits: %.2f", a->median / b->median);
	}

	t = add_target(rep, NAME(1, "hot quota 2..16 processes / 1 process (worst N)"), ">= 1.0", 1.0);
	b = find(rep, "hot-1", im);
	if (t && b) {
		snprintf(t->detail, sizeof(t->detail), "N=2,4,8,16:");
		for (int i = 0; i < 4; i++)
			if ((a = find(rep, hot_ids[i], im))) {
				double v = a->median / b->median;
				detail_cat(t, " %.2f", v);
				t->value = isnan(t->value) || v < t->value ? v : t->value;
			}
		const struct qb_result *f1 = find(rep, "floor", "floor");
		const struct qb_result *f2 = find(rep, "floor-hot-2", "floor");
		const struct qb_result *f16 = find(rep, "floor-hot-16", "floor");
		if (f1 && f2 && f16)
			detail_cat(t, "; the floor itself on one shared line: %.2f (2), %.2f (16)",
				   f2->median / f1->median, f16->median / f1->median);
	}

	t = add_target(rep, NAME(2, "distinct quotas, 2 processes / 1 process"), ">= 1.7", 1.7);
	a = find(rep, "distinct-2", im);
	b = find(rep, "hot-1", im);
	if (t && a && b) {
		t->value = a->median / b->median;
		if ((a = find(rep, "distinct-4", im)))
			detail_cat(t, "4 processes: %.2f", a->median / b->median);
	}

	t = add_target(rep, NAME(3, "vs mutex: hot-quota median throughput (worst N)"), ">= 1.3", 1.3);
	if (t) {
		snprintf(t->detail, sizeof(t->detail), "N=2,4,8,16:");
		for (int i = 0; i < 4; i++) {
			a = find(rep, hot_ids[i], im);
			b = find(rep, hot_ids[i], "mutex");
			if (a && b) {
				double v = a->median / b->median;
				detail_cat(t, " %.2f", v);
				t->value = isnan(t->value) || v < t->value ? v : t->value;
			}
		}
	}

	t = add_target(rep, NAME(4, "vs mutex: p99.9 latency at 16 processes (mutex / ours)"), ">= 4", 4);
	a = find(rep, "hot-16", im);
	b = find(rep, "hot-16", "mutex");
	if (t && a && b && a->p999) {
		t->value = (double)b->p999 / (double)a->p999;
		snprintf(t->detail, sizeof(t->detail), "%.0f ns vs %.0f ns", (double)b->p999,
			 (double)a->p999);
	}

	t = add_target(rep, NAME(5, "vs redis: 1-process reserve+commit throughput"), ">= 100", 100);
	a = find(rep, "hot-1", im);
	b = find(rep, "hot-1", "redis");
	if (t && a && b) {
		t->value = a->median / b->median;
		const struct qb_result *a16 = find(rep, "hot-16", im), *b16 = find(rep, "hot-16", "redis");
		if (a16 && b16)
			detail_cat(t, "16 processes: %.0f", a16->median / b16->median);
	}

	t = add_target(rep, NAME(6, "vs redis: 1-process p50 latency (redis / ours)"), ">= 1000", 1000);
	if (t && a && b && a->p50) {
		t->value = (double)b->p50 / (double)a->p50;
		snprintf(t->detail, sizeof(t->detail), "%.0f ns vs %.0f ns (timer included in both)",
			 (double)b->p50, (double)a->p50);
	}

	t = add_target(rep, NAME(7, "rejected path / admit path, 2 processes"), ">= 2", 2);
	a = find(rep, "reject-2", im);
	b = find(rep, "hot-reserve-2", im);
	if (t && a && b) {
		t->value = a->median / b->median;
		snprintf(t->detail, sizeof(t->detail), "%.3g vs %.3g ops/s (reserve only)", a->median,
			 b->median);
	}
#undef NAME
}

void qb_compute_targets(struct qb_report *rep)
{
	rep->ntargets = 0;
	targets_for(rep, "libquota", "");
	targets_for(rep, "refcas", "[reference refcas] ");
}

/* ---- Table ---------------------------------------------------------------- */

static const char *fmt_ns(char *b, size_t len, uint64_t ns)
{
	if (ns == 0)
		snprintf(b, len, "-");
	else if (ns < 10000)
		snprintf(b, len, "%lluns", (unsigned long long)ns);
	else if (ns < 10000000)
		snprintf(b, len, "%.1fus", (double)ns / 1e3);
	else
		snprintf(b, len, "%.1fms", (double)ns / 1e6);
	return b;
}

static const char *op_name(enum qb_op op)
{
	switch (op) {
	case QB_OP_RESERVE:
		return "reserve";
	case QB_OP_RESERVE_COMMIT:
		return "reserve+commit";
	case QB_OP_REJECT:
		return "reserve (rejected)";
	}
	return "?";
}

void qb_print_table(FILE *f, const struct qb_report *rep)
{
	fprintf(f, "\n%d runs of %d ms per scenario; throughput = aggregate ops/s over all processes;\n"
		   "latency sampled (1 op in 64; every op for redis), histogram buckets <= 6.25%% wide.\n\n",
		rep->runs, rep->duration_ms);
	fprintf(f, "%-14s %-9s %5s %13s %13s %8s %8s %8s %9s %6s\n", "scenario", "impl", "procs",
		"median ops/s", "min ops/s", "p50", "p99", "p99.9", "retry/op", "rej%");
	const char *last = NULL;
	for (int i = 0; i < rep->nresults; i++) {
		const struct qb_result *r = &rep->results[i];
		char a[16], b[16], c[16], rt[16];
		if (last && strcmp(last, r->sc->id))
			fputc('\n', f);
		last = r->sc->id;
		if (r->err) {
			fprintf(f, "%-14s %-9s %5d  FAILED (%s)\n", r->sc->id, r->im->name, r->sc->procs,
				strerror(-r->err));
			continue;
		}
		if (r->retries_per_op < 0)
			snprintf(rt, sizeof(rt), "n/a");
		else
			snprintf(rt, sizeof(rt), "%.4f", r->retries_per_op);
		fprintf(f, "%-14s %-9s %5d %13.0f %13.0f %8s %8s %8s %9s %6.1f\n", r->sc->id, r->im->name,
			r->sc->procs, r->median, r->min, fmt_ns(a, sizeof(a), r->p50),
			fmt_ns(b, sizeof(b), r->p99), fmt_ns(c, sizeof(c), r->p999), rt,
			r->c.ops ? 100.0 * (double)r->c.rejected / (double)r->c.ops : 0.0);
	}
	fprintf(f, "\nscenarios:\n");
	last = NULL;
	for (int i = 0; i < rep->nresults; i++) {
		const struct qb_result *r = &rep->results[i];
		if (last && !strcmp(last, r->sc->id))
			continue;
		last = r->sc->id;
		fprintf(f, "  %-14s %s\n", r->sc->id, r->sc->title);
	}
	fprintf(f, "implementations:\n");
	const struct qb_impl *seen[8];
	int nseen = 0;
	for (int i = 0; i < rep->nresults; i++) {
		int dup = 0;
		for (int k = 0; k < nseen; k++)
			dup |= seen[k] == rep->results[i].im;
		if (dup || nseen == 8)
			continue;
		seen[nseen++] = rep->results[i].im;
		fprintf(f, "  %-9s %s\n", rep->results[i].im->name, rep->results[i].im->what);
	}

	fprintf(f, "\ntargets (issue 5), ratios from this run:\n");
	for (int i = 0; i < rep->ntargets; i++) {
		const struct qb_target *t = &rep->targets[i];
		const char *st = isnan(t->value) ? "n/a" : t->value >= t->threshold ? "REACHED" : "NOT reached";
		fprintf(f, "  %-62s %9.3g  goal %-8s %-11s %s\n", t->name, t->value, t->goal, st,
			t->detail);
	}
	fprintf(f, "\nmemory:\n");
	if (rep->mem_err == 0) {
		fprintf(f, "  libquota segment for %u quotas and %u clients: %llu bytes (%.1f MiB)\n",
			rep->mem.quotas, rep->mem.clients, (unsigned long long)rep->mem.segment_bytes,
			(double)rep->mem.segment_bytes / 1048576.0);
		fprintf(f, "  worker RSS added by quota_open(): %llu KiB, of which %llu KiB private "
			   "(the rest: segment pages, shared by all); after a first reserve+cancel: %llu KiB\n",
			(unsigned long long)rep->mem.rss_open_bytes / 1024,
			(unsigned long long)rep->mem.private_open_bytes / 1024,
			(unsigned long long)rep->mem.rss_first_reserve_bytes / 1024);
	} else {
		fprintf(f, "  libquota: not measured (%s)\n", strerror(-rep->mem_err));
	}
	fprintf(f, "  mutex baseline table for 10000 quotas: %llu bytes (no client table)\n",
		(unsigned long long)rep->mutex_table_bytes);
	fprintf(f, "\n");
	qb_print_machine(f, &rep->machine);
	fprintf(f, "         redis-server %s\n", rep->machine.redis_version);
}

/* ---- JSON ----------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void json_num(FILE *f, double v)
{
	if (isnan(v) || isinf(v))
		fputs("null", f);
	else
		fprintf(f, "%.6g", v);
}

void qb_print_json(FILE *f, const struct qb_report *rep)
{
	const struct qb_machine *m = &rep->machine;
	fprintf(f, "{\n  \"machine\": {\"cpu\": ");
	json_str(f, m->cpu);
	fprintf(f, ", \"cpus\": %d, \"kernel\": ", m->cpus);
	json_str(f, m->kernel);
	fprintf(f, ", \"clocksource\": ");
	json_str(f, m->clocksource);
	fprintf(f, ", \"loadavg_start\": ");
	json_str(f, m->loadavg);
	fprintf(f, ", \"loadavg_end\": ");
	json_str(f, m->loadavg_end);
	fprintf(f, ", \"date\": ");
	json_str(f, m->date);
	fprintf(f, ", \"compiler\": ");
	json_str(f, m->compiler);
	fprintf(f, ", \"redis_version\": ");
	json_str(f, m->redis_version);
	fprintf(f, ", \"timer_p50_ns\": %llu},\n", (unsigned long long)m->timer_p50_ns);
	fprintf(f, "  \"method\": {\"runs\": %d, \"duration_ms\": %d, \"sample_every\": 64, "
		   "\"sample_every_redis\": 1, \"histogram_bucket_max_rel_width\": 0.0625, "
		   "\"throughput\": \"sum of ops over all processes / (last end - first start)\"},\n",
		rep->runs, rep->duration_ms);
	fprintf(f, "  \"results\": [\n");
	for (int i = 0; i < rep->nresults; i++) {
		const struct qb_result *r = &rep->results[i];
		fprintf(f, "    {\"scenario\": ");
		json_str(f, r->sc->id);
		fprintf(f, ", \"title\": ");
		json_str(f, r->sc->title);
		fprintf(f, ", \"impl\": ");
		json_str(f, r->im->name);
		fprintf(f, ", \"op\": ");
		json_str(f, op_name(r->sc->op));
		fprintf(f, ", \"procs\": %d, \"distinct_quotas\": %s, \"runs\": %d, \"ops_per_s\": [",
			r->sc->procs, r->sc->distinct ? "true" : "false", r->runs);
		for (int k = 0; k < r->runs; k++) {
			if (k)
				fputs(", ", f);
			json_num(f, r->ops_per_s[k]);
		}
		fprintf(f, "], \"median_ops_per_s\": ");
		json_num(f, r->median);
		fprintf(f, ", \"min_ops_per_s\": ");
		json_num(f, r->min);
		fprintf(f, ", \"p50_ns\": %llu, \"p99_ns\": %llu, \"p999_ns\": %llu, \"p9999_ns\": %llu, "
			   "\"samples\": %llu",
			(unsigned long long)r->p50, (unsigned long long)r->p99,
			(unsigned long long)r->p999, (unsigned long long)r->p9999,
			(unsigned long long)r->samples);
		fprintf(f, ", \"retries_per_op\": ");
		json_num(f, r->retries_per_op < 0 ? NAN : r->retries_per_op);
		fprintf(f, ", \"ops\": %llu, \"admitted\": %llu, \"rejected\": %llu, \"errors\": %llu, "
			   "\"error\": %d}%s\n",
			(unsigned long long)r->c.ops, (unsigned long long)r->c.admitted,
			(unsigned long long)r->c.rejected, (unsigned long long)r->c.errors, r->err,
			i + 1 < rep->nresults ? "," : "");
	}
	fprintf(f, "  ],\n  \"targets\": [\n");
	for (int i = 0; i < rep->ntargets; i++) {
		const struct qb_target *t = &rep->targets[i];
		fprintf(f, "    {\"name\": ");
		json_str(f, t->name);
		fprintf(f, ", \"goal\": ");
		json_str(f, t->goal);
		fprintf(f, ", \"value\": ");
		json_num(f, t->value);
		fprintf(f, ", \"reached\": %s, \"detail\": ",
			isnan(t->value) ? "null" : t->value >= t->threshold ? "true" : "false");
		json_str(f, t->detail);
		fprintf(f, "}%s\n", i + 1 < rep->ntargets ? "," : "");
	}
	fprintf(f, "  ],\n  \"memory\": {");
	if (rep->mem_err == 0)
		fprintf(f, "\"libquota_quotas\": %u, \"libquota_clients\": %u, "
			   "\"libquota_segment_bytes\": %llu, \"libquota_rss_open_bytes\": %llu, "
			   "\"libquota_rss_first_reserve_bytes\": %llu, \"libquota_private_open_bytes\": %llu, ",
			rep->mem.quotas, rep->mem.clients, (unsigned long long)rep->mem.segment_bytes,
			(unsigned long long)rep->mem.rss_open_bytes,
			(unsigned long long)rep->mem.rss_first_reserve_bytes,
			(unsigned long long)rep->mem.private_open_bytes);
	fprintf(f, "\"mutex_table_bytes_10000_quotas\": %llu}\n}\n",
		(unsigned long long)rep->mutex_table_bytes);
}

/* ---- Plot ----------------------------------------------------------------- */

static void series(FILE *g, const struct qb_report *rep, const char *im, const char *const *ids,
		   int n)
{
	for (int i = 0; i < n; i++) {
		const struct qb_result *r = find(rep, ids[i], im);
		if (r)
			fprintf(g, "%d %.0f %.0f\n", r->sc->procs, r->median, r->min);
	}
	fprintf(g, "e\n");
}

int qb_plot(const struct qb_report *rep, const char *png)
{
	const char *gp = getenv("QBENCH_GNUPLOT");
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "%s", gp && *gp ? gp : "gnuplot");
	FILE *g = popen(cmd, "w");
	if (!g) {
		qb_warn("cannot run %s", cmd);
		return -1;
	}
	static const char *hot[] = { "hot-1", "hot-2", "hot-4", "hot-8", "hot-16" };
	static const char *dist[] = { "hot-1", "distinct-2", "distinct-4" };
	static const char *flo[] = { "floor", "floor-hot-2", "floor-hot-16" };
	static const char *impl[] = { "libquota", "refcas", "mutex", "redis" };
	fprintf(g, "set terminal pngcairo size 1000,620 font 'sans,10'\nset output '%s'\n", png);
	fprintf(g, "set title \"reserve+commit throughput vs processes, one hot quota (median of %d runs, "
		   "bars: min)\\n%s, %d CPUs, %s, clocksource %s, %s\" noenhanced\n",
		rep->runs, rep->machine.cpu, rep->machine.cpus, rep->machine.kernel,
		rep->machine.clocksource, rep->machine.date);
	fprintf(g, "set xlabel 'processes'\nset ylabel 'operations/s, all processes'\n"
		   "set logscale x 2\nset logscale y 10\nset xrange [0.8:20]\nset grid\n"
		   "set key center right box opaque\nset format y '10^{%%L}'\n");
	fprintf(g, "plot ");
	int first = 1;
	for (int i = 0; i < 4; i++) {
		fprintf(g, "%s'-' using 1:2:3:2 with yerrorlines lw 2 title '%s (hot quota)'",
			first ? "" : ", ", impl[i]);
		first = 0;
	}
	fprintf(g, ", '-' using 1:2 with linespoints dt 2 lw 2 title 'libquota (distinct quotas)'");
	fprintf(g, ", '-' using 1:2 with linespoints pt 7 ps 1.5 dt 3 title 'floor: clock + CAS, one line'\n");
	for (int i = 0; i < 4; i++)
		series(g, rep, impl[i], hot, 5);
	series(g, rep, "libquota", dist, 3);
	series(g, rep, "floor", flo, 3);
	int st = pclose(g);
	if (st != 0) {
		qb_warn("gnuplot failed (status %d)", st);
		return -1;
	}
	return 0;
}
