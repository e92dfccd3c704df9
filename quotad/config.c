/* SPDX-License-Identifier: MIT */
/*
 * config.c - quotad's JSON configuration (cJSON): strict parsing into
 * struct qd_config, where every refusal names the file, the key path and the
 * reason; and writing a validated config into a new segment.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "gcra.h"
#include "internal.h"
#include "layout.h"

/* burst 0.99, not 1.0: the provider counts a request when it arrives, some
 * milliseconds after we admit it, and a provider bucket that is full drops
 * the refill of that interval while ours does not; starting 1 % (600 ms of a
 * minute) below the provider absorbs that. Measured in the demo: with 1.0, a
 * 45 ms start-up delay left the provider ~700 tokens behind us and an
 * occasional 429; with 0.99, none. */
const char qd_default_config[] =
	"{\n"
	"  \"segment\": \"quota\",\n"
	"  \"clock\": \"monotonic\",\n"
	"  \"quotas\": {\n"
	"    \"llama-4-scout\": {\n"
	"      \"rpm\": 1200, \"tpm\": 900000, \"rpd\": 0, \"tpd\": 0, \"itpm\": 0, \"otpm\": 0,\n"
	"      \"max_inflight\": 0, \"context_window\": 131072, \"burst\": 0.99, \"refund\": \"actual\",\n"
	"      \"price_per_mtok\": { \"input\": 0.10, \"output\": 0.25 },\n"
	"      \"budget_usd\": { \"day\": 0, \"month\": 0 }\n"
	"    }\n"
	"  }\n"
	"}\n";

/* Largest rate limit: keeps every product in gcra.c within 64/128 bits. */
#define QD_LIMIT_MAX (1ULL << 40)
#define QD_PRICE_MAX 1000000.0 /* USD per million tokens */
#define QD_BUDGET_MAX 4000000.0 /* USD per period: fits the 52-bit spend word */
#define QD_FILE_MAX (1 << 20)

struct ctx {
	const char *file;
	char *err;
	size_t errlen;
};

__attribute__((format(printf, 3, 4)))
static int fail(struct ctx *x, const char *path, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(x->err, x->errlen, "%s: %s%s%s", x->file, path ? path : "", path ? ": " : "", msg);
	return -EINVAL;
}

static const char *type_name(const cJSON *v)
{
	if (cJSON_IsNumber(v)) return "a number";
	if (cJSON_IsString(v)) return "a string";
	if (cJSON_IsBool(v)) return "a boolean";
	if (cJSON_IsNull(v)) return "null";
	if (cJSON_IsArray(v)) return "an array";
	if (cJSON_IsObject(v)) return "an object";
	return "invalid";
}

/* Refuse duplicate keys in an object (cJSON keeps them all). */
static int no_duplicates(struct ctx *x, const cJSON *obj, const char *path)
{
	for (const cJSON *a = obj->child; a; a = a->next)
		for (const cJSON *b = a->next; b; b = b->next)
			if (strcmp(a->string, b->string) == 0) {
				char p[256];
				snprintf(p, sizeof(p), "%s%s%s", path, *path ? "." : "", a->string);
				return fail(x, p, "duplicate key");
			}
	return 0;
}

static int get_uint(struct ctx *x, const cJSON *v, const char *path, uint64_t max, uint64_t *ret)
{
	if (!cJSON_IsNumber(v))
		return fail(x, path, "must be a non-negative integer, not %s", type_name(v));
	double d = v->valuedouble;
	if (!isfinite(d) || d < 0)
		return fail(x, path, "must be a non-negative integer, got %g", d);
	if (d != floor(d))
		return fail(x, path, "must be an integer, got %g", d);
	if (d > (double)max)
		return fail(x, path, "%.0f is too large (at most %llu)", d, (unsigned long long)max);
	*ret = (uint64_t)d;
	return 0;
}

static int get_real(struct ctx *x, const cJSON *v, const char *path, double max, double *ret)
{
	if (!cJSON_IsNumber(v))
		return fail(x, path, "must be a number, not %s", type_name(v));
	double d = v->valuedouble;
	if (!isfinite(d) || d < 0)
		return fail(x, path, "must be a non-negative number, got %g", d);
	if (d > max)
		return fail(x, path, "%g is too large (at most %g)", d, max);
	*ret = d;
	return 0;
}

static const struct {
	const char *key;
	enum quota_limit_kind kind;
} rate_keys[] = {
	{ "rpm", QUOTA_RPM },   { "rpd", QUOTA_RPD },   { "tpm", QUOTA_TPM },   { "tpd", QUOTA_TPD },
	{ "itpm", QUOTA_ITPM }, { "itpd", QUOTA_ITPD }, { "otpm", QUOTA_OTPM }, { "otpd", QUOTA_OTPD },
};

/* @s is 1 to @max characters of A-Z a-z 0-9 . _ : @ / + - (quota names
 * and global keys). */
static bool chars_ok(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      strchr("._:@/+-", ch)))
			return false;
	}
	return true;
}

static bool name_ok(const char *s)
{
	return chars_ok(s, QUOTA_NAME_MAX);
}

