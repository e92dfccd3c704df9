/* SPDX-License-Identifier: MIT */
/*
 * quotactl.c - watch and steer the budgets of a quota segment. `status`
 * reads the segment directly (read-only, no client slot), so it works while
 * quotad is down: a row per quota with, per limit, capacity, what is
 * available now, in flight, spend this period, admitted and rejected counts.
 * `clients`, `metrics`, `backoff` and `reload` ask quotad over its control
 * socket (one JSON request line, one JSON reply line; see control.c).
 * `proxies` lists the quota-proxy processes serving the segment from the
 * records they keep in /dev/shm (tools/common/proxyreg.h): no daemon needed.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "internal.h"
#include "layout.h"
#include "proxyreg.h"
#include "../quotad/sockpath.h"
#include "top.h"

#define REPLY_MAX (16 << 20)
#define REPLY_TIMEOUT_MS 10000

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

static const char *kind_names[QUOTA_RATE_KINDS] = {
	"rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd",
};
static const char *reason_names[QUOTA_REJECT_REASONS] = {
	"rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd",
	"inflight", "spend", "too_big", "paused",
};

static void usage(FILE *f)
{
	fputs("Usage: quotactl [--segment NAME] [--socket PATH] COMMAND [OPTIONS]\n"
	      "Watch and steer the LLM API budgets that quotad serves (see quotactl(1)).\n"
	      "\n"
	      "Commands:\n"
	      "  status [--json] [--watch [--interval SEC] [--count N]]\n"
	      "                       one row per quota: per limit capacity, available now,\n"
	      "                       in flight, spend, admitted and rejected (reads the segment)\n"
	      "  top [-d SEC] [-c]    live full-screen view: use, rates, refusals, spend, clients\n"
	      "  clients [--json]     attached processes and what each holds (asks quotad)\n"
	      "  proxies [--json]     running quota-proxy processes of the segment: listen\n"
	      "                       address, upstream, requests relayed and refused, in flight\n"
	      "  global [--json]      global limits: mode, grant held, last refresh, live hosts,\n"
	      "                       debt (asks quotad; status shows them too when it answers)\n"
	      "  metrics              Prometheus text exposition (asks quotad)\n"
	      "  backoff QUOTA SEC    pause QUOTA for SEC seconds on every process (root)\n"
	      "  set QUOTA KEY VALUE  change one limit (rpm, tpm, ..., max_inflight, context_window,\n"
	      "                       budget_day_usd, budget_month_usd) until the next reload (root)\n"
	      "  reload               make quotad reload its config (root)\n"
	      "\n"
	      "Options:\n"
	      "  -s, --segment NAME   segment /NAME (default: $QUOTA_SEGMENT, else \"quota\")\n"
	      "  -S, --socket PATH    quotad's control socket (default: $QUOTA_SOCKET, else\n"
	      "                       /run/quotad.sock as root, $XDG_RUNTIME_DIR/quotad.sock)\n"
	      "  -h, --help           show this help\n"
	      "\n"
	      "Exit status: 0 ok, 1 daemon or runtime error, 2 usage error.\n",
	      f);
}

struct daemon_state {
	int pid;
	bool up;
	int64_t heartbeat_age_ns;
};

static struct daemon_state daemon_state(quota_client *c)
{
	struct daemon_state d = { 0 };
	d.pid = atomic_load_explicit(&c->g.h->daemon_pid, memory_order_relaxed);
	int64_t hb = atomic_load_explicit(&c->g.h->heartbeat_ns, memory_order_relaxed);
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	d.heartbeat_age_ns = (int64_t)ts.tv_sec * QC_NS_PER_S + ts.tv_nsec - hb;
	d.up = d.pid > 0 && (kill(d.pid, 0) == 0 || errno == EPERM) &&
	       d.heartbeat_age_ns < 5 * QC_NS_PER_S;
	return d;
}

static double usd(uint64_t nusd)
{
	return (double)nusd / 1e9;
}

static uint64_t total_rejected(const struct quota_info *in)
{
	uint64_t t = 0;
	for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
		t += in->rejected[k];
	return t;
}

/* One line about the segment's running quota-proxy processes, if any. */
static void proxies_line(const char *segment)
{
	struct proxyreg_entry *v = NULL;
	int n = proxyreg_list(segment, &v), alive = 0;
	unsigned long long inflight = 0, waiting = 0;

	for (int i = 0; i < n; i++) {
		if (!v[i].alive)
			continue;
		alive++;
		inflight += atomic_load_explicit(&v[i].r.in_flight, memory_order_relaxed);
		waiting += atomic_load_explicit(&v[i].r.waiting, memory_order_relaxed);
	}
	free(v);
	if (alive)
		printf("quota-proxy: %d process%s, %llu in flight, %llu waiting for budget "
		       "(quotactl proxies)\n", alive, alive > 1 ? "es" : "", inflight, waiting);
}

