/* SPDX-License-Identifier: MIT */
/*
 * quotactl.c - watch and steer the budgets of a quota segment. `status`
 * reads the segment directly (read-only, no client slot): a row per quota
 * with, per limit, capacity, what is available now, in flight, spend this
 * period, admitted and rejected counts.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "internal.h"
#include "layout.h"

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
	fputs("Usage: quotactl [--segment NAME] COMMAND [OPTIONS]\n"
	      "Watch and steer the LLM API budgets that quotad serves (see quotactl(1)).\n"
	      "\n"
	      "Commands:\n"
	      "  status [--json]     one row per quota: per limit capacity, available now,\n"
	      "                      in flight, spend this period, admitted and rejected\n"
	      "\n"
	      "Options:\n"
	      "  -s, --segment NAME  segment /NAME (default: $QUOTA_SEGMENT, else \"quota\")\n"
	      "  -h, --help          show this help\n"
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
	d.pid = atomic_load_explicit(&c->h->daemon_pid, memory_order_relaxed);
	int64_t hb = atomic_load_explicit(&c->h->heartbeat_ns, memory_order_relaxed);
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

static int status_text(quota_client *c, const char *segment)
{
	struct daemon_state d = daemon_state(c);
	if (d.up)
		printf("segment /%s: quotad up (pid %d, heartbeat %.1f s ago)\n", segment, d.pid,
		       (double)d.heartbeat_age_ns / 1e9);
	else
		printf("segment /%s: quotad DOWN (workers still enforce the limits)\n", segment);
	printf("%-24s %-9s %14s %14s %10s %9s %12s\n", "QUOTA", "LIMIT", "CAPACITY", "AVAILABLE",
	       "IN-FLIGHT", "ADMITTED", "REJECTED");
	int n = quota_count(c);
	for (int id = 0; id < n; id++) {
		struct quota_info in;
		if (quota_info(c, id, &in) < 0 || in.removed)
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
		if (quota_info(c, id, &in) < 0 || in.removed)
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
		cJSON_AddNumberToObject(q, "paused_s", (double)in.paused_ns / 1e9);
		cJSON_AddBoolToObject(q, "refund_actual", in.refund_actual);
	}
	char *s = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!s)
		return EXIT_RUNTIME;
	puts(s);
	free(s);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "segment", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *segment = NULL;
	int o;
	/* '+': stop at the command; its own options follow it. */
	while ((o = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
		switch (o) {
		case 's': segment = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[optind++];
	if (!segment) {
		segment = getenv("QUOTA_SEGMENT");
		if (!segment || !*segment)
			segment = "quota";
	}
	if (strcmp(cmd, "status") == 0) {
		bool json = false;
		for (; optind < argc; optind++) {
			if (strcmp(argv[optind], "--json") == 0) {
				json = true;
			} else {
				fprintf(stderr, "quotactl status: unknown option %s\n", argv[optind]);
				return EXIT_USAGE;
			}
		}
		quota_client *c;
		int r = qc_open_observer(segment, &c);
		if (r < 0) {
			fprintf(stderr, "quotactl: segment /%s: %s\n", segment, quota_strerror(r));
			return EXIT_RUNTIME;
		}
		r = json ? status_json(c, segment) : status_text(c, segment);
		quota_close(c);
		return r;
	}
	if (strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "quotactl: unknown command '%s'\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}