/* "HOST:PORT": a host name or IPv4 address, a port 1..65535. */
static bool hostport(const char *s, char *host, size_t hostlen, uint32_t *port)
{
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s || (size_t)(colon - s) >= hostlen)
		return false;
	for (const char *c = s; c < colon; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
		      *c == '.' || *c == '-'))
			return false;
	char *end;
	errno = 0;
	long v = strtol(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || v < 1 || v > 65535)
		return false;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	*port = (uint32_t)v;
	return true;
}

static int parse_redis(struct ctx *x, const cJSON *obj, const char *segment, struct qd_redis *rd)
{
	char p[320];
	if (!cJSON_IsObject(obj))
		return fail(x, "redis", "must be an object, not %s", type_name(obj));
	int r = no_duplicates(x, obj, "redis");
	if (r < 0)
		return r;
	memset(rd, 0, sizeof(*rd));
	rd->enabled = true;
	bool url_set = false;
	for (const cJSON *f = obj->child; f; f = f->next) {
		snprintf(p, sizeof(p), "redis.%s", f->string);
		if (strcmp(f->string, "url") == 0) {
			const char *u = cJSON_IsString(f) ? f->valuestring : NULL;
			if (!u)
				return fail(x, p, "must be a string, not %s", type_name(f));
			if (strlen(u) > QD_REDIS_STR_MAX)
				return fail(x, p, "longer than %d characters", QD_REDIS_STR_MAX);
			strcpy(rd->url, u);
			if (strncmp(u, "redis://", 8) == 0) {
				if (!hostport(u + 8, rd->host, sizeof(rd->host), &rd->port))
					return fail(x, p, "must be \"redis://HOST:PORT\" (port 1 to 65535), got "
						    "\"%.64s\"", u);
			} else if (strncmp(u, "unix://", 7) == 0) {
				if (u[7] != '/' || strlen(u + 7) >= sizeof(rd->unix_path))
					return fail(x, p, "must be \"unix:///ABSOLUTE/PATH\" (under 108 "
						    "characters), got \"%.64s\"", u);
				strcpy(rd->unix_path, u + 7);
			} else {
				return fail(x, p, "must be \"redis://HOST:PORT\" or \"unix:///PATH\", got "
					    "\"%.64s\"", u);
			}
			url_set = true;
		} else if (strcmp(f->string, "sentinels") == 0) {
			if (!cJSON_IsArray(f))
				return fail(x, p, "must be an array of \"HOST:PORT\", not %s", type_name(f));
			int n = cJSON_GetArraySize(f);
			if (n > QD_SENTINELS_MAX)
				return fail(x, p, "%d sentinels, at most %d", n, QD_SENTINELS_MAX);
			for (const cJSON *e = f->child; e; e = e->next) {
				char h[QD_REDIS_STR_MAX + 1];
				uint32_t port;
				if (!cJSON_IsString(e) || strlen(e->valuestring) > QD_REDIS_STR_MAX ||
				    !hostport(e->valuestring, h, sizeof(h), &port))
					return fail(x, p, "each must be \"HOST:PORT\" (port 1 to 65535)");
				strcpy(rd->sentinels[rd->nsentinels++], e->valuestring);
			}
		} else if (strcmp(f->string, "master") == 0) {
			if (!cJSON_IsString(f) || !chars_ok(f->valuestring, QD_GLOBAL_KEY_MAX))
				return fail(x, p, "must be a name of 1 to %d characters of A-Z a-z 0-9 . _ : @ "
					    "/ + -", QD_GLOBAL_KEY_MAX);
			snprintf(rd->master, sizeof(rd->master), "%s", f->valuestring);
		} else if (strcmp(f->string, "host_id") == 0) {
			if (!cJSON_IsString(f) || !chars_ok(f->valuestring, QD_GLOBAL_KEY_MAX))
				return fail(x, p, "must be 1 to %d characters of A-Z a-z 0-9 . _ : @ / + -",
					    QD_GLOBAL_KEY_MAX);
			snprintf(rd->host_id, sizeof(rd->host_id), "%s", f->valuestring);
		} else {
			return fail(x, p, "unknown key");
		}
	}
	if (rd->nsentinels && !rd->master[0])
		return fail(x, "redis.master", "missing: \"sentinels\" needs the master's name");
	if (rd->master[0] && !rd->nsentinels)
		return fail(x, "redis.sentinels", "missing: \"master\" needs the sentinels to ask");
	if (!url_set && !rd->nsentinels)
		return fail(x, "redis.url", "missing: give \"url\" or \"sentinels\" with \"master\"");
	if (!rd->host_id[0]) {
		char hn[64] = "host";
		if (gethostname(hn, sizeof(hn) - 1) < 0)
			strcpy(hn, "host");
		hn[sizeof(hn) - 1] = '\0';
		snprintf(rd->host_id, sizeof(rd->host_id), "%s/%s", hn, segment);
	}
	return 0;
}