/* A learned quantile for humans: tokens ("<= 4095"), a ratio ("<= 1.50x",
 * in 1/QS_RATIO_ONE), "not yet" (0) or beyond the last bucket. */
static const char *learned_edge(uint64_t v, bool ratio, char *buf, size_t len)
{
	if (!v)
		snprintf(buf, len, "not yet");
	else if (v == UINT64_MAX)
		snprintf(buf, len, ratio ? ">= 8x" : ">= 131072");
	else if (ratio)
		snprintf(buf, len, "< %.2fx", (double)(v + 1) / QS_RATIO_ONE);
	else
		snprintf(buf, len, "<= %llu", (unsigned long long)v);
	return buf;
}

static int status_text(quota_client *c, const char *segment)
{
	struct daemon_state d = daemon_state(c);
	if (d.up)
		printf("segment /%s: quotad up (pid %d, heartbeat %.1f s ago)\n", segment, d.pid,
		       (double)d.heartbeat_age_ns / 1e9);
	else
		printf("segment /%s: quotad DOWN (workers still enforce the limits)\n", segment);
	proxies_line(segment);
	printf("%-24s %-9s %14s %14s %10s %9s %12s\n", "QUOTA", "LIMIT", "CAPACITY", "AVAILABLE",
	       "IN-FLIGHT", "ADMITTED", "REJECTED");
	int n = quota_count(c);
	for (int id = 0; id < n; id++) {
		struct quota_info in;
		if (quota_info(c, id, &in, sizeof(in)) < 0 || in.removed)
			continue;
		char inflight[32];
		if (in.max_inflight)
			snprintf(inflight, sizeof(inflight), "%llu/%llu", (unsigned long long)in.inflight,
				 (unsigned long long)in.max_inflight);
		else
			snprintf(inflight, sizeof(inflight), "%llu", (unsigned long long)in.inflight);
		printf("%-24s %-9s %14s %14s %10s %9llu %12llu\n", in.name, "", "", "", inflight,
		       (unsigned long long)in.admitted, (unsigned long long)total_rejected(&in));
		for (int k = 0; k < QUOTA_RATE_KINDS; k++) {
			const struct quota_limit_info *l = &in.rate[k];
			if (!l->limit)
				continue;
			printf("%-24s %-9s %14llu %14llu %10s %9s %12llu\n", "", kind_names[k],
			       (unsigned long long)l->capacity, (unsigned long long)l->available, "", "",
			       (unsigned long long)in.rejected[k]);
		}
		printf("%-24s %-9s %14s %14s %10s %9s %12llu\n", "", "inflight",
		       in.max_inflight ? "" : "-", "", "", "", (unsigned long long)in.rejected[QUOTA_REJECT_INFLIGHT]);
		char day[64], month[64];
		snprintf(day, sizeof(day), in.budget_day_nusd ? "$%.6f/$%.2f" : "$%.6f", usd(in.spent_day_nusd),
			 usd(in.budget_day_nusd));
		snprintf(month, sizeof(month), in.budget_month_nusd ? "$%.6f/$%.2f" : "$%.6f",
			 usd(in.spent_month_nusd), usd(in.budget_month_nusd));
		printf("%-24s spend today %s, this month %s; rejected: spend %llu, too big %llu, paused %llu%s\n",
		       "", day, month, (unsigned long long)in.rejected[QUOTA_REJECT_SPEND],
		       (unsigned long long)in.rejected[QUOTA_REJECT_TOO_BIG],
		       (unsigned long long)in.rejected[QUOTA_REJECT_PAUSED], in.paused_ns ? "; PAUSED" : "");
		if (in.learn) {
			/* the upper edges of quota_info's half-octave buckets */
			static const char *const edge[16] = { "<16", "<24", "<32", "<48", "<64", "<96",
				"<128", "<192", "<256", "<384", "<512", "<768", "<1024", "<1536", "<2048",
				">=2048" };
			char sug[48];
			if (in.learned_output == UINT64_MAX)
				snprintf(sug, sizeof(sug), "2048 or more (max_tokens)");
			else
				snprintf(sug, sizeof(sug), in.learned_output ? "%llu" : "not yet (%llu samples)",
					 (unsigned long long)(in.learned_output ? in.learned_output :
							      in.learned_samples));
			printf("%-24s output tokens (live clients):", "");
			for (int b = 0; b < 16; b++)
				if (in.output_hist[b])
					printf(" %s:%llu", edge[b], (unsigned long long)in.output_hist[b]);
			printf("\n%-24s suggested output reservation (p99): %s%s\n", "", sug,
			       in.learn == 2 ? "; auto_estimate on" : "");
			char p50[24], p99[24], r50[24], r99[24];
			printf("%-24s prompt tokens p50 %s, p99 %s; actual/estimated output p50 %s, p99 %s\n", "",
			       learned_edge(in.learned_input_p50, false, p50, sizeof(p50)),
			       learned_edge(in.learned_input_p99, false, p99, sizeof(p99)),
			       learned_edge(in.learned_ratio_p50, true, r50, sizeof(r50)),
			       learned_edge(in.learned_ratio_p99, true, r99, sizeof(r99)));
		}
		if (in.alarm_held_ns || in.alarm_over_pct)
			printf("%-24s alarms: held > %.0f s: %llu, commits > %llu %% of estimate: %llu\n", "",
			       (double)in.alarm_held_ns / 1e9, (unsigned long long)in.alarm_held,
			       (unsigned long long)in.alarm_over_pct, (unsigned long long)in.alarm_over);
		if (in.alarm_held_ns)
			printf("%-24s tickets open longer than %.0f s: %llu%s\n", "", (double)in.alarm_held_ns / 1e9,
			       (unsigned long long)in.held_open, in.held_flips ? "" : " (quotad has not counted yet)");
	}
	return 0;
}

