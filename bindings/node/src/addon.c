/* SPDX-License-Identifier: MIT */
/*
 * addon.c - the N-API addon under the Node package: a thin, non-blocking
 * mirror of quota.h for lib/index.js, plus the token estimator of
 * tools/common/estimate.c for createQuotaFetch. Every function here returns
 * at once: quota_reserve() is only ever called with a timeout of 0, and the
 * JavaScript layer waits with timers (a reserve that sleeps would stop the
 * event loop). A handle belongs to the JavaScript thread (main or worker)
 * that opened it, so only that thread uses it and quota_close() is safe.
 *
 * Lifetimes: a handle (struct handle) is shared by its Client external and
 * the externals of the tickets it issued, and freed when the last of them is
 * collected. A ticket that is collected while open is cancelled, so a lost
 * promise never holds budget or an in-flight slot.
 */
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "estimate.h"
#include "quota.h"

/* Largest integer a JavaScript number holds exactly. */
#define JS_INT_MAX 9007199254740991.0

struct handle {
	quota_client *c; /* NULL once closed */
	unsigned refs;   /* the Client external + open or unsettled tickets */
};

struct ticket {
	struct handle *h;
	int open;
	struct quota_ticket t;
};

static void handle_unref(struct handle *h)
{
	if (--h->refs == 0) {
		quota_close(h->c);
		free(h);
	}
}

/* ---- argument helpers (failures throw a TypeError/RangeError) ---------- */

#define CHECK(call)                                                                    \
	do {                                                                           \
		if ((call) != napi_ok)                                                 \
			return NULL;                                                   \
	} while (0)

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv)
{
	size_t argc = want;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
		return -1;
	if (argc < want) {
		napi_throw_type_error(env, "EINVAL", "too few arguments");
		return -1;
	}
	return 0;
}

static int get_external(napi_env env, napi_value v, void **ret)
{
	napi_valuetype t;
	if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
	    napi_get_value_external(env, v, ret) != napi_ok || !*ret) {
		napi_throw_type_error(env, "EINVAL", "not a libquota handle");
		return -1;
	}
	return 0;
}

/* A non-negative integer below 2^53 (what JavaScript numbers hold exactly). */
static int get_count(napi_env env, napi_value v, uint64_t *ret)
{
	double d;
	if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0 && d <= JS_INT_MAX) ||
	    d != floor(d)) {
		napi_throw_range_error(env, "EINVAL", "expected an integer in [0, 2^53)");
		return -1;
	}
	*ret = (uint64_t)d;
	return 0;
}

static int get_handle(napi_env env, napi_value v, struct handle **ret)
{
	void *p;
	if (get_external(env, v, &p) < 0)
		return -1;
	struct handle *h = p;
	if (!h->c) {
		napi_throw_error(env, "EBADF", "the libquota client is closed");
		return -1;
	}
	*ret = h;
	return 0;
}

static napi_value num(napi_env env, double d)
{
	napi_value v;
	return napi_create_double(env, d, &v) == napi_ok ? v : NULL;
}

static napi_value u64(napi_env env, uint64_t x)
{
	return num(env, (double)x);
}

static void set(napi_env env, napi_value obj, const char *key, napi_value v)
{
	if (v)
		napi_set_named_property(env, obj, key, v);
}

/* ---- client ------------------------------------------------------------ */

static void handle_finalize(napi_env env, void *data, void *hint)
{
	(void)env, (void)hint;
	handle_unref(data);
}

