/* SPDX-License-Identifier: MIT */
/*
 * addon.c - the N-API addon under the Node package: a thin, non-blocking
 * mirror of quota.h for lib/index.js, plus the token estimator of
 * tools/common/estimate.c for createQuotaFetch. Every function here returns
 * at once: quota_reserve_ex() and quota_extend() are only ever called with a
 * timeout of 0 on the JavaScript thread, which waits with timers (a call
 * that sleeps would stop the event loop). A reservation or an extension
 * that must wait (for its place in the library's line, in its lane) does so
 * on a thread of its own (wait(), waitExtend(): one detached thread per
 * waiting call, which takes a client slot of the segment while it lives)
 * and hands its result back to the JavaScript thread through a thread-safe
 * function. A ticket being extended so is `busy`: only that thread uses it.
 *
 * Lifetimes: a handle (struct handle) is shared by its Client external, the
 * externals of the tickets it issued and the waits under way, and freed when
 * the last of them is gone. client.close() detaches at once unless a wait
 * is under way; then the last wait to return closes it (quota_close() must
 * not run while another thread uses the handle). Only the JavaScript thread
 * that opened a handle sets `closing`, and after it that thread never uses
 * the handle again, so it may read `closing` without the lock. A ticket that
 * is collected while open is cancelled, so a lost promise never holds budget
 * or an in-flight slot.
 */
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "estimate.h"
#include "quota.h"

/* Largest integer a JavaScript number holds exactly. */
#define JS_INT_MAX 9007199254740991.0

struct handle {
	pthread_mutex_t lock; /* refs, waiters, closing, c between threads */
	quota_client *c;      /* NULL once closed */
	int closing;          /* client.close() ran: JavaScript uses c no more */
	unsigned waiters;     /* wait() threads inside quota_reserve() */
	unsigned refs;        /* the Client external, tickets, waits under way */
};

struct ticket {
	struct handle *h;
	int open;
	/* An extend() of this ticket is under way on a wait thread, which
	 * alone uses t meanwhile; JavaScript settles nothing until it returns
	 * (lib/index.js defers). Both under h->lock. If the ticket's external
	 * is collected meanwhile (the environment going away), `orphan` tells
	 * the thread to give the ticket back and free it. */
	int busy, orphan;
	struct quota_ticket t;
};

static void handle_ref(struct handle *h)
{
	pthread_mutex_lock(&h->lock);
	h->refs++;
	pthread_mutex_unlock(&h->lock);
}

static void handle_unref(struct handle *h)
{
	pthread_mutex_lock(&h->lock);
	unsigned left = --h->refs;
	pthread_mutex_unlock(&h->lock);
	if (left == 0) {
		quota_close(h->c);
		pthread_mutex_destroy(&h->lock);
		free(h);
	}
}