static int status_json(quota_client *c, const char *segment)
{
	struct daemon_state d = daemon_state(c);
	cJSON *root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "segment", segment);
	cJSON *dj = cJSON_AddObjectToObject(root, "daemon");
	cJSON_AddBoolToObject(dj, "up", d.up);
	cJSON_AddNumberToObject(dj, "pid", d.pid);
	cJSON_AddNumberToObject(dj, "heartbeat_age_s", (double)d.heartbeat_age_ns / 1e9);
	cJSON_AddNumberToObject(root, "now_ns", (double)quota_now(c));
	cJSON *arr = cJSON_AddArrayToObject(root, "quotas");
	int n = quota_count(c);
	for (int id = 0; id < n; id++) {
		struct quota_info in;
		if (quota_info(c, id, &in, sizeof(in)) < 0 || in.removed)
			continue;
		cJSON *q = cJSON_CreateObject();
		cJSON_AddItemToArray(arr, q);
		cJSON_AddStringToObject(q, "name", in.name);
		cJSON_AddNumberToObject(q, "id", id);
		cJSON *lims = cJSON_AddObjectToObject(q, "limits");
		for (int k = 0; k < QUOTA_RATE_KINDS; k++) {
			const struct quota_limit_info *l = &in.rate[k];
			if (!l->limit)
				continue;
			cJSON *lj = cJSON_AddObjectToObject(lims, kind_names[k]);
			cJSON_AddNumberToObject(lj, "limit", (double)l->limit);
			cJSON_AddNumberToObject(lj, "period_s", (double)l->period_ns / 1e9);
			cJSON_AddNumberToObject(lj, "capacity", (double)l->capacity);
			cJSON_AddNumberToObject(lj, "available", (double)l->available);
			cJSON_AddNumberToObject(lj, "rejected", (double)in.rejected[k]);
		}
		cJSON_AddNumberToObject(q, "inflight", (double)in.inflight);
		cJSON_AddNumberToObject(q, "max_inflight", (double)in.max_inflight);
		cJSON_AddNumberToObject(q, "context_window", (double)in.context_window);
		cJSON *sp = cJSON_AddObjectToObject(q, "spend_usd");
		cJSON_AddNumberToObject(sp, "day", usd(in.spent_day_nusd));
		cJSON_AddNumberToObject(sp, "month", usd(in.spent_month_nusd));
		cJSON_AddNumberToObject(sp, "budget_day", usd(in.budget_day_nusd));
		cJSON_AddNumberToObject(sp, "budget_month", usd(in.budget_month_nusd));
		cJSON_AddNumberToObject(q, "admitted", (double)in.admitted);
		cJSON_AddNumberToObject(q, "admitted_input_tokens", (double)in.admitted_input_tokens);
		cJSON_AddNumberToObject(q, "admitted_output_tokens", (double)in.admitted_output_tokens);
		cJSON *rj = cJSON_AddObjectToObject(q, "rejected");
		for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
			cJSON_AddNumberToObject(rj, reason_names[k], (double)in.rejected[k]);
		cJSON_AddNumberToObject(q, "reclaimed", (double)in.reclaimed);
		cJSON_AddNumberToObject(q, "repaired", (double)in.repaired);
		cJSON_AddNumberToObject(q, "generation", (double)in.generation);
		cJSON_AddNumberToObject(q, "paused_s", (double)in.paused_ns / 1e9);
		cJSON_AddBoolToObject(q, "refund_actual", in.refund_actual);
		cJSON_AddNumberToObject(q, "lanes", in.lanes);
		if (in.learn) {
			cJSON *lj = cJSON_AddObjectToObject(q, "learning");
			cJSON_AddBoolToObject(lj, "auto_estimate", in.learn == 2);
			cJSON_AddNumberToObject(lj, "suggested_output_tokens", (double)in.learned_output);
			cJSON_AddNumberToObject(lj, "samples", (double)in.learned_samples);
			const uint64_t *hists[3] = { in.output_hist, in.input_hist, in.ratio_hist };
			static const char *const hist_names[3] = { "output_hist", "input_hist", "ratio_hist" };
			for (int i = 0; i < 3; i++) {
				cJSON *h = cJSON_AddArrayToObject(lj, hist_names[i]);
				for (int b = 0; b < 16; b++)
					cJSON_AddItemToArray(h, cJSON_CreateNumber((double)hists[i][b]));
			}
			/* edges as quota_info gives them: 0 not yet, -1 beyond the last bucket */
			const uint64_t edges[4] = { in.learned_input_p50, in.learned_input_p99,
						    in.learned_ratio_p50, in.learned_ratio_p99 };
			static const char *const edge_names[4] = { "input_tokens_p50", "input_tokens_p99",
								   "output_ratio_p50_x256", "output_ratio_p99_x256" };
			for (int i = 0; i < 4; i++)
				cJSON_AddNumberToObject(lj, edge_names[i], edges[i] == UINT64_MAX ? -1 : (double)edges[i]);
		}
		cJSON *aj = cJSON_AddObjectToObject(q, "alarms");
		cJSON_AddNumberToObject(aj, "held", (double)in.alarm_held);
		cJSON_AddNumberToObject(aj, "over_estimate", (double)in.alarm_over);
		cJSON_AddNumberToObject(aj, "held_open", (double)in.held_open);
		cJSON_AddNumberToObject(aj, "held_flips", (double)in.held_flips);
	}
	char *s = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!s)
		return EXIT_RUNTIME;
	puts(s);
	free(s);
	return 0;
}