static int parse_pair(struct ctx *x, const cJSON *obj, const char *path, const char *k1,
		      const char *k2, double max, double *v1, double *v2)
{
	char p[256];
	if (!cJSON_IsObject(obj))
		return fail(x, path, "must be an object {\"%s\": ..., \"%s\": ...}, not %s", k1, k2,
			    type_name(obj));
	int r = no_duplicates(x, obj, path);
	if (r < 0)
		return r;
	*v1 = *v2 = 0;
	for (const cJSON *f = obj->child; f; f = f->next) {
		snprintf(p, sizeof(p), "%s.%s", path, f->string);
		if (strcmp(f->string, k1) == 0)
			r = get_real(x, f, p, max, v1);
		else if (strcmp(f->string, k2) == 0)
			r = get_real(x, f, p, max, v2);
		else
			r = fail(x, p, "unknown key (expected \"%s\" or \"%s\")", k1, k2);
		if (r < 0)
			return r;
	}
	return 0;
}

/* "lanes": {"interactive": {"headroom": 0.2}, "batch": {}}: priority lanes,
 * highest first; a lane's headroom is the share of every limit's capacity
 * that the lanes below it must leave free. */
static int parse_lanes(struct ctx *x, const cJSON *obj, const char *path, struct qd_quota *q)
{
	char p[400];
	if (!cJSON_IsObject(obj))
		return fail(x, path, "must be an object of named lanes, highest priority first, not %s",
			    type_name(obj));
	int r = no_duplicates(x, obj, path);
	if (r < 0)
		return r;
	int n = cJSON_GetArraySize(obj);
	if (n < 2 || n > 4)
		return fail(x, path, "%d lanes: give 2 to 4 lanes, highest priority first", n);
	double sum = 0;
	uint32_t i = 0;
	for (const cJSON *ln = obj->child; ln; ln = ln->next, i++) {
		snprintf(p, sizeof(p), "%s.%s", path, ln->string);
		size_t len = strlen(ln->string);
		bool ok = len > 0 && len < sizeof(q->lanes[0].name);
		for (size_t j = 0; ok && j < len; j++)
			ok = (ln->string[j] >= 'a' && ln->string[j] <= 'z') ||
			     (ln->string[j] >= 'A' && ln->string[j] <= 'Z') ||
			     (ln->string[j] >= '0' && ln->string[j] <= '9') || strchr("._-", ln->string[j]);
		if (!ok)
			return fail(x, p, "lane names are 1 to 15 characters of A-Z a-z 0-9 . _ -");
		if (!cJSON_IsObject(ln))
			return fail(x, p, "must be an object ({} or {\"headroom\": 0.2}), not %s",
				    type_name(ln));
		strcpy(q->lanes[i].name, ln->string);
		q->lanes[i].headroom_ppm = 0;
		for (const cJSON *f = ln->child; f; f = f->next) {
			char pf[480];
			snprintf(pf, sizeof(pf), "%s.%s", p, f->string);
			if (strcmp(f->string, "headroom") != 0)
				return fail(x, pf, "unknown key (expected \"headroom\")");
			double h;
			r = get_real(x, f, pf, 1.0, &h);
			if (r < 0)
				return r;
			if (h >= 1.0)
				return fail(x, pf, "must be below 1, got %g", h);
			if (h > 0 && !ln->next)
				return fail(x, pf, "the lowest lane has no lane below it to keep headroom from");
			long ppm = lround(h * 1e6);
			q->lanes[i].headroom_ppm = (uint32_t)(ppm >= 1000000 ? 999999 : ppm);
			sum += q->lanes[i].headroom_ppm;
		}
	}
	if (sum >= 1e6)
		return fail(x, path, "the headrooms add up to %g: they must leave the lowest lane some capacity",
			    sum / 1e6);
	q->nlanes = (uint32_t)n;
	return 0;
}

/* The global keys a quota set (parse_quota_key() notes them). */
struct quota_keys {
	bool gkey, outage, hosts, lease;
};

/* parse_quota_key() for the keys of global quotas (issue 11): true if @f
 * is one of them (*@r its result), false for any other key. */
static bool parse_global_key(struct ctx *x, const cJSON *f, const char *p, struct qd_quota *q,
			     struct quota_keys *k, int *r)
{
	if (strcmp(f->string, "scope") == 0) {
		if (cJSON_IsString(f) && strcmp(f->valuestring, "host") == 0)
			q->global = false;
		else if (cJSON_IsString(f) && strcmp(f->valuestring, "global") == 0)
			q->global = true;
		else
			*r = fail(x, p, "must be \"host\" or \"global\"");
	} else if (strcmp(f->string, "global_key") == 0) {
		if (!cJSON_IsString(f))
			*r = fail(x, p, "must be a string, not %s", type_name(f));
		else if (!chars_ok(f->valuestring, QD_GLOBAL_KEY_MAX))
			*r = fail(x, p, "global keys are 1 to %d characters of A-Z a-z 0-9 . _ : @ / + -",
				 QD_GLOBAL_KEY_MAX);
		else
			strcpy(q->global_key, f->valuestring);
		k->gkey = true;
	} else if (strcmp(f->string, "outage") == 0) {
		if (cJSON_IsString(f) && strcmp(f->valuestring, "static_share") == 0)
			q->outage = QD_OUTAGE_STATIC_SHARE;
		else if (cJSON_IsString(f) && strcmp(f->valuestring, "fail_closed") == 0)
			q->outage = QD_OUTAGE_FAIL_CLOSED;
		else
			*r = fail(x, p, "must be \"static_share\" or \"fail_closed\"");
		k->outage = true;
	} else if (strcmp(f->string, "expected_hosts") == 0) {
		uint64_t v = 0;
		if ((*r = get_uint(x, f, p, QD_EXPECTED_HOSTS_MAX, &v)) == 0 && v == 0)
			*r = fail(x, p, "must be at least 1");
		q->expected_hosts = (uint32_t)v;
		k->hosts = true;
	} else if (strcmp(f->string, "inflight_lease_s") == 0) {
		double v = 0;
		if ((*r = get_real(x, f, p, QD_INFLIGHT_LEASE_MAX_S, &v)) == 0 && v < QD_INFLIGHT_LEASE_MIN_S)
			*r = fail(x, p, "must be at least %d s (hosts admit in its first half, and notice an "
				 "outage after 1 s), got %g", QD_INFLIGHT_LEASE_MIN_S, v);
		q->inflight_lease_ns = (uint64_t)llround(v * 1e9);
		k->lease = true;
	} else {
		return false;
	}
	return true;
}

