/* SPDX-License-Identifier: MIT */
/*
 * config.h - quotad's configuration: parsed and validated completely into a
 * plain struct before anything live is touched, then written into a segment.
 */
#ifndef QUOTAD_CONFIG_H
#define QUOTAD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quota.h"

#define QD_SEGMENT_NAME_MAX 250
#define QD_DEFAULT_MAX_QUOTAS 64
#define QD_DEFAULT_MAX_CLIENTS 256
#define QD_GLOBAL_KEY_MAX 100
#define QD_REDIS_STR_MAX 127
#define QD_SENTINELS_MAX 8
#define QD_EXPECTED_HOSTS_MAX 4096
/* Half of it outlasts a 10-minute request (quota-proxy's and the OpenAI
 * SDKs' default timeout) with 5 minutes to spare. */
#define QD_INFLIGHT_LEASE_DEFAULT_S 1800
#define QD_INFLIGHT_LEASE_MIN_S 2       /* its first half outlasts the 1 s outage timer */
#define QD_INFLIGHT_LEASE_MAX_S 604800

/* What a global quota's host admits while Redis cannot be reached (global.c). */
enum qd_outage {
	QD_OUTAGE_STATIC_SHARE = 1, /* its static share: limit / expected_hosts */
	QD_OUTAGE_FAIL_CLOSED,      /* nothing beyond the grant it holds */
};

struct qd_quota {
	char name[QUOTA_NAME_MAX + 1];
	uint64_t rate[QUOTA_RATE_KINDS]; /* by enum quota_limit_kind; 0 = none */
	uint64_t max_inflight;
	uint64_t context_window;
	uint32_t burst_ppm;              /* burst in millionths, (0, 1e6] */
	bool refund_actual;
	uint64_t price_in_pusd, price_out_pusd;       /* pico-USD per token */
	uint64_t budget_day_nusd, budget_month_nusd;  /* nano-USD; 0 = none */
	/* "scope": "global" (global.c): the rate limits are shared through Redis. */
	bool global;
	char global_key[QD_GLOBAL_KEY_MAX + 1]; /* default: the quota's name */
	uint32_t outage;                         /* enum qd_outage */
	uint32_t expected_hosts;                 /* required when global */
	uint64_t inflight_lease_ns;              /* global max_inflight: slot lease (global.c) */
	bool learn, auto_estimate;       /* learning (auto_estimate implies learn) */
	uint64_t alarm_held_ns;          /* 0 = off */
	uint32_t alarm_over_pct;         /* 0 = off */
	uint32_t nlanes;                 /* 0 = no lanes; else 2..4, highest first */
	struct {
		char name[16];
		uint32_t headroom_ppm;   /* kept free by the lanes below this one */
	} lanes[4];
};

/* The top-level "redis" section (global.c). */
struct qd_redis {
	bool enabled;
	char url[QD_REDIS_STR_MAX + 1];          /* as written, for messages */
	char host[QD_REDIS_STR_MAX + 1];         /* TCP, or "" */
	uint32_t port;
	char unix_path[108];                     /* unix socket, or "" */
	uint32_t nsentinels;
	char sentinels[QD_SENTINELS_MAX][QD_REDIS_STR_MAX + 1]; /* "HOST:PORT" */
	char master[QD_REDIS_STR_MAX + 1];
	char host_id[QD_REDIS_STR_MAX + 1];      /* default: hostname/segment */
};

struct qd_config {
	char segment[QD_SEGMENT_NAME_MAX + 1];
	bool manual_clock;
	uint32_t max_quotas, max_clients; /* the segment's capacity */
	uint32_t nquotas;
	struct qd_quota *quotas;
	struct qd_redis redis;
};

/* The embedded default: Llama 4 Scout's published limits and prices. */
extern const char qd_default_config[];

/*
 * Parse and validate @len bytes of JSON. @file names the source in messages.
 * Returns 0, or -EINVAL with a message "FILE: KEY.PATH: reason" in @err.
 */
int qd_config_parse(const char *text, size_t len, const char *file, struct qd_config *cfg,
		    char *err, size_t errlen);

/* Read and parse a file (at most 1 MiB). */
int qd_config_load(const char *path, struct qd_config *cfg, char *err, size_t errlen);

void qd_config_free(struct qd_config *cfg);

/* The rate of kind @kind in quota @qc's local record: the limit, or for a
 * global quota its static share limit / expected_hosts (at least 1). */
uint64_t qd_local_rate(const struct qd_quota *qc, uint32_t kind);

/* A budget's amount in quota @qc's local record: the budget, or for a
 * global quota its local cap budget / (4 expected_hosts) (at least 1). */
uint64_t qd_local_budget(const struct qd_quota *qc, uint64_t budget_nusd);

struct qs_config;
/* The record content of quota @qc as id @id: 0, or -EINVAL / -ERANGE for
 * limits out of the arithmetic's range. */
int qd_quota_config(const struct qd_quota *qc, uint32_t id, struct qs_config *out);

/*
 * Create the shm object "/@name" (O_CREAT|O_EXCL, mode 0660) sized for @cfg,
 * format it, write every quota, publish READY. Returns 0 with the mapping in
 * @ret_base and @ret_size, or a negative errno with a message in @err.
 */
int qd_segment_create(const struct qd_config *cfg, const char *name, void **ret_base,
		      uint64_t *ret_size, char *err, size_t errlen);

/* For tests and benchmarks: parse @json, create segment @segment_name ready
 * to use, unmap it. The caller removes it with shm_unlink("/NAME"). */
int qd_create_segment_json(const char *json, const char *segment_name, char *err, size_t errlen);

#endif /* QUOTAD_CONFIG_H */