/* ---- the control socket --------------------------------------------- */

static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

/* Send @req (one JSON object) and return quotad's reply if it says ok;
 * otherwise print why and return NULL. */
static bool quiet_unreachable; /* status: a quotad that is not there is no error */

static cJSON *ask(const char *req)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, socket_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		if (!quiet_unreachable)
			fprintf(stderr, "quotactl: cannot reach quotad at %s: %s\n", socket_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	size_t len = strlen(req);
	if (send(fd, req, len, MSG_NOSIGNAL) != (ssize_t)len || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
		fprintf(stderr, "quotactl: %s: %s\n", socket_path, strerror(errno));
		close(fd);
		return NULL;
	}
	size_t cap = 65536, got = 0;
	char *buf = malloc(cap);
	const char *why = NULL;
	while (buf && !why) {
		struct pollfd p = { fd, POLLIN, 0 };
		int r = poll(&p, 1, REPLY_TIMEOUT_MS);
		if (r == 0) {
			why = "no reply within 10 s";
			break;
		}
		if (got + 1 == cap) {
			char *nb = cap < REPLY_MAX ? realloc(buf, cap * 2) : NULL;
			if (!nb) {
				why = "reply too large";
				break;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t n = r < 0 ? -1 : recv(fd, buf + got, cap - got - 1, 0);
		if (n <= 0) {
			why = n == 0 ? "connection closed before a reply" : strerror(errno);
			break;
		}
		got += (size_t)n;
		if (memchr(buf + got - n, '\n', (size_t)n))
			break;
	}
	close(fd);
	if (!buf || why) {
		fprintf(stderr, "quotactl: %s: %s\n", socket_path, buf ? why : "out of memory");
		free(buf);
		return NULL;
	}
	cJSON *reply = cJSON_ParseWithLength(buf, got);
	free(buf);
	if (!cJSON_IsObject(reply)) {
		fprintf(stderr, "quotactl: %s: malformed reply\n", socket_path);
		cJSON_Delete(reply);
		return NULL;
	}
	if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(reply, "error");
		fprintf(stderr, "quotactl: quotad: %s\n", cJSON_IsString(e) ? e->valuestring : "request failed");
		cJSON_Delete(reply);
		return NULL;
	}
	return reply;
}

static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static int cmd_clients(bool json)
{
	cJSON *r = ask("{\"cmd\":\"clients\"}");
	if (!r)
		return EXIT_RUNTIME;
	if (json) {
		char *s = cJSON_PrintUnformatted(r);
		if (s)
			puts(s);
		free(s);
		cJSON_Delete(r);
		return 0;
	}
	printf("%-5s %-8s %-10s %5s %9s  %s\n", "SLOT", "PID", "STATE", "GEN", "IN-FLIGHT",
	       "QUOTAS (in flight/admitted/rejected)");
	const cJSON *c;
	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(r, "clients")) {
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(c, "state");
		printf("%-5.0f %-8.0f %-10s %5.0f %9.0f ", num(c, "slot"), num(c, "pid"),
		       cJSON_IsString(st) ? st->valuestring : "?", num(c, "generation"), num(c, "inflight"));
		const cJSON *q;
		cJSON_ArrayForEach(q, cJSON_GetObjectItemCaseSensitive(c, "quotas")) {
			const cJSON *name = cJSON_GetObjectItemCaseSensitive(q, "quota");
			printf(" %s:%.0f/%.0f/%.0f", cJSON_IsString(name) ? name->valuestring : "?",
			       num(q, "inflight"), num(q, "admitted"), num(q, "rejected"));
			if (num(q, "alarm_held") || num(q, "alarm_over_estimate") || num(q, "held_open"))
				printf(" [alarms: held %.0f, over estimate %.0f; open longer than held_s %.0f]",
				       num(q, "alarm_held"), num(q, "alarm_over_estimate"), num(q, "held_open"));
		}
		putchar('\n');
	}
	cJSON_Delete(r);
	return 0;
}