/* parse_quota(), step 1: one key @f of a quota (path @p) into @q. */
static int parse_quota_key(struct ctx *x, const cJSON *f, const char *p, struct qd_quota *q,
			   struct quota_keys *k)
{
	int r = 0;
	bool done = false;
	for (size_t i = 0; i < sizeof(rate_keys) / sizeof(rate_keys[0]); i++)
		if (strcmp(f->string, rate_keys[i].key) == 0) {
			r = get_uint(x, f, p, QD_LIMIT_MAX, &q->rate[rate_keys[i].kind]);
			done = true;
		}
	if (done) {
		/* nothing more */
	} else if (strcmp(f->string, "max_inflight") == 0) {
		r = get_uint(x, f, p, 1000000, &q->max_inflight);
	} else if (strcmp(f->string, "context_window") == 0) {
		r = get_uint(x, f, p, QD_LIMIT_MAX, &q->context_window);
	} else if (strcmp(f->string, "burst") == 0) {
		double b;
		r = get_real(x, f, p, 1.0, &b);
		if (r == 0 && b <= 0)
			r = fail(x, p, "must be in (0, 1], got %g", b);
		if (r == 0) {
			long ppm = lround(b * 1e6);
			q->burst_ppm = ppm < 1 ? 1 : (uint32_t)ppm;
		}
	} else if (strcmp(f->string, "refund") == 0) {
		if (!cJSON_IsString(f))
			r = fail(x, p, "must be \"actual\" or \"none\", not %s", type_name(f));
		else if (strcmp(f->valuestring, "actual") == 0)
			q->refund_actual = true;
		else if (strcmp(f->valuestring, "none") == 0)
			q->refund_actual = false;
		else
			r = fail(x, p, "must be \"actual\" or \"none\", got \"%.32s\"", f->valuestring);
	} else if (strcmp(f->string, "price_per_mtok") == 0) {
		double in, out;
		r = parse_pair(x, f, p, "input", "output", QD_PRICE_MAX, &in, &out);
		/* USD per million tokens = pico-USD per token * 1e-6 */
		q->price_in_pusd = (uint64_t)llround(in * 1e6);
		q->price_out_pusd = (uint64_t)llround(out * 1e6);
	} else if (strcmp(f->string, "lanes") == 0) {
		r = parse_lanes(x, f, p, q);
	} else if (strcmp(f->string, "learn") == 0 || strcmp(f->string, "auto_estimate") == 0) {
		if (!cJSON_IsBool(f))
			r = fail(x, p, "must be true or false, not %s", type_name(f));
		else if (f->string[0] == 'l')
			q->learn = cJSON_IsTrue(f);
		else
			q->auto_estimate = cJSON_IsTrue(f);
	} else if (strcmp(f->string, "alarms") == 0) {
		double held, over;
		r = parse_pair(x, f, p, "held_s", "over_estimate", 86400.0 * 31, &held, &over);
		if (r == 0 && over > 0 && over < 1)
			r = fail(x, p, "over_estimate must be at least 1 (a multiple of the estimate), got %g",
				 over);
		if (r == 0 && over > 1000)
			r = fail(x, p, "over_estimate must be at most 1000, got %g", over);
		if (r == 0) {
			q->alarm_held_ns = (uint64_t)llround(held * 1e9);
			q->alarm_over_pct = (uint32_t)lround(over * 100);
		}
	} else if (strcmp(f->string, "budget_usd") == 0) {
		double day, month;
		r = parse_pair(x, f, p, "day", "month", QD_BUDGET_MAX, &day, &month);
		q->budget_day_nusd = (uint64_t)llround(day * 1e9);
		q->budget_month_nusd = (uint64_t)llround(month * 1e9);
	} else if (parse_global_key(x, f, p, q, k, &r)) {
		/* a key of a global quota */
	} else {
		r = fail(x, p, "unknown key");
	}
	return r;
}

/* parse_quota(), step 2: what a global quota needs and may not have;
 * the defaults of its global keys. */