/* Detach once closing and no wait uses the handle. Called locked. */
static void close_if_idle(struct handle *h)
{
	if (h->closing && h->waiters == 0 && h->c) {
		quota_close(h->c);
		h->c = NULL;
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
	if (h->closing) {
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
	pthread_mutex_init(&h->lock, NULL);
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
	pthread_mutex_lock(&h->lock);
	h->closing = 1;
	close_if_idle(h);
	pthread_mutex_unlock(&h->lock);
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

static int get_ticket(napi_env env, napi_value v, struct ticket **ret)
{
	void *p;
	if (get_external(env, v, &p) < 0)
		return -1;
	*ret = p;
	return 0;
}


/* Cancel (if open) and free a ticket nobody holds any more. After
 * client.close() its in-flight slot is (or will be) given back by
 * quota_close(), and what it was charged stays charged. */
static void ticket_drop(struct ticket *tk)
{
	struct handle *h = tk->h;
	pthread_mutex_lock(&h->lock);
	if (tk->open && h->c && !h->closing)
		quota_cancel(h->c, &tk->t);
	pthread_mutex_unlock(&h->lock);
	handle_unref(h);
	free(tk);
}

static void ticket_finalize(napi_env env, void *data, void *hint)
{
	struct ticket *tk = data;
	(void)env, (void)hint;
	pthread_mutex_lock(&tk->h->lock);
	int busy = tk->busy;
	if (busy)
		tk->orphan = 1; /* the extending thread drops it */
	pthread_mutex_unlock(&tk->h->lock);
	if (!busy)
		ticket_drop(tk);
}

/* Whether a wait thread is extending @tk (then it must not be touched). */
static int ticket_busy(struct ticket *tk)
{
	pthread_mutex_lock(&tk->h->lock);
	int busy = tk->busy;
	pthread_mutex_unlock(&tk->h->lock);
	return busy;
}

/* The lane argument: a lane index from lane(), or -1 for the default. */
static int get_lane(napi_env env, napi_value v, uint32_t *ret)
{
	double d;
	if (napi_get_value_double(env, v, &d) != napi_ok || d != floor(d) ||
	    !(d >= -1 && d < QUOTA_LANES_MAX)) {
		napi_throw_range_error(env, "EINVAL", "lane: an index from lane(), or -1");
		return -1;
	}
	*ret = d < 0 ? QUOTA_LANE_DEFAULT : (uint32_t)d;
	return 0;
}

/* lane(handle, id, name) -> the lane's index, or a negative errno. */
static napi_value js_lane(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	struct handle *h;
	int32_t id;
	char name[64];
	size_t len;
	CHECK(get_args(env, info, 3, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	CHECK(napi_get_value_int32(env, argv[1], &id));
	if (napi_get_value_string_utf8(env, argv[2], name, sizeof(name), &len) != napi_ok) {
		napi_throw_type_error(env, "EINVAL", "lane name must be a string");
		return NULL;
	}
	if (len >= sizeof(name) - 1 || strlen(name) != len)
		return num(env, -ENOENT); /* longer than any lane name */
	return num(env, quota_lane(h->c, id, name));
}

/*
 * reserve(handle, id, requests, inputTokens, outputTokens, lane,
 * maxOutputTokens, queuedSinceNs) -> an external ticket when admitted, else a negative
 * errno; on -EAGAIN the earliest delay worth retrying after is left for
 * lastRetryAfterNs(). quota_reserve_ex() in that lane. Never waits.
 */
/* Per thread: each worker_thread has its own JavaScript thread. */
static _Thread_local int64_t tls_retry_after_ns;

/* The arguments reserve() and wait() share: id, the cost, lane,
 * maxOutputTokens and queuedSinceNs (quota_now() when the reserve began:
 * its place in a lower lane's line, kept by every try and wait of it) from
 * argv[0..6]. */
static int get_reserve_args(napi_env env, const napi_value *argv, int *id,
			    struct quota_cost *cost, struct quota_reserve_opts *o)
{
	double idd;
	int64_t since;
	quota_reserve_opts_init(o, sizeof(*o));
	if (napi_get_value_double(env, argv[0], &idd) != napi_ok ||
	    get_count(env, argv[1], &cost->requests) < 0 ||
	    get_count(env, argv[2], &cost->input_tokens) < 0 ||
	    get_count(env, argv[3], &cost->output_tokens) < 0 ||
	    get_lane(env, argv[4], &o->lane) < 0 ||
	    get_count(env, argv[5], &o->max_output_tokens) < 0)
		return -1;
	/* a time in ns: past 2^53 (104 days of uptime) a double rounds it,
	 * which moves a place in line by a few ns at most */
	if (napi_get_value_int64(env, argv[6], &since) != napi_ok) {
		napi_throw_type_error(env, "EINVAL", "queuedSinceNs must be a number");
		return -1;
	}
	o->queued_since_ns = since > 0 ? since : 0;
	*id = (idd >= 0 && idd < 1e9 && idd == floor(idd)) ? (int)idd : -1;
	return 0;
}

static napi_value js_reserve(napi_env env, napi_callback_info info)
{
	napi_value argv[8], ret;
	struct handle *h;
	int id;
	struct quota_cost cost;
	struct quota_reserve_opts o;
	CHECK(get_args(env, info, 8, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_reserve_args(env, argv + 1, &id, &cost, &o) == 0 ? napi_ok : napi_generic_failure);
	if (id < 0)
		return num(env, -ENOENT);
	struct ticket *tk = calloc(1, sizeof(*tk));
	if (!tk)
		return num(env, -ENOMEM);
	int r = quota_reserve_ex(h->c, id, &cost, 0, &o, &tk->t);
	if (r < 0) {
		tls_retry_after_ns = r == -EAGAIN ? tk->t.retry_after_ns : 0;
		free(tk);
		return num(env, r);
	}
	tk->h = h;
	tk->open = 1;
	handle_ref(h);
	if (napi_create_external(env, tk, ticket_finalize, NULL, &ret) != napi_ok) {
		quota_cancel(h->c, &tk->t);
		handle_unref(h);
		free(tk);
		return NULL;
	}
	return ret;
}

/* ---- waiting for a place in line, off the JavaScript thread ------------- */

/*
 * Per environment (the main thread's, each worker's): whether it was torn
 * down. Node frees a thread-safe function when its environment goes away,
 * whoever still holds it, so a wait thread touches its function only under
 * this lock and only while the environment lives. Held by the environment
 * and by each wait thread.
 */
struct envstate {
	pthread_mutex_t lock;
	int gone;
	unsigned refs;
};

static void envstate_unref(struct envstate *e)
{
	pthread_mutex_lock(&e->lock);
	unsigned left = --e->refs;
	pthread_mutex_unlock(&e->lock);
	if (left == 0) {
		pthread_mutex_destroy(&e->lock);
		free(e);
	}
}

/* Runs before Node frees the environment's thread-safe functions. */
static void envstate_cleanup(void *arg)
{
	struct envstate *e = arg;
	pthread_mutex_lock(&e->lock);
	e->gone = 1;
	pthread_mutex_unlock(&e->lock);
	envstate_unref(e);
}

/* One waiting reservation or extension: filled by the JavaScript thread,
 * run by its own thread, handed back through @tsfn. Owns one handle
 * reference and one envstate reference. */
struct wait {
	struct handle *h;
	struct envstate *env;
	int id;
	struct quota_cost cost;
	struct quota_reserve_opts opts;
	int64_t timeout_ns;
	napi_threadsafe_function tsfn;
	struct ticket *tk;  /* a reservation's, filled on admission (holds a handle ref) */
	struct ticket *ext; /* or the ticket to extend (busy until the thread is done) */
	int r;
	int64_t retry_after_ns;
};

static void wait_free(struct wait *w)
{
	if (w->tk)
		ticket_drop(w->tk); /* nobody took it: give it back (unless close did) */
	handle_unref(w->h);
	free(w);
}

/* On the JavaScript thread: callback(ticket external | 0 | negative errno,
 * retryAfterNs). env is NULL when the environment is going away. */
static void wait_done_js(napi_env env, napi_value cb, void *context, void *data)
{
	struct wait *w = data;
	napi_value argv[2], undef, ext;
	(void)context;
	if (!env || !cb) {
		wait_free(w);
		return;
	}
	if (w->r == 0 && w->tk && w->h->closing) /* quota_close() gave its slot back */
		w->r = -EBADF, w->tk->open = 0;
	if (w->r == 0 && w->tk) {
		if (napi_create_external(env, w->tk, ticket_finalize, NULL, &ext) != napi_ok) {
			wait_free(w);
			return;
		}
		w->tk = NULL;
		argv[0] = ext;
	} else {
		argv[0] = num(env, w->r);
	}
	argv[1] = num(env, (double)w->retry_after_ns);
	wait_free(w);
	if (napi_get_undefined(env, &undef) == napi_ok)
		napi_call_function(env, undef, cb, 2, argv, NULL);
}

static void *wait_main(void *p)
{
	struct wait *w = p;
	struct handle *h = w->h;
	napi_threadsafe_function tsfn = w->tsfn;
	/* h->c stays open while waiters > 0 (close_if_idle). */
	struct quota_ticket *t = w->ext ? &w->ext->t : &w->tk->t;
	w->r = w->ext ? quota_extend(h->c, t, &w->cost, w->timeout_ns) :
		quota_reserve_ex(h->c, w->id, &w->cost, w->timeout_ns, &w->opts, t);
	w->retry_after_ns = w->r == -EAGAIN ? t->retry_after_ns : 0;
	pthread_mutex_lock(&h->lock);
	if (w->tk) {
		w->tk->open = w->r == 0;
		if (w->r == 0 && h->closing) {
			quota_cancel(h->c, &w->tk->t);
			w->tk->open = 0;
		}
	}
	struct ticket *orphan = NULL;
	if (w->ext) {
		w->ext->busy = 0;
		if (w->ext->orphan)
			orphan = w->ext; /* its external was collected meanwhile */
		w->ext = NULL;
	}
	h->waiters--;
	close_if_idle(h);
	pthread_mutex_unlock(&h->lock);
	if (orphan)
		ticket_drop(orphan);
	struct envstate *e = w->env;
	int posted = 0;
	pthread_mutex_lock(&e->lock);
	if (!e->gone && napi_call_threadsafe_function(tsfn, w, napi_tsfn_nonblocking) == napi_ok) {
		posted = 1; /* w now belongs to wait_done_js() */
		napi_release_threadsafe_function(tsfn, napi_tsfn_release);
	}
	pthread_mutex_unlock(&e->lock);
	if (!posted)
		wait_free(w); /* the environment is gone or going */
	envstate_unref(e);
	return NULL;
}

/* Start a wait like @tmpl (its cost, opts or ext filled) with the timeout
 * @tmov (ns) on a thread of its own, calling @cb on this thread when it
 * returns: 0, or a negative errno at once (NULL with an exception pending). */
static napi_value wait_start(napi_env env, struct handle *h, const struct wait *tmpl,
			     napi_value tmov, napi_value cb)
{
	napi_value name;
	napi_valuetype t;
	double tmo;
	if (napi_get_value_double(env, tmov, &tmo) != napi_ok || napi_typeof(env, cb, &t) != napi_ok)
		return NULL;
	if (t != napi_function || !(tmo >= 0 && tmo <= 1e18)) {
		napi_throw_range_error(env, "EINVAL", "wait: bad arguments");
		return NULL;
	}
	struct wait *w = malloc(sizeof(*w));
	if (!w)
		return num(env, -ENOMEM);
	*w = *tmpl;
	struct envstate *e;
	if (napi_get_instance_data(env, (void **)&e) != napi_ok || !e) {
		free(w);
		return num(env, -EINVAL);
	}
	w->timeout_ns = (int64_t)tmo;
	w->h = h;
	w->env = e;
	if (!w->ext) {
		w->tk = calloc(1, sizeof(*w->tk));
		if (!w->tk) {
			free(w);
			return num(env, -ENOMEM);
		}
		w->tk->h = h;
	}
	if (napi_create_string_utf8(env, "libquota wait", NAPI_AUTO_LENGTH, &name) != napi_ok ||
	    napi_create_threadsafe_function(env, cb, NULL, name, 0, 1, NULL, NULL, NULL,
					    wait_done_js, &w->tsfn) != napi_ok) {
		free(w->tk);
		free(w);
		return NULL;
	}
	/* A wait keeps the process alive only while JavaScript still wants
	 * its answer: lib/index.js holds a timer for that, so a wait whose
	 * reserve was aborted does not hold the process up to its timeout. */
	napi_unref_threadsafe_function(env, w->tsfn);
	pthread_mutex_lock(&h->lock);
	h->refs += w->tk ? 2 : 1; /* the wait's, and its ticket's */
	h->waiters++;
	if (w->ext)
		w->ext->busy = 1;
	pthread_mutex_unlock(&h->lock);
	pthread_mutex_lock(&e->lock);
	e->refs++;
	pthread_mutex_unlock(&e->lock);
	pthread_attr_t attr;
	pthread_t th;
	int r = pthread_attr_init(&attr);
	if (r == 0) {
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&attr, 256 * 1024);
		r = pthread_create(&th, &attr, wait_main, w);
		pthread_attr_destroy(&attr);
	}
	if (r != 0) {
		pthread_mutex_lock(&h->lock);
		h->waiters--;
		if (w->ext)
			w->ext->busy = 0;
		pthread_mutex_unlock(&h->lock);
		napi_release_threadsafe_function(w->tsfn, napi_tsfn_abort);
		wait_free(w); /* w->tk is not open: dropping it gives nothing back */
		envstate_unref(e);
		return num(env, -r);
	}
	return num(env, 0);
}

/*
 * wait(handle, id, requests, inputTokens, outputTokens, lane,
 * maxOutputTokens, queuedSinceNs, timeoutNs, callback): quota_reserve_ex() in that lane
 * with that timeout on a thread of its own (the top lane takes its place in
 * line at once; a lower lane sleeps until its lane would admit it, holding
 * nothing); callback(ticket | negative errno, retryAfterNs) later on this
 * thread. Returns 0 when started, else a negative errno at once.
 */
static napi_value js_wait(napi_env env, napi_callback_info info)
{
	napi_value argv[10];
	struct handle *h;
	struct wait w = { 0 };
	CHECK(get_args(env, info, 10, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_reserve_args(env, argv + 1, &w.id, &w.cost, &w.opts) == 0 ? napi_ok :
									      napi_generic_failure);
	if (w.id < 0)
		return num(env, -ENOENT);
	return wait_start(env, h, &w, argv[8], argv[9]);
}

/* The two token counts of an extension or of a partial settle. */
static int get_tokens(napi_env env, const napi_value *argv, struct quota_cost *c)
{
	return get_count(env, argv[0], &c->input_tokens) < 0 ||
	       get_count(env, argv[1], &c->output_tokens) < 0 ? -1 : 0;
}

/* An open ticket that no thread is extending, or a negative errno. */
static int usable(struct ticket *tk)
{
	if (tk->h->closing)
		return -EBADF;
	if (!tk->open)
		return -EINVAL;
	return ticket_busy(tk) ? -EBUSY : 0;
}

/*
 * waitExtend(ticket, inputTokens, outputTokens, timeoutNs, callback):
 * quota_extend() with that timeout on a thread of its own, in the ticket's
 * lane; callback(0 | negative errno, retryAfterNs). The ticket is busy
 * meanwhile (commit, cancel, extend and settlePartial answer -EBUSY).
 * Returns 0 when started, else a negative errno at once.
 */
static napi_value js_wait_extend(napi_env env, napi_callback_info info)
{
	napi_value argv[5];
	struct ticket *tk;
	struct wait w = { 0 };
	CHECK(get_args(env, info, 5, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_ticket(env, argv[0], &tk) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_tokens(env, argv + 1, &w.cost) == 0 ? napi_ok : napi_generic_failure);
	int r = usable(tk);
	if (r < 0)
		return num(env, r);
	w.ext = tk;
	return wait_start(env, tk->h, &w, argv[3], argv[4]);
}

/* extend(ticket, inputTokens, outputTokens) -> 0 or a negative errno (on
 * -EAGAIN, lastRetryAfterNs()). Never waits. */
static napi_value js_extend(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	struct ticket *tk;
	struct quota_cost more = { 0, 0, 0 };
	CHECK(get_args(env, info, 3, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_ticket(env, argv[0], &tk) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_tokens(env, argv + 1, &more) == 0 ? napi_ok : napi_generic_failure);
	int r = usable(tk);
	if (r == 0)
		r = quota_extend(tk->h->c, &tk->t, &more, 0);
	tls_retry_after_ns = r == -EAGAIN ? tk->t.retry_after_ns : 0;
	return num(env, r);
}

/* The arguments of commit() and settlePartial(): (ticket, requests,
 * inputTokens, outputTokens). 0 with *@tk and *@c set, a negative errno for
 * a ticket that cannot be settled now, or 1 with an exception pending. */
static int get_settle_args(napi_env env, napi_callback_info info, struct ticket **tk,
			   struct quota_cost *c)
{
	napi_value argv[4];
	if (get_args(env, info, 4, argv) < 0 || get_ticket(env, argv[0], tk) < 0 ||
	    get_count(env, argv[1], &c->requests) < 0 || get_tokens(env, argv + 2, c) < 0)
		return 1;
	return usable(*tk);
}

/* settlePartial(ticket, requests, inputTokens, outputTokens) -> 0 or a
 * negative errno: the ticket's estimate lowered to that (requests: the
 * ticket's). */
static napi_value js_settle_partial(napi_env env, napi_callback_info info)
{
	struct ticket *tk;
	struct quota_cost est;
	int r = get_settle_args(env, info, &tk, &est);
	if (r > 0)
		return NULL;
	return num(env, r < 0 ? r : quota_settle_partial(tk->h->c, &tk->t, &est));
}

static napi_value js_last_retry_after_ns(napi_env env, napi_callback_info info)
{
	(void)info;
	return num(env, (double)tls_retry_after_ns);
}

/* commit(ticket, requests, inputTokens, outputTokens) -> 0 or a negative
 * errno (-EBUSY while an extension waits). */
static napi_value js_commit(napi_env env, napi_callback_info info)
{
	struct ticket *tk;
	struct quota_cost used;
	int r = get_settle_args(env, info, &tk, &used);
	if (r > 0)
		return NULL;
	if (r == 0 && (r = quota_commit(tk->h->c, &tk->t, &used)) == 0)
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
	int r = usable(tk);
	if (r < 0)
		return num(env, r);
	r = quota_cancel(tk->h->c, &tk->t);
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

/* A learned bucket edge of struct quota_info as a number: 0 = not yet,
 * UINT64_MAX (the open last bucket) = Infinity; tokens as they are (the
 * bucket's largest value), a ratio (in 1/256) as the one below which its
 * bucket lies, as quotactl and the metrics show it. */
static napi_value learned_edge(napi_env env, uint64_t v, bool ratio)
{
	if (v == UINT64_MAX)
		return num(env, INFINITY);
	return ratio && v ? num(env, (double)(v + 1) / 256) : u64(env, v);
}

/* { p50, p99 } of two learned edges. */
static napi_value learned_pair(napi_env env, uint64_t p50, uint64_t p99, bool ratio)
{
	napi_value o;
	if (napi_create_object(env, &o) != napi_ok)
		return NULL;
	set(env, o, "p50", learned_edge(env, p50, ratio));
	set(env, o, "p99", learned_edge(env, p99, ratio));
	return o;
}

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
	memset(&qi, 0, sizeof(qi));
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
	/* 2.1 (zero from a library that fills only 2.0's struct) */
	napi_value learn, hist, alarms, s;
	set(env, obj, "lanes", u64(env, qi.lanes));
	static const char *const learn_modes[] = { "off", "learn", "auto" };
	CHECK(napi_create_string_utf8(env, qi.learn < 3 ? learn_modes[qi.learn] : "unknown",
				      NAPI_AUTO_LENGTH, &s));
	CHECK(napi_create_object(env, &learn));
	set(env, learn, "mode", s);
	/* UINT64_MAX: "2048 or more" (the caller's max_tokens): Infinity */
	set(env, learn, "outputTokens", learned_edge(env, qi.learned_output, false));
	set(env, learn, "samples", u64(env, qi.learned_samples));
	CHECK(napi_create_array_with_length(env, 16, &hist));
	for (uint32_t i = 0; i < 16; i++)
		CHECK(napi_set_element(env, hist, i, u64(env, qi.output_hist[i])));
	set(env, learn, "outputHistogram", hist);
	/* 2.2 (zero from a 2.1 library: not yet) */
	set(env, learn, "promptTokens", learned_pair(env, qi.learned_input_p50, qi.learned_input_p99, false));
	set(env, learn, "outputRatio", learned_pair(env, qi.learned_ratio_p50, qi.learned_ratio_p99, true));
	set(env, obj, "learned", learn);
	CHECK(napi_create_object(env, &alarms));
	set(env, alarms, "held", u64(env, qi.alarm_held));
	set(env, alarms, "overEstimate", u64(env, qi.alarm_over));
	set(env, alarms, "heldAfterMs", num(env, (double)qi.alarm_held_ns / 1e6));
	set(env, alarms, "overEstimateRatio", num(env, (double)qi.alarm_over_pct / 100));
	/* 2.2: as of quotad's last phase flip (0 before the first, and from a
	 * 2.1 library) */
	set(env, alarms, "heldOpen", u64(env, qi.held_open));
	set(env, obj, "alarms", alarms);
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

/* clockSet(handle, ns) -> 0 or a negative errno (-EPERM: not a manual clock). */
static napi_value js_clock_set(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	struct handle *h;
	uint64_t ns;
	CHECK(get_args(env, info, 2, argv) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_handle(env, argv[0], &h) == 0 ? napi_ok : napi_generic_failure);
	CHECK(get_count(env, argv[1], &ns) == 0 ? napi_ok : napi_generic_failure);
	return num(env, quota_clock_set(h->c, (int64_t)ns));
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

/* A copy of the string @v (free it), its length in *@len; NULL with an
 * exception pending (a TypeError saying @what for a non-string). */
static char *get_text(napi_env env, napi_value v, const char *what, size_t *len)
{
	if (napi_get_value_string_utf8(env, v, NULL, 0, len) != napi_ok) {
		napi_throw_type_error(env, "EINVAL", what);
		return NULL;
	}
	char *s = malloc(*len + 1);
	if (!s) {
		napi_throw_error(env, "ENOMEM", "out of memory");
		return NULL;
	}
	if (napi_get_value_string_utf8(env, v, s, *len + 1, len) != napi_ok) {
		free(s);
		return NULL;
	}
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
	char *body = get_text(env, argv[0], "body must be a string", &len);
	if (!body)
		return NULL;
	cJSON *root = cJSON_ParseWithLength(body, len);
	free(body);
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

/* estimateText(text) -> estimated tokens of a piece of text (est_text()). */
static napi_value js_estimate_text(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	size_t len;
	CHECK(get_args(env, info, 1, argv) == 0 ? napi_ok : napi_generic_failure);
	char *s = get_text(env, argv[0], "text must be a string", &len);
	if (!s)
		return NULL;
	uint64_t n = est_text(s, len);
	free(s);
	return u64(env, n);
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
		{ "wait", js_wait },
		{ "lane", js_lane },
		{ "extend", js_extend },
		{ "waitExtend", js_wait_extend },
		{ "settlePartial", js_settle_partial },
		{ "clockSet", js_clock_set },
		{ "commit", js_commit },
		{ "cancel", js_cancel },
		{ "ticketInfo", js_ticket_info },
		{ "backoff", js_backoff },
		{ "feedback", js_feedback },
		{ "info", js_info },
		{ "now", js_now },
		{ "strerror", js_strerror },
		{ "estimate", js_estimate },
		{ "estimateText", js_estimate_text },
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
		{ "ENOMEM", ENOMEM }, { "EBUSY", EBUSY },
	};
	napi_value v, errs;
	struct envstate *e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	pthread_mutex_init(&e->lock, NULL);
	e->refs = 1;
	if (napi_set_instance_data(env, e, NULL, NULL) != napi_ok ||
	    napi_add_env_cleanup_hook(env, envstate_cleanup, e) != napi_ok) {
		envstate_unref(e);
		return NULL;
	}
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