/* The global limits (quotad's memory, so asked through the socket). */
static int print_global(const cJSON *r)
{
	const cJSON *g = cJSON_GetObjectItemCaseSensitive(r, "global");
	if (!cJSON_IsObject(g))
		return 0;
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(g, "host_id");
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(g, "last_error");
	printf("\nglobal limits (Redis %s, host %s, %s)%s%s\n",
	       cJSON_IsString(cJSON_GetObjectItemCaseSensitive(g, "redis")) ?
		       cJSON_GetObjectItemCaseSensitive(g, "redis")->valuestring : "?",
	       cJSON_IsString(id) ? id->valuestring : "?",
	       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(g, "connected")) ? "connected" : "NOT connected",
	       cJSON_IsString(err) && *err->valuestring ? ", last error: " : "",
	       cJSON_IsString(err) ? err->valuestring : "");
	/* A global max_inflight (limit "inflight"): HELD is its slots held,
	 * STOCK the free slots, IN_USE what its workers hold. A budget
	 * (usd_day, usd_month): USD, STOCK what the fleet has left. */
	printf("%-20s %-9s %-20s %10s %8s %10s %8s %6s %8s %10s %6s\n", "QUOTA", "LIMIT", "MODE", "GLOBAL",
	       "HELD", "REFRESH_MS", "HOSTS", "DEBT", "STOCK", "GRANTED", "IN_USE");
	const cJSON *l;
	cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(g, "limits")) {
		const cJSON *q = cJSON_GetObjectItemCaseSensitive(l, "quota");
		const cJSON *k = cJSON_GetObjectItemCaseSensitive(l, "limit");
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(l, "mode");
		bool slots = cJSON_GetObjectItemCaseSensitive(l, "slots_held") != NULL;
		bool usd = cJSON_GetObjectItemCaseSensitive(l, "held_usd") != NULL;
		char in_use[24] = "-";
		if (slots)
			snprintf(in_use, sizeof(in_use), "%.0f", num(l, "slots_in_use"));
		/* Spend limits in USD, with cents; the others in units. */
		int dp = usd ? 2 : 0;
		printf("%-20s %-9s %-20s %10.*f %8.*f %10.0f %8.0f %6.*f %8.*f %10.*f %6s\n",
		       cJSON_IsString(q) ? q->valuestring : "?", cJSON_IsString(k) ? k->valuestring : "?",
		       cJSON_IsString(m) ? m->valuestring : "?", dp, num(l, "global_limit") / (usd ? 1e9 : 1),
		       dp, num(l, slots ? "slots_held" : usd ? "held_usd" : "held"), num(l, "last_refresh_ms"),
		       num(l, "live_hosts"), dp, num(l, usd ? "debt_usd" : "debt"),
		       dp, num(l, slots ? "slots_free" : usd ? "left_usd" : "stock"),
		       dp, num(l, usd ? "granted_total_usd" : "granted_total"), in_use);
	}
	return 0;
}