static int check_global(struct ctx *x, const char *path, struct qd_quota *q, const struct quota_keys *set)
{
	char p[320];
	if (!q->global && (set->gkey || set->outage || set->hosts || set->lease)) {
		snprintf(p, sizeof(p), "%s.%s", path,
			 set->gkey ? "global_key" : set->outage ? "outage" : set->hosts ? "expected_hosts" :
			 "inflight_lease_s");
		return fail(x, p, "only for a quota with \"scope\": \"global\"");
	}
	if (set->lease && !q->max_inflight) {
		snprintf(p, sizeof(p), "%s.inflight_lease_s", path);
		return fail(x, p, "only for a global quota with max_inflight (it is the lease of its slots)");
	}
	if (q->global) {
		bool daily = q->budget_day_nusd || q->budget_month_nusd;
		bool any = false;
		for (int k = 0; k < QUOTA_RATE_KINDS; k++) {
			daily |= (k & 1) && q->rate[k];
			any |= q->rate[k] != 0;
		}
		snprintf(p, sizeof(p), "%s.scope", path);
		if (!any && !q->max_inflight && !daily)
			return fail(x, p, "a global quota needs at least one rate limit, max_inflight or "
				    "budget_usd");
		if (!set->lease)
			q->inflight_lease_ns = QD_INFLIGHT_LEASE_DEFAULT_S * 1000000000ULL;
		if (!set->hosts) {
			snprintf(p, sizeof(p), "%s.expected_hosts", path);
			return fail(x, p, "missing: a global quota needs the number of hosts sharing it "
				    "(its static share and each host's local cap is the limit divided by it)");
		}
		if (!set->gkey)
			strcpy(q->global_key, q->name);
		if (!set->outage)
			q->outage = daily ? QD_OUTAGE_FAIL_CLOSED : QD_OUTAGE_STATIC_SHARE;
	}
	return 0;
}

/* parse_quota(), step 3: every limit representable by the arithmetic, and
 * every lane able to admit one unit of it. */
static int check_limits(struct ctx *x, const char *path, const struct qd_quota *q)
{
	char p[320];
	/* Every limit must be representable by the arithmetic. */
	for (int k = 0; k < QUOTA_RATE_KINDS; k++) {
		if (!q->rate[k])
			continue;
		struct qs_limit_cfg l;
		if (qg_limit_init(&l, (uint32_t)k, q->rate[k], qg_period_of((uint32_t)k), q->burst_ppm) < 0) {
			snprintf(p, sizeof(p), "%s.%s", path, rate_keys[0].key);
			for (size_t i = 0; i < sizeof(rate_keys) / sizeof(rate_keys[0]); i++)
				if ((int)rate_keys[i].kind == k)
					snprintf(p, sizeof(p), "%s.%s", path, rate_keys[i].key);
			return fail(x, p, "%llu with burst %g is out of range for the arithmetic",
				    (unsigned long long)q->rate[k], q->burst_ppm / 1e6);
		}
		/* Every lane must be able to admit one unit of every limit. */
		uint64_t kept = 0;
		for (uint32_t i = 0; i + 1 < q->nlanes; i++) {
			kept += q->lanes[i].headroom_ppm;
			if (qg_lane_tau(&l, (uint32_t)kept) < (int64_t)qg_charge(&l, 1)) {
				snprintf(p, sizeof(p), "%s.lanes.%s", path, q->lanes[i + 1].name);
				return fail(x, p, "the headroom above leaves this lane no capacity on a limit of "
					    "%llu with burst %g", (unsigned long long)q->rate[k], q->burst_ppm / 1e6);
			}
		}
	}
	return 0;
}

static int parse_quota(struct ctx *x, const cJSON *obj, struct qd_quota *q)
{
	char path[256], p[320];
	snprintf(path, sizeof(path), "quotas.%s", obj->string);
	if (!name_ok(obj->string))
		return fail(x, path, "quota names are 1 to %d characters of A-Z a-z 0-9 . _ : @ / + -",
			    QUOTA_NAME_MAX);
	if (!cJSON_IsObject(obj))
		return fail(x, path, "must be an object, not %s", type_name(obj));
	int r = no_duplicates(x, obj, path);
	if (r < 0)
		return r;
	memset(q, 0, sizeof(*q));
	strcpy(q->name, obj->string);
	struct quota_keys k = { false, false, false, false };
	q->burst_ppm = 1000000;
	q->refund_actual = true;
	for (const cJSON *f = obj->child; f; f = f->next) {
		snprintf(p, sizeof(p), "%s.%s", path, f->string);
		if ((r = parse_quota_key(x, f, p, q, &k)) < 0)
			return r;
	}
	if ((r = check_global(x, path, q, &k)) < 0)
		return r;
	return check_limits(x, path, q);
}

/* qd_config_parse(), step 1: the JSON document of @text, an object with no
 * trailing characters; NULL (with the message) if it is not. */
