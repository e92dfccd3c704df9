/* SPDX-License-Identifier: MIT */
/*
 * test_ledger.c - the spend ledger (--state-dir): spend survives a restart
 * that lost the segment (as a reboot does), and a restart that kept it
 * counts nothing twice.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ctllib.h"

/* $1000 per million tokens: 1000 input tokens cost exactly $1. */
#define CONFIG "{\"quotas\": {\"q\": {\"rpm\": 1000, \"price_per_mtok\": {\"input\": 1000, \"output\": 1000}, " \
	"\"budget_usd\": {\"day\": 100, \"month\": 1000}}}}"
#define USD 1000000000ULL

static void spend_one_dollar(const char *seg)
{
	quota_client *c = cl_open(seg);
	int id = quota_find(c, "q");
	struct quota_ticket t;
	struct quota_cost cost = { 1, 1000, 0 };
	cr_assert_eq(quota_reserve(c, id, &cost, 0, &t), 0);
	cr_assert_eq(quota_commit(c, &t, &cost), 0);
	quota_close(c);
}

static void expect_spent(const char *seg, uint64_t nusd)
{
	quota_client *c = cl_open(seg);
	struct quota_info in;
	cr_assert_eq(quota_info(c, quota_find(c, "q"), &in, sizeof(in)), 0);
	cr_assert_eq(in.spent_day_nusd, nusd, "day: %llu", (unsigned long long)in.spent_day_nusd);
	cr_assert_eq(in.spent_month_nusd, nusd, "month: %llu", (unsigned long long)in.spent_month_nusd);
	quota_close(c);
}

Test(ledger, spend_survives_restart_and_reboot)
{
	struct cl_env e;
	cl_env(&e, "lg");
	const char *cfg = cl_file(&e, "q.json", CONFIG);
	char state[160], ledger[400], shm[160];
	snprintf(state, sizeof(state), "%s/state", e.dir);
	snprintf(ledger, sizeof(ledger), "%s/%s.ledger", state, e.seg);
	snprintf(shm, sizeof(shm), "/dev/shm/%s", e.seg);

	/* "Reboot": the segment is gone, only the ledger is left. */
	pid_t qd = cl_quotad(&e, cfg, "--state-dir", state, "--remove-on-exit", NULL);
	spend_one_dollar(e.seg);
	expect_spent(e.seg, USD);
	cr_assert_eq(cl_stop(qd, SIGTERM), 0);
	cr_assert_neq(access(shm, F_OK), 0, "segment removed");
	cr_assert_eq(access(ledger, R_OK), 0, "ledger written at stop");
	qd = cl_quotad(&e, cfg, "--state-dir", state, NULL);
	expect_spent(e.seg, USD);

	/* Killed: the segment survives and already holds the spend; the
	 * ledger's older figure must not be added on top. */
	spend_one_dollar(e.seg);
	cl_stop(qd, SIGKILL);
	qd = cl_quotad(&e, cfg, "--state-dir", state, "--remove-on-exit", NULL);
	expect_spent(e.seg, 2 * USD);
	cr_assert_eq(cl_stop(qd, SIGTERM), 0);
	qd = cl_quotad(&e, cfg, "--state-dir", state, "--remove-on-exit", NULL);
	expect_spent(e.seg, 2 * USD);
	cr_assert_eq(cl_stop(qd, SIGTERM), 0);
}

/* The periodic write (through the io_uring loop): quotad killed and the
 * segment lost right after, as in a power cut, still restores the spend. */
Test(ledger, periodic_write_survives_a_crash, .timeout = 60)
{
	struct cl_env e;
	cl_env(&e, "lc");
	const char *cfg = cl_file(&e, "q.json", CONFIG);
	char state[160], ledger[400], shm[200];
	snprintf(state, sizeof(state), "%s/state", e.dir);
	snprintf(ledger, sizeof(ledger), "%s/%s.ledger", state, e.seg);
	snprintf(shm, sizeof(shm), "/%s", e.seg);
	pid_t qd = cl_quotad(&e, cfg, "--state-dir", state, NULL);
	spend_one_dollar(e.seg);
	/* Written within one ledger period (5 s): watch the file. */
	for (int64_t t0 = cl_now();;) {
		char buf[4096] = { 0 };
		FILE *f = fopen(ledger, "r");
		if (f) {
			size_t n = fread(buf, 1, sizeof(buf) - 1, f);
			buf[n] = '\0';
			fclose(f);
		}
		if (strstr(buf, "1000000000"))
			break;
		cr_assert_lt(cl_now() - t0, 12 * CL_S, "the ledger was not written: %s", buf);
		nanosleep(&(struct timespec){ 0, 50 * CL_MS }, NULL); /* polling a file */
	}
	cl_stop(qd, SIGKILL);
	cr_assert_eq(shm_unlink(shm), 0); /* the "reboot" */
	qd = cl_quotad(&e, cfg, "--state-dir", state, "--remove-on-exit", NULL);
	expect_spent(e.seg, USD);
	cr_assert_eq(cl_stop(qd, SIGTERM), 0);
}