static int cmd_global(bool json)
{
	cJSON *r = ask("{\"cmd\":\"status\"}");
	if (!r)
		return EXIT_RUNTIME;
	if (json) {
		const cJSON *g = cJSON_GetObjectItemCaseSensitive(r, "global");
		char *s = g ? cJSON_PrintUnformatted(g) : NULL;
		puts(s ? s : "null");
		free(s);
	} else if (!cJSON_GetObjectItemCaseSensitive(r, "global")) {
		puts("no global quota");
	} else {
		print_global(r);
	}
	cJSON_Delete(r);
	return 0;
}

static int cmd_metrics(void)
{
	cJSON *r = ask("{\"cmd\":\"metrics\"}");
	if (!r)
		return EXIT_RUNTIME;
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(r, "text");
	if (cJSON_IsString(t))
		fputs(t->valuestring, stdout);
	cJSON_Delete(r);
	return cJSON_IsString(t) ? 0 : EXIT_RUNTIME;
}

static int cmd_backoff(const char *quota, double seconds)
{
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "cmd", "backoff");
	cJSON_AddStringToObject(req, "quota", quota);
	cJSON_AddNumberToObject(req, "seconds", seconds);
	char *s = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	cJSON *r = s ? ask(s) : NULL;
	free(s);
	if (!r)
		return EXIT_RUNTIME;
	printf("quota %s paused for %g s on every process\n", quota, seconds);
	cJSON_Delete(r);
	return 0;
}

static int cmd_set(const char *quota, const char *key, double value)
{
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "cmd", "set");
	cJSON_AddStringToObject(req, "quota", quota);
	cJSON_AddStringToObject(req, "key", key);
	cJSON_AddNumberToObject(req, "value", value);
	char *s = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	cJSON *r = s ? ask(s) : NULL;
	free(s);
	if (!r)
		return EXIT_RUNTIME;
	printf("quota %s: %s = %g (until the next reload)\n", quota, key, value);
	cJSON_Delete(r);
	return 0;
}

static int cmd_reload(void)
{
	cJSON *r = ask("{\"cmd\":\"reload\"}");
	if (!r)
		return EXIT_RUNTIME;
	printf("config reloaded (generation %.0f)\n", num(r, "generation"));
	cJSON_Delete(r);
	return 0;
}

static int parse_positive(const char *what, const char *s, double max, double *ret)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > max) {
		fprintf(stderr, "quotactl: %s: expected a number in (0, %g], got '%s'\n", what, max, s);
		return -EINVAL;
	}
	*ret = v;
	return 0;
}