static cJSON *parse_document(struct ctx *x, const char *text, size_t len)
{
	size_t i = 0;
	while (i < len && strchr(" \t\r\n", text[i]))
		i++;
	if (i == len) {
		fail(x, NULL, "empty configuration");
		return NULL;
	}
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
	if (!root) {
		size_t off = end && end >= text ? (size_t)(end - text) : 0;
		const char *e = cJSON_GetErrorPtr();
		if (e && e >= text && e <= text + len)
			off = (size_t)(e - text);
		unsigned line = 1, col = 1;
		for (size_t j = 0; j < off && j < len; j++, col++)
			if (text[j] == '\n')
				line++, col = 0;
		fail(x, NULL, "line %u, column %u: malformed JSON", line, col);
		return NULL;
	}
	int r = 0;
	if (end) {
		while (end < text + len && strchr(" \t\r\n", *end))
			end++;
		if (end < text + len && *end != '\0')
			r = fail(x, NULL, "trailing characters after the JSON document");
	}
	if (r == 0 && !cJSON_IsObject(root))
		r = fail(x, NULL, "the top level must be an object, not %s", type_name(root));
	if (r == 0)
		r = no_duplicates(x, root, "");
	if (r < 0) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

/* Step 2: the top-level keys into @cfg; the "redis" and "quotas" objects
 * into *@redis and *@quotas for the next steps. */
static int parse_top(struct ctx *x, const cJSON *root, struct qd_config *cfg, const cJSON **redis,
		     const cJSON **quotas)
{
	strcpy(cfg->segment, "quota");
	cfg->max_quotas = QD_DEFAULT_MAX_QUOTAS;
	cfg->max_clients = QD_DEFAULT_MAX_CLIENTS;
	for (const cJSON *f = root->child; f; f = f->next) {
		uint64_t v;
		int r = 0;
		if (strcmp(f->string, "segment") == 0) {
			if (!cJSON_IsString(f))
				r = fail(x, "segment", "must be a string, not %s", type_name(f));
			else if (!*f->valuestring || strlen(f->valuestring) > QD_SEGMENT_NAME_MAX ||
				 strchr(f->valuestring, '/'))
				r = fail(x, "segment", "must be 1 to %d characters without '/'",
					 QD_SEGMENT_NAME_MAX);
			else
				strcpy(cfg->segment, f->valuestring);
		} else if (strcmp(f->string, "clock") == 0) {
			if (cJSON_IsString(f) && strcmp(f->valuestring, "monotonic") == 0)
				cfg->manual_clock = false;
			else if (cJSON_IsString(f) && strcmp(f->valuestring, "manual") == 0)
				cfg->manual_clock = true;
			else
				r = fail(x, "clock", "must be \"monotonic\" or \"manual\"");
		} else if (strcmp(f->string, "max_quotas") == 0) {
			if ((r = get_uint(x, f, "max_quotas", QS_MAX_QUOTAS, &v)) == 0 && v == 0)
				r = fail(x, "max_quotas", "must be at least 1");
			cfg->max_quotas = (uint32_t)v;
		} else if (strcmp(f->string, "max_clients") == 0) {
			if ((r = get_uint(x, f, "max_clients", QS_MAX_CLIENTS, &v)) == 0 && v == 0)
				r = fail(x, "max_clients", "must be at least 1");
			cfg->max_clients = (uint32_t)v;
		} else if (strcmp(f->string, "redis") == 0) {
			*redis = f;
		} else if (strcmp(f->string, "quotas") == 0) {
			if (!cJSON_IsObject(f))
				r = fail(x, "quotas", "must be an object of named quotas, not %s", type_name(f));
			else
				*quotas = f;
		} else {
			r = fail(x, f->string, "unknown key");
		}
		if (r < 0)
			return r;
	}
	return 0;
}

/* Step 3: every quota of @quotas into cfg->quotas. */
static int parse_quotas(struct ctx *x, const cJSON *quotas, struct qd_config *cfg)
{
	if (!quotas)
		return fail(x, "quotas", "missing: at least one quota is needed");
	int r = no_duplicates(x, quotas, "quotas");
	if (r < 0)
		return r;
	int n = cJSON_GetArraySize(quotas);
	if (n == 0)
		return fail(x, "quotas", "empty: at least one quota is needed");
	if ((uint32_t)n > cfg->max_quotas)
		return fail(x, "quotas", "%d quotas, but the segment holds max_quotas = %u", n, cfg->max_quotas);
	cfg->quotas = calloc((size_t)n, sizeof(*cfg->quotas));
	if (!cfg->quotas)
		return fail(x, NULL, "out of memory");
	for (const cJSON *qo = quotas->child; qo; qo = qo->next) {
		if ((r = parse_quota(x, qo, &cfg->quotas[cfg->nquotas])) < 0)
			return r;
		cfg->nquotas++;
	}
	return 0;
}

/* Step 4: what global quotas need of the whole configuration. */
static int check_globals(struct ctx *x, const struct qd_config *cfg)
{
	for (uint32_t qi = 0; qi < cfg->nquotas; qi++) {
		const struct qd_quota *q = &cfg->quotas[qi];
		char p[320];
		snprintf(p, sizeof(p), "quotas.%s.scope", q->name);
		if (q->global && !cfg->redis.enabled)
			return fail(x, p, "\"global\" needs the top-level \"redis\" section");
		if (q->global && cfg->manual_clock)
			return fail(x, p, "\"global\" needs the monotonic clock (grants run on real time), "
				    "not \"clock\": \"manual\"");
		for (uint32_t j = 0; j < qi && q->global; j++)
			if (cfg->quotas[j].global && strcmp(cfg->quotas[j].global_key, q->global_key) == 0) {
				snprintf(p, sizeof(p), "quotas.%s.global_key", q->name);
				return fail(x, p, "\"%s\" is also the global key of quota %s", q->global_key,
					    cfg->quotas[j].name);
			}
	}
	return 0;
}

int qd_config_parse(const char *text, size_t len, const char *file, struct qd_config *cfg,
		    char *err, size_t errlen)
{
	struct ctx x = { file ? file : "<config>", err, errlen };
	memset(cfg, 0, sizeof(*cfg));
	cJSON *root = parse_document(&x, text, len);
	if (!root)
		return -EINVAL;
	const cJSON *quotas = NULL, *redis = NULL;
	int r = parse_top(&x, root, cfg, &redis, &quotas);
	/* after the top level: the default host_id names the segment */
	if (r == 0 && redis)
		r = parse_redis(&x, redis, cfg->segment, &cfg->redis);
	if (r == 0)
		r = parse_quotas(&x, quotas, cfg);
	if (r == 0)
		r = check_globals(&x, cfg);
	cJSON_Delete(root);
	if (r < 0)
		qd_config_free(cfg);
	return r;
}

int qd_config_load(const char *path, struct qd_config *cfg, char *err, size_t errlen)
{
	struct ctx x = { path, err, errlen };
	memset(cfg, 0, sizeof(*cfg));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(&x, NULL, "cannot open: %s", strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return fail(&x, NULL, "not a regular file");
	}
	if (st.st_size > QD_FILE_MAX) {
		close(fd);
		return fail(&x, NULL, "larger than %d bytes", QD_FILE_MAX);
	}
	char *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return fail(&x, NULL, "out of memory");
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = '\0';
	int r = qd_config_parse(buf, got, path, cfg, err, errlen);
	free(buf);
	return r;
}

void qd_config_free(struct qd_config *cfg)
{
	free(cfg->quotas);
	cfg->quotas = NULL;
	cfg->nquotas = 0;
}

uint64_t qd_local_rate(const struct qd_quota *qc, uint32_t kind)
{
	uint64_t rate = qc->rate[kind];
	if (!qc->global || !rate)
		return rate;
	/* A global quota's local record holds the static share (rounded down,
	 * at least 1): what the host admits by itself when quotad does not
	 * hold it back (global.c, docs/ARCHITECTURE.md). */
	rate /= qc->expected_hosts ? qc->expected_hosts : 1;
	return rate ? rate : 1;
}

uint64_t qd_local_budget(const struct qd_quota *qc, uint64_t budget_nusd)
{
	if (!qc->global || !budget_nusd)
		return budget_nusd;
	/* The local cap: a quarter of the static share, what a host whose
	 * quotad is down spends at most per period and the most a request may
	 * cost (global.c). */
	budget_nusd /= 4ULL * (qc->expected_hosts ? qc->expected_hosts : 1);
	return budget_nusd ? budget_nusd : 1;
}

int qd_quota_config(const struct qd_quota *qc, uint32_t id, struct qs_config *out)
{
	memset(out, 0, sizeof(*out));
	snprintf(out->name, sizeof(out->name), "%s", qc->name);
	out->quota_id = id;
	out->flags = qc->refund_actual ? QS_REC_REFUND_ACTUAL : 0;
	/* Slots leased from Redis: the workers check the lease (slots.c). */
	if (qc->global && qc->max_inflight)
		out->flags |= QS_REC_GLOBAL_INFLIGHT;
	out->context_window = qc->context_window;
	out->max_inflight = qc->max_inflight;
	out->price_in_pusd = qc->price_in_pusd;
	out->price_out_pusd = qc->price_out_pusd;
	out->budget_day_nusd = qd_local_budget(qc, qc->budget_day_nusd);
	out->budget_month_nusd = qd_local_budget(qc, qc->budget_month_nusd);
	for (uint32_t k = 0; k < QUOTA_RATE_KINDS; k++) {
		if (!qc->rate[k])
			continue;
		struct qs_limit_cfg l;
		uint64_t rate = qd_local_rate(qc, k);
		int r = qg_limit_init(&l, k, rate, qg_period_of(k), qc->burst_ppm);
		if (r < 0)
			return r;
		out->lim[out->nlimits++] = (struct qs_limit_src){ .kind = k, .burst_ppm = qc->burst_ppm,
								   .limit = rate };
	}
	out->flags2 = (qc->learn ? QS_REC2_LEARN : 0) | (qc->auto_estimate ? QS_REC2_AUTO_EST : 0);
	out->alarm_held_ns = qc->alarm_held_ns;
	out->alarm_over_pct = qc->alarm_over_pct;
	out->nlanes = qc->nlanes;
	for (uint32_t i = 0; i < qc->nlanes && i < QS_LANES; i++) {
		snprintf(out->lanes[i].name, sizeof(out->lanes[i].name), "%s", qc->lanes[i].name);
		out->lanes[i].headroom_ppm = qc->lanes[i].headroom_ppm;
	}
	return qs_config_check(out) < 0 ? -EINVAL : 0;
}

/* Publish every quota of @cfg into the fresh segment described by @g: record
 * i for quota i, then the name index. */
static int populate(const struct qs_geom *g, const struct qd_config *cfg, char *err, size_t errlen)
{
	char (*names)[64] = calloc(cfg->nquotas ? cfg->nquotas : 1, sizeof(*names));
	uint32_t *ids = calloc(cfg->nquotas ? cfg->nquotas : 1, sizeof(*ids));
	int r = names && ids ? 0 : -ENOMEM;
	for (uint32_t i = 0; i < cfg->nquotas && r == 0; i++) {
		struct qs_config qc;
		r = qd_quota_config(&cfg->quotas[i], i, &qc);
		if (r < 0) {
			snprintf(err, errlen, "quota %s: %s", cfg->quotas[i].name, strerror(-r));
			break;
		}
		/* A global max_inflight starts with no slot granted: quotad holds
		 * them all until Redis grants some (global.c). */
		if (cfg->quotas[i].global && qc.max_inflight)
			(void)qc_inflight_hold_set(qs_quota_at(g, i), qc.max_inflight);
		/* A global budget likewise starts with nothing spendable. */
		if (cfg->quotas[i].global) {
			struct timespec rt;
			clock_gettime(CLOCK_REALTIME, &rt);
			uint32_t day, month;
			qc_periods_of((int64_t)rt.tv_sec * QC_NS_PER_S + rt.tv_nsec, &day, &month);
			if (qc.budget_day_nusd)
				qc_spend_raise(&qs_quota_at(g, i)->spend_day, day, qc.budget_day_nusd);
			if (qc.budget_month_nusd)
				qc_spend_raise(&qs_quota_at(g, i)->spend_month, month, qc.budget_month_nusd);
		}
		qs_record_publish(g, i, qs_next_generation(g), &qc);
		memcpy(names[i], qc.name, sizeof(names[i]));
		ids[i] = i;
	}
	if (r == 0 && (r = qs_index_publish(g, (const char (*)[64])names, ids, cfg->nquotas)) < 0)
		snprintf(err, errlen, "name index: %s", strerror(-r));
	if (r == -ENOMEM)
		snprintf(err, errlen, "out of memory");
	free(names);
	free(ids);
	return r;
}

int qd_segment_create(const struct qd_config *cfg, const char *name, void **ret_base,
		      uint64_t *ret_size, char *err, size_t errlen)
{
	struct qs_geometry g = {
		.quota_capacity = cfg->max_quotas,
		.client_capacity = cfg->max_clients,
		.incompat_flags = cfg->manual_clock ? QS_INCOMPAT_MANUAL_CLOCK : 0,
	};
	uint64_t size = qs_segment_size(&g);
	if (size == 0) {
		snprintf(err, errlen, "segment geometry out of range");
		return -EINVAL;
	}
	char path[QD_SEGMENT_NAME_MAX + 2];
	snprintf(path, sizeof(path), "/%s", name);
	mode_t old = umask(0);
	int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0660);
	int e = errno;
	umask(old);
	if (fd < 0) {
		if (e == EEXIST)
			snprintf(err, errlen, "segment %s already exists (/dev/shm%s): another quotad serves it, "
				 "or it was left behind", path, path);
		else
			snprintf(err, errlen, "cannot create segment %s: %s", path, strerror(e));
		return -e;
	}
	if (ftruncate(fd, (off_t)size) < 0) {
		e = errno;
		snprintf(err, errlen, "cannot size segment %s to %llu bytes: %s", path,
			 (unsigned long long)size, strerror(e));
		close(fd);
		shm_unlink(path);
		return -e;
	}
	void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	e = errno;
	close(fd);
	if (base == MAP_FAILED) {
		snprintf(err, errlen, "cannot map segment %s: %s", path, strerror(e));
		shm_unlink(path);
		return -e;
	}
	qs_format(base, &g);
	struct qs_header *h = base;
	struct timespec rt, mono;
	clock_gettime(CLOCK_REALTIME, &rt);
	clock_gettime(CLOCK_MONOTONIC, &mono);
	int64_t rt_ns = (int64_t)rt.tv_sec * QC_NS_PER_S + rt.tv_nsec;
	int64_t mono_ns = (int64_t)mono.tv_sec * QC_NS_PER_S + mono.tv_nsec;
	h->created_realtime_ns = rt_ns;
	/* A manual clock starts at 0: UTC periods are counted from creation. */
	atomic_store_explicit(&h->realtime_offset_ns, cfg->manual_clock ? rt_ns : rt_ns - mono_ns,
			      memory_order_relaxed);
	struct qs_geom geom;
	(void)qs_geom_load(&geom, base, size); /* -EAGAIN: not READY yet, as it should */
	int r = populate(&geom, cfg, err, errlen);
	if (r < 0) {
		munmap(base, size);
		shm_unlink(path);
		return r;
	}
	atomic_store_explicit(&h->quota_count, cfg->nquotas, memory_order_relaxed);
	/* release: the complete segment is visible before READY (qs_geom_load) */
	atomic_store_explicit(&h->state, QS_STATE_READY, memory_order_release);
	*ret_base = base;
	*ret_size = size;
	return 0;
}

int qd_create_segment_json(const char *json, const char *segment_name, char *err, size_t errlen)
{
	struct qd_config cfg;
	int r = qd_config_parse(json, strlen(json), "<json>", &cfg, err, errlen);
	if (r < 0)
		return r;
	void *base;
	uint64_t size;
	r = qd_segment_create(&cfg, segment_name, &base, &size, err, errlen);
	qd_config_free(&cfg);
	if (r == 0)
		munmap(base, size);
	return r;
}