/* open(segment | null) -> external handle, or a negative errno. */
static napi_value js_open(napi_env env, napi_callback_info info)
{
	napi_value argv[1], ret;
	napi_valuetype t;
	char seg[256];
	size_t len;
	CHECK(get_args(env, info, 1, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_typeof(env, argv[0], &t));
	const char *segment = NULL;
	if (t == napi_string) {
		CHECK(napi_get_value_string_utf8(env, argv[0], seg, sizeof(seg), &len));
		if (len >= sizeof(seg) - 1)
			return num(env, -EINVAL);
		segment = seg;
	} else if (t != napi_null && t != napi_undefined) {
		napi_throw_type_error(env, "EINVAL", "segment must be a string");
		return NULL;
	}
	struct handle *h = calloc(1, sizeof(*h));
	if (!h)
		return num(env, -ENOMEM);
	int r = quota_open(segment, &h->c);
	if (r < 0) {
		free(h);
		return num(env, r);
	}
	h->refs = 1;
	if (napi_create_external(env, h, handle_finalize, NULL, &ret) != napi_ok) {
		handle_unref(h);
		return NULL;
	}
	return ret;
}

/* close(handle): gives back the in-flight slots of open tickets. */
static napi_value js_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	void *p;
	CHECK(get_args(env, info, 1, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_external(env, argv[0], &p) == 0 ? napi_ok : napi_generic_failure);
	struct handle *h = p;
	quota_close(h->c);
	h->c = NULL;
	return NULL;
}

/* find(handle, name) -> id, or a negative errno. */
static napi_value js_find(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	struct handle *h;
	char name[QUOTA_NAME_MAX + 2];
	size_t len;
	CHECK(get_args(env, info, 2, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	if (napi_get_value_string_utf8(env, argv[1], name, sizeof(name), &len) != napi_ok) {
		napi_throw_type_error(env, "EINVAL", "quota name must be a string");
		return NULL;
	}
	if (len > QUOTA_NAME_MAX || strlen(name) != len)
		return num(env, -ENOENT);
	return num(env, quota_find(h->c, name));
}

/* ---- tickets ----------------------------------------------------------- */

static void ticket_finalize(napi_env env, void *data, void *hint)
{
	struct ticket *tk = data;
	(void)env, (void)hint;
	if (tk->open && tk->h->c)
		quota_cancel(tk->h->c, &tk->t);
	handle_unref(tk->h);
	free(tk);
}

/*
 * reserve(handle, id, requests, inputTokens, outputTokens) -> an external
 * ticket when admitted, else a negative errno; on -EAGAIN the earliest delay
 * worth retrying after is left for lastRetryAfterNs(). Never waits.
 */
/* Per thread: each worker_thread has its own JavaScript thread. */
static _Thread_local int64_t tls_retry_after_ns;

static napi_value js_reserve(napi_env env, napi_callback_info info)
{
	napi_value argv[5], ret;
	struct handle *h;
	double idd;
	struct quota_cost cost;
	CHECK(get_args(env, info, 5, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_get_value_double(env, argv[1], &idd));
	CHECK(get_count(env, argv[2], &cost.requests) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_count(env, argv[3], &cost.input_tokens) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_count(env, argv[4], &cost.output_tokens) == 0 ? napi_ok : napi_generic_failure);
	if (!(idd >= 0 && idd < 1e9) || idd != floor(idd))
		return num(env, -ENOENT);
	struct ticket *tk = calloc(1, sizeof(*tk));
	if (!tk)
		return num(env, -ENOMEM);
	int r = quota_reserve(h->c, (int)idd, &cost, 0, &tk->t);
	if (r < 0) {
		tls_retry_after_ns = r == -EAGAIN ? tk->t.retry_after_ns : 0;
		free(tk);
		return num(env, r);
	}
	tk->h = h;
	tk->open = 1;
	h->refs++;
	if (napi_create_external(env, tk, ticket_finalize, NULL, &ret) != napi_ok) {
		quota_cancel(h->c, &tk->t);
		handle_unref(h);
		free(tk);
		return NULL;
	}
	return ret;
}

static napi_value js_last_retry_after_ns(napi_env env, napi_callback_info info)
{
	(void)info;
	return num(env, (double)tls_retry_after_ns);
}

static int get_ticket(napi_env env, napi_value v, struct ticket **ret)
{
	void *p;
	if (get_external(env, v, &p) < 0)
		return -1;
	*ret = p;
	return 0;
}

/* commit(ticket, requests, inputTokens, outputTokens) -> 0 or a negative errno. */
static napi_value js_commit(napi_env env, napi_callback_info info)
{
	napi_value argv[4];
	struct ticket *tk;
	struct quota_cost used;
	CHECK(get_args(env, info, 4, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_ticket(env, argv[0], &tk) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_count(env, argv[1], &used.requests) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_count(env, argv[2], &used.input_tokens) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_count(env, argv[3], &used.output_tokens) == 0 ? napi_ok : napi_generic_failure);
	if (!tk->h->c)
		return num(env, -EBADF);
	if (!tk->open)
		return num(env, -EINVAL);
	int r = quota_commit(tk->h->c, &tk->t, &used);
	if (r == 0)
		tk->open = 0;
	return num(env, r);
}

/* cancel(ticket) -> 0 or a negative errno. */
static napi_value js_cancel(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct ticket *tk;
	CHECK(get_args(env, info, 1, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_ticket(env, argv[0], &tk) == 0 ? napi_ok : napi_generic_failure);
	if (!tk->h->c)
		return num(env, -EBADF);
	if (!tk->open)
		return num(env, -EINVAL);
	int r = quota_cancel(tk->h->c, &tk->t);
	if (r == 0)
		tk->open = 0;
	return num(env, r);
}

/* ticketInfo(ticket) -> { waitedNs, admittedAtNs, open } */
static napi_value js_ticket_info(napi_env env, napi_callback_info info)
{
	napi_value argv[1], obj;
	struct ticket *tk;
	napi_value b;
	CHECK(get_args(env, info, 1, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_ticket(env, argv[0], &tk) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_create_object(env, &obj));
	set(env, obj, "waitedNs", num(env, (double)tk->t.waited_ns));
	set(env, obj, "admittedAtNs", num(env, (double)quota_ticket_time(&tk->t)));
	CHECK(napi_get_boolean(env, tk->open, &b));
	set(env, obj, "open", b);
	return obj;
}

/* ---- the rest of quota.h ---------------------------------------------- */

/* backoff(handle, id, ns) -> 0 or a negative errno. */
static napi_value js_backoff(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	struct handle *h;
	int32_t id;
	uint64_t ns;
	CHECK(get_args(env, info, 3, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_get_value_int32(env, argv[1], &id));
	CHECK(get_count(env, argv[2], &ns) == 0 ? napi_ok : napi_generic_failure);
	return num(env, quota_backoff(h->c, id, (int64_t)ns));
}

/*
 * feedback(handle, id, [name, value, name, value, ...]) -> the number of
 * headers used, or a negative errno; ret[1] = quota_feedback_apply()'s 1
 * ("the provider's limit is lower than configured") as a second element.
 */
static napi_value js_feedback(napi_env env, napi_callback_info info)
{
	napi_value argv[3], arr;
	struct handle *h;
	int32_t id;
	uint32_t n;
	bool isarr;
	struct quota_feedback fb;
	int used = 0;
	CHECK(get_args(env, info, 3, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_get_value_int32(env, argv[1], &id));
	CHECK(napi_is_array(env, argv[2], &isarr));
	if (!isarr) {
		napi_throw_type_error(env, "EINVAL", "headers must be an array");
		return NULL;
	}
	CHECK(napi_get_array_length(env, argv[2], &n));
	quota_feedback_init(&fb, sizeof(fb));
	for (uint32_t i = 0; i + 1 < n; i += 2) {
		napi_value k, v;
		char name[64], value[256];
		size_t kl, vl;
		CHECK(napi_get_element(env, argv[2], i, &k));
		CHECK(napi_get_element(env, argv[2], i + 1, &v));
		if (napi_get_value_string_utf8(env, k, name, sizeof(name), &kl) != napi_ok ||
		    napi_get_value_string_utf8(env, v, value, sizeof(value), &vl) != napi_ok)
			continue; /* not strings: not headers we read */
		if (kl >= sizeof(name) - 1 || vl >= sizeof(value) - 1)
			continue;
		if (quota_feedback_header(&fb, name, value) == 1)
			used++;
	}
	int r = used ? quota_feedback_apply(h->c, id, &fb) : 0;
	CHECK(napi_create_array_with_length(env, 2, &arr));
	CHECK(napi_set_element(env, arr, 0, num(env, r < 0 ? r : used)));
	CHECK(napi_set_element(env, arr, 1, num(env, r > 0 ? r : 0)));
	return arr;
}

static const char *const kind_names[QUOTA_RATE_KINDS] = {
	[QUOTA_RPM] = "rpm",   [QUOTA_RPD] = "rpd",   [QUOTA_TPM] = "tpm",
	[QUOTA_TPD] = "tpd",   [QUOTA_ITPM] = "itpm", [QUOTA_ITPD] = "itpd",
	[QUOTA_OTPM] = "otpm", [QUOTA_OTPD] = "otpd",
};

static const char *const reason_names[QUOTA_REJECT_REASONS] = {
	[QUOTA_RPM] = "rpm",   [QUOTA_RPD] = "rpd",   [QUOTA_TPM] = "tpm",
	[QUOTA_TPD] = "tpd",   [QUOTA_ITPM] = "itpm", [QUOTA_ITPD] = "itpd",
	[QUOTA_OTPM] = "otpm", [QUOTA_OTPD] = "otpd",
	[QUOTA_REJECT_INFLIGHT] = "inflight", [QUOTA_REJECT_SPEND] = "spend",
	[QUOTA_REJECT_TOO_BIG] = "tooBig",    [QUOTA_REJECT_PAUSED] = "paused",
};

/* info(handle, id) -> a plain object (USD as numbers), or a negative errno. */
static napi_value js_info(napi_env env, napi_callback_info info)
{
	napi_value argv[2], obj, limits, rej, b;
	struct handle *h;
	int32_t id;
	struct quota_info qi;
	CHECK(get_args(env, info, 2, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_get_value_int32(env, argv[1], &id));
	int r = quota_info(h->c, id, &qi, sizeof(qi));
	if (r < 0)
		return num(env, r);
	CHECK(napi_create_object(env, &obj));
	CHECK(napi_create_object(env, &limits));
	CHECK(napi_create_object(env, &rej));
	napi_value name;
	CHECK(napi_create_string_utf8(env, qi.name, NAPI_AUTO_LENGTH, &name));
	set(env, obj, "name", name);
	CHECK(napi_get_boolean(env, qi.removed != 0, &b));
	set(env, obj, "removed", b);
	CHECK(napi_get_boolean(env, qi.refund_actual != 0, &b));
	set(env, obj, "refundActual", b);
	for (int k = 0; k < QUOTA_RATE_KINDS; k++) {
		const struct quota_limit_info *l = &qi.rate[k];
		napi_value o;
		if (!l->limit)
			continue;
		CHECK(napi_create_object(env, &o));
		set(env, o, "limit", u64(env, l->limit));
		set(env, o, "capacity", u64(env, l->capacity));
		set(env, o, "available", u64(env, l->available));
		set(env, o, "periodMs", num(env, (double)l->period_ns / 1e6));
		set(env, limits, kind_names[k], o);
	}
	set(env, obj, "limits", limits);
	set(env, obj, "maxInflight", u64(env, qi.max_inflight));
	set(env, obj, "inflight", u64(env, qi.inflight));
	set(env, obj, "contextWindow", u64(env, qi.context_window));
	set(env, obj, "priceInputUsdPerMtok", num(env, (double)qi.price_input_pusd / 1e6));
	set(env, obj, "priceOutputUsdPerMtok", num(env, (double)qi.price_output_pusd / 1e6));
	set(env, obj, "budgetDayUsd", num(env, (double)qi.budget_day_nusd / 1e9));
	set(env, obj, "spentDayUsd", num(env, (double)qi.spent_day_nusd / 1e9));
	set(env, obj, "budgetMonthUsd", num(env, (double)qi.budget_month_nusd / 1e9));
	set(env, obj, "spentMonthUsd", num(env, (double)qi.spent_month_nusd / 1e9));
	set(env, obj, "pausedMs", num(env, (double)qi.paused_ns / 1e6));
	set(env, obj, "admitted", u64(env, qi.admitted));
	set(env, obj, "admittedInputTokens", u64(env, qi.admitted_input_tokens));
	set(env, obj, "admittedOutputTokens", u64(env, qi.admitted_output_tokens));
	for (int k = 0; k < QUOTA_REJECT_REASONS; k++)
		set(env, rej, reason_names[k], u64(env, qi.rejected[k]));
	set(env, obj, "rejected", rej);
	set(env, obj, "reclaimed", u64(env, qi.reclaimed));
	set(env, obj, "generation", u64(env, qi.generation));
	return obj;
}

/* now(handle) -> the segment's clock in nanoseconds (a double). */
static napi_value js_now(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct handle *h;
	CHECK(get_args(env, info, 1, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	return num(env, (double)quota_now(h->c));
}

/* strerror(err) -> text */
static napi_value js_strerror(napi_env env, napi_callback_info info)
{
	napi_value argv[1], s;
	int32_t e;
	CHECK(get_args(env, info, 1, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_get_value_int32(env, argv[0], &e));
	CHECK(napi_create_string_utf8(env, quota_strerror(e), NAPI_AUTO_LENGTH, &s));
	return s;
}

/*
 * estimate(body, endpoint) -> estimated prompt tokens of a JSON request body
 * for endpoint "chat" | "completion" | "embedding", or an Error carrying the
 * reason (OpenAI's style) as a string result prefixed by "!".
 */
static napi_value js_estimate(napi_env env, napi_callback_info info)
{
	napi_value argv[2], s;
	char ep[16], err[256];
	size_t len, eplen;
	CHECK(get_args(env, info, 2, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_get_value_string_utf8(env, argv[1], ep, sizeof(ep), &eplen));
	enum est_endpoint e;
	if (!strcmp(ep, "chat"))
		e = EST_CHAT;
	else if (!strcmp(ep, "completion"))
		e = EST_COMPLETION;
	else if (!strcmp(ep, "embedding"))
		e = EST_EMBEDDING;
	else {
		napi_throw_range_error(env, "EINVAL", "endpoint: chat, completion or embedding");
		return NULL;
	}
	if (napi_get_value_string_utf8(env, argv[0], NULL, 0, &len) != napi_ok) {
		napi_throw_type_error(env, "EINVAL", "body must be a string");
		return NULL;
	}
	char *body = malloc(len + 1);
	if (!body) {
		napi_throw_error(env, "ENOMEM", "out of memory");
		return NULL;
	}
	napi_status st = napi_get_value_string_utf8(env, argv[0], body, len + 1, &len);
	cJSON *root = st == napi_ok ? cJSON_ParseWithLength(body, len) : NULL;
	free(body);
	if (st != napi_ok)
		return NULL;
	uint64_t tokens = 0;
	int r;
	if (!root) {
		snprintf(err, sizeof(err), "!the body is not valid JSON");
		r = -EINVAL;
	} else {
		err[0] = '!';
		r = est_request(root, e, &tokens, err + 1, sizeof(err) - 1);
		cJSON_Delete(root);
	}
	if (r < 0) {
		CHECK(napi_create_string_utf8(env, err, NAPI_AUTO_LENGTH, &s));
		return s;
	}
	return u64(env, tokens);
}

/* ---- module ------------------------------------------------------------ */

NAPI_MODULE_INIT()
{
	static const struct {
		const char *name;
		napi_callback fn;
	} fns[] = {
		{ "open", js_open },
		{ "close", js_close },
		{ "find", js_find },
		{ "reserve", js_reserve },
		{ "lastRetryAfterNs", js_last_retry_after_ns },
		{ "commit", js_commit },
		{ "cancel", js_cancel },
		{ "ticketInfo", js_ticket_info },
		{ "backoff", js_backoff },
		{ "feedback", js_feedback },
		{ "info", js_info },
		{ "now", js_now },
		{ "strerror", js_strerror },
		{ "estimate", js_estimate },
	};
	static const struct {
		const char *name;
		int value;
	} errnos[] = {
		{ "EAGAIN", EAGAIN }, { "E2BIG", E2BIG },     { "EDQUOT", EDQUOT },
		{ "ENOENT", ENOENT }, { "EINVAL", EINVAL },   { "ENOSPC", ENOSPC },
		{ "EBADF", EBADF },   { "EBADMSG", EBADMSG }, { "EACCES", EACCES },
		{ "EUSERS", EUSERS }, { "ECHILD", ECHILD },   { "EPERM", EPERM },
		{ "ETIMEDOUT", ETIMEDOUT }, { "EPROTONOSUPPORT", EPROTONOSUPPORT },
		{ "ENOMEM", ENOMEM },
	};
	napi_value v, errs;
	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &v) !=
			    napi_ok ||
		    napi_set_named_property(env, exports, fns[i].name, v) != napi_ok)
			return NULL;
	}
	if (napi_create_object(env, &errs) != napi_ok)
		return NULL;
	for (size_t i = 0; i < sizeof(errnos) / sizeof(errnos[0]); i++)
		set(env, errs, errnos[i].name, num(env, errnos[i].value));
	set(env, exports, "errno", errs);
	napi_value ver;
	if (napi_create_string_utf8(env, "2", NAPI_AUTO_LENGTH, &ver) == napi_ok)
		set(env, exports, "abiMajor", ver);
	return exports;
}