static int cmd_status(const char *segment, int argc, char **argv)
{
	bool json = false, watch = false;
	double interval = 1;
	long count = -1;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0) {
			json = true;
		} else if (strcmp(argv[i], "--watch") == 0) {
			watch = true;
		} else if ((strcmp(argv[i], "--interval") == 0 || strcmp(argv[i], "--count") == 0) &&
			   i + 1 < argc) {
			double v;
			if (parse_positive(argv[i], argv[i + 1], 86400, &v) < 0)
				return EXIT_USAGE;
			if (argv[i][2] == 'i')
				interval = v;
			else
				count = (long)v;
			i++;
		} else {
			fprintf(stderr, "quotactl status: unknown option or missing value: %s\n", argv[i]);
			return EXIT_USAGE;
		}
	}
	if (!watch)
		count = 1;
	bool tty = isatty(STDOUT_FILENO);
	for (long n = 0; count < 0 || n < count; n++) {
		if (n > 0) {
			struct timespec ts = { (time_t)interval, (long)((interval - (double)(time_t)interval) * 1e9) };
			nanosleep(&ts, NULL);
		}
		/* Attach afresh each time: quotad may have been restarted. */
		quota_client *c;
		int r = qc_open_observer(segment, &c);
		if (r < 0) {
			fprintf(stderr, "quotactl: segment /%s: %s\n", segment, quota_strerror(r));
			return EXIT_RUNTIME;
		}
		if (watch && !json)
			fputs(tty ? "\033[H\033[2J" : "\n", stdout);
		r = json ? status_json(c, segment) : status_text(c, segment);
		quota_close(c);
		/* The global limits live in quotad: shown when it answers. */
		if (!json && r == 0 && (socket_path[0] ||
					qd_default_socket_path(socket_path, sizeof(socket_path)) == 0)) {
			quiet_unreachable = true;
			cJSON *st = ask("{\"cmd\":\"status\"}");
			quiet_unreachable = false;
			if (st)
				print_global(st);
			cJSON_Delete(st);
		}
		fflush(stdout);
		if (r)
			return r;
	}
	return 0;
}

/* `proxies`: the quota-proxy processes registered on @segment. */
static int cmd_proxies(const char *segment, bool json)
{
	struct proxyreg_entry *v = NULL;
	int n = proxyreg_list(segment, &v);

	if (n < 0) {
		fprintf(stderr, "quotactl proxies: %s\n", strerror(-n));
		return EXIT_RUNTIME;
	}
	if (json) {
		cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "proxies");
		char *text;

		cJSON_AddStringToObject(root, "segment", segment);
		for (int i = 0; i < n; i++) {
			const struct proxyreg *r = &v[i].r;
			cJSON *o = cJSON_CreateObject();

			cJSON_AddNumberToObject(o, "pid", (double)r->pid);
			cJSON_AddBoolToObject(o, "alive", v[i].alive);
			cJSON_AddStringToObject(o, "listen", r->listen);
			cJSON_AddStringToObject(o, "upstream", r->upstream);
			cJSON_AddNumberToObject(o, "workers", r->workers);
			cJSON_AddNumberToObject(o, "started_unix", (double)r->started_unix);
#define NUM(f) cJSON_AddNumberToObject(o, #f, (double)atomic_load_explicit(&r->f, memory_order_relaxed))
			NUM(requests);
			NUM(relayed);
			NUM(refused);
			NUM(bad);
			NUM(upstream_429);
			NUM(upstream_failed);
			NUM(in_flight);
			NUM(waiting);
			NUM(connections);
#undef NUM
			cJSON_AddItemToArray(arr, o);
		}
		text = cJSON_PrintUnformatted(root);
		cJSON_Delete(root);
		if (text)
			puts(text);
		free(text);
		free(v);
		return text ? 0 : EXIT_RUNTIME;
	}
	if (!n)
		printf("no quota-proxy registered on segment %s\n", segment);
	else
		printf("%-8s %-21s %-30s %9s %9s %8s %6s %8s %8s %8s %5s\n", "PID", "LISTEN", "UPSTREAM",
		       "REQUESTS", "RELAYED", "REFUSED", "BAD", "UP-429", "UP-FAIL", "INFLIGHT", "WAIT");
	for (int i = 0; i < n; i++) {
		const struct proxyreg *r = &v[i].r;
#define GET(f) (unsigned long long)atomic_load_explicit(&r->f, memory_order_relaxed)
		printf("%-8lld %-21s %-30s %9llu %9llu %8llu %6llu %8llu %8llu %8llu %5llu%s\n",
		       (long long)r->pid, r->listen, r->upstream, GET(requests), GET(relayed),
		       GET(refused), GET(bad), GET(upstream_429), GET(upstream_failed), GET(in_flight),
		       GET(waiting), v[i].alive ? "" : "  (gone: stale record)");
#undef GET
	}
	free(v);
	return 0;
}

/* The options before the command: --segment into @segment (else
 * $QUOTA_SEGMENT, else "quota"), --socket into socket_path. -1 to go on, with
 * the command at argv[optind], else the exit status. */
static int parse_global_options(int argc, char **argv, const char **segment)
{
	static const struct option opts[] = {
		{ "segment", required_argument, NULL, 's' },
		{ "socket", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o;
	/* '+': stop at the command; its own options follow it. */
	while ((o = getopt_long(argc, argv, "+s:S:h", opts, NULL)) != -1) {
		switch (o) {
		case 's': *segment = optarg; break;
		case 'S':
			if (!*optarg || strlen(optarg) >= sizeof(socket_path)) {
				fprintf(stderr, "quotactl: --socket: 1 to %zu characters\n", sizeof(socket_path) - 1);
				return EXIT_USAGE;
			}
			strcpy(socket_path, optarg);
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!*segment) {
		*segment = getenv("QUOTA_SEGMENT");
		if (!*segment || !**segment)
			*segment = "quota";
	}
	return -1;
}

/* The arguments of `@cmd [--json]`: 1 with --json, 0 without, -1 after a
 * usage message for anything else. */
static int json_flag(const char *cmd, int nargs, char **args)
{
	bool json = nargs == 1 && strcmp(args[0], "--json") == 0;
	if (nargs > 1 || (nargs == 1 && !json)) {
		fprintf(stderr, "quotactl %s: usage: %s [--json]\n", cmd, cmd);
		return -1;
	}
	return json;
}

/* `backoff QUOTA SECONDS`. */
static int run_backoff(int nargs, char **args)
{
	double secs;
	if (nargs != 2) {
		fprintf(stderr, "quotactl backoff: usage: backoff QUOTA SECONDS\n");
		return EXIT_USAGE;
	}
	if (parse_positive("backoff SECONDS", args[1], 86400, &secs) < 0)
		return EXIT_USAGE;
	return cmd_backoff(args[0], secs);
}

/* `set QUOTA KEY VALUE`. */
static int run_set(int nargs, char **args)
{
	if (nargs != 3) {
		fprintf(stderr, "quotactl set: usage: set QUOTA KEY VALUE\n");
		return EXIT_USAGE;
	}
	char *end;
	errno = 0;
	double v = strtod(args[2], &end);
	if (errno || end == args[2] || *end || !isfinite(v) || v < 0) {
		fprintf(stderr, "quotactl set: VALUE must be a non-negative number, got '%s'\n",
			args[2]);
		return EXIT_USAGE;
	}
	return cmd_set(args[0], args[1], v);
}

/* The commands that ask quotad over its control socket (socket_path). */
static int run_socket_command(const char *cmd, int nargs, char **args)
{
	int json;
	if (strcmp(cmd, "clients") == 0)
		return (json = json_flag(cmd, nargs, args)) < 0 ? EXIT_USAGE : cmd_clients(json);
	if (strcmp(cmd, "global") == 0)
		return (json = json_flag(cmd, nargs, args)) < 0 ? EXIT_USAGE : cmd_global(json);
	if (strcmp(cmd, "metrics") == 0 || strcmp(cmd, "reload") == 0) {
		if (nargs) {
			fprintf(stderr, "quotactl %s: takes no arguments\n", cmd);
			return EXIT_USAGE;
		}
		return cmd[0] == 'm' ? cmd_metrics() : cmd_reload();
	}
	if (strcmp(cmd, "backoff") == 0)
		return run_backoff(nargs, args);
	if (strcmp(cmd, "set") == 0)
		return run_set(nargs, args);
	fprintf(stderr, "quotactl: unknown command '%s'\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}

int main(int argc, char **argv)
{
	const char *segment = NULL;
	int r = parse_global_options(argc, argv, &segment);
	if (r >= 0)
		return r;
	const char *cmd = argv[optind++];
	int nargs = argc - optind, json;
	/* The commands that read the segment need no socket. */
	if (strcmp(cmd, "status") == 0)
		return cmd_status(segment, nargs, argv + optind);
	if (strcmp(cmd, "proxies") == 0)
		return (json = json_flag(cmd, nargs, argv + optind)) < 0 ? EXIT_USAGE
									 : cmd_proxies(segment, json);
	if (strcmp(cmd, "top") == 0) /* its argv[0] is "top" */
		return quotactl_top(segment, socket_path, nargs + 1, argv + optind - 1);
	if (strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (!socket_path[0] && qd_default_socket_path(socket_path, sizeof(socket_path)) < 0) {
		fprintf(stderr, "quotactl: no control socket: give --socket PATH or set $QUOTA_SOCKET\n");
		return EXIT_USAGE;
	}
	return run_socket_command(cmd, nargs, argv + optind);
}
