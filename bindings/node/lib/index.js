// SPDX-License-Identifier: MIT
//
// index.js - libquota for Node: Client, Quota, Ticket and the error classes
// over the N-API addon (src/addon.c), and createQuotaFetch (fetch.js). The C
// library keeps all the accounting; this layer only waits, and never on the
// event loop's thread: there the addon reserves with a timeout of 0. A
// reservation that must wait joins its quota's queue (first come, first
// served within the process); the head of the queue takes its place in the
// library's line on a thread of the addon (native.wait), or, when the budget
// is further than the wait or LIBQUOTA_NODE_POLL=1, sleeps on a timer for the
// delay the library names and tries again.
'use strict';

const path = require('node:path');
const { performance } = require('node:perf_hooks');

function loadAddon() {
  const file = process.env.LIBQUOTA_NODE_ADDON ||
    path.join(__dirname, '..', 'build', 'libquota_node.node');
  try {
    return require(file);
  } catch (e) {
    const err = new Error(`libquota: cannot load the addon ${file} (build it: see README.md): ${e.message}`);
    err.cause = e;
    throw err;
  }
}

const native = loadAddon();
const E = native.errno;
const errnoName = Object.fromEntries(Object.entries(E).map(([k, v]) => [v, k]));

/** Base class of every libquota error; `errno` is the positive errno, `code` its name. */
class QuotaError extends Error {
  constructor(errno, message) {
    super(message);
    this.name = 'QuotaError';
    this.errno = errno;
    this.code = errnoName[errno] || `E${errno}`;
  }
}
/** Not admissible within the timeout; `retryAfterMs` is the earliest delay worth retrying after. */
class RetryLater extends QuotaError {
  constructor(message, retryAfterMs) {
    super(E.EAGAIN, message);
    this.name = 'RetryLater';
    this.retryAfterMs = retryAfterMs;
  }
}
/** Can never be admitted: a cost above a limit's capacity or the context window. */
class TooBig extends QuotaError {
  constructor(message) { super(E.E2BIG, message); this.name = 'TooBig'; }
}
/** The spend budget of the current day or month is used up. */
class BudgetExhausted extends QuotaError {
  constructor(message) { super(E.EDQUOT, message); this.name = 'BudgetExhausted'; }
}
/** No quota of that name on the segment (or it was removed). */
class NoSuchQuota extends QuotaError {
  constructor(message) { super(E.ENOENT, message); this.name = 'NoSuchQuota'; }
}

function errorFor(rc, what, retryAfterMs) {
  const msg = `${what}: ${native.strerror(rc)}`;
  switch (-rc) {
    case E.EAGAIN: return new RetryLater(msg, retryAfterMs ?? 0);
    case E.E2BIG: return new TooBig(msg);
    case E.EDQUOT: return new BudgetExhausted(msg);
    case E.ENOENT: return new NoSuchQuota(msg);
    default: return new QuotaError(-rc, msg);
  }
}

function count(v, name, dflt) {
  if (v === undefined || v === null) return dflt;
  if (!Number.isSafeInteger(v) || v < 0)
    throw new RangeError(`${name} must be a non-negative integer, not ${v}`);
  return v;
}

function abortReason(signal) {
  if (signal.reason !== undefined) return signal.reason;
  const e = new Error('This operation was aborted');
  e.name = 'AbortError';
  return e;
}

/** A process's handle on one segment. One per thread (main or worker) is enough. */
class Client {
  /** @param {string} [segment] default: $QUOTA_SEGMENT, else "quota" */
  constructor(segment) {
    const name = segment ?? process.env.QUOTA_SEGMENT ?? 'quota';
    const h = native.open(name);
    if (typeof h === 'number') throw errorFor(h, `libquota: open segment '${name}'`);
    this._h = h;
    this.segment = name;
    this._quotas = new Map();
  }

  /** The quota named `name`; throws NoSuchQuota. */
  quota(name) {
    let q = this._quotas.get(name);
    if (q) return q;
    this._check();
    const id = native.find(this._h, String(name));
    if (id < 0) throw errorFor(id, `libquota: quota '${name}'`);
    q = new Quota(this, String(name), id);
    this._quotas.set(name, q);
    return q;
  }

  /** Detach. Pending reserves are refused; open tickets give back their in-flight slots. */
  close() {
    if (!this._h) return;
    for (const q of this._quotas.values()) q._closeQueue();
    native.close(this._h);
    this._h = null;
  }

  get closed() { return this._h === null; }

  /** The segment's clock, in milliseconds (a float). */
  now() { this._check(); return native.now(this._h) / 1e6; }

  _check() {
    if (!this._h) throw new QuotaError(E.EBADF, 'libquota: the client is closed');
  }
}

/** One quota of a Client. */
class Quota {
  constructor(client, name, id) {
    this.client = client;
    this.name = name;
    this.id = id;
    this._queue = [];   // waiting reserves, first come first served
    this._timer = null; // the head's retry timer (when it polls)
    this._native = null; // the waiter whose wait runs on the addon's thread
    this._keepAlive = null;
  }

  /**
   * Reserve `cost` against every limit of the quota, all or nothing.
   * timeoutMs: 0 = try once; a number = wait at most that long; undefined,
   * null or Infinity = wait as long as it takes. `signal` aborts the wait.
   * @returns {Promise<Ticket>}
   */
  reserve(cost = {}) {
    return new Promise((resolve, reject) => {
      const w = this._waiter(cost, resolve, reject);
      if (!w) return;
      // Try at once unless others wait ahead of us (they keep their place).
      if (this._queue.length === 0 || w.timeoutMs === 0) {
        const t = this._try(w);
        if (t === true) return;
        if (w.timeoutMs === 0 || t === false) return this._refuse(w);
      }
      this._enqueue(w);
    });
  }

  /** Reserve now or throw: never waits. @returns {Ticket} */
  tryReserve(cost = {}) {
    let out, err;
    const w = this._waiter({ ...cost, timeoutMs: 0, signal: undefined },
      (t) => { out = t; }, (e) => { err = e; });
    if (w && this._try(w) !== true) this._refuse(w);
    if (err) throw err;
    return out;
  }

  /** The provider answered 429: pause this quota for the whole host for `ms`. */
  backoff(ms) {
    this.client._check();
    const ns = Math.ceil(count(Math.ceil(ms), 'ms', 0) * 1e6);
    const rc = native.backoff(this.client._h, this.id, ns);
    if (rc < 0) throw errorFor(rc, `libquota: backoff '${this.name}'`);
  }

  /**
   * Fold a response's rate-limit headers (x-ratelimit-*, retry-after) into
   * the shared state (only ever tightening it). `headers`: a fetch Headers,
   * a Map, an array of [name, value] or a plain object.
   * @returns {{used: number, limitBelowConfig: boolean}}
   */
  feedback(headers) {
    this.client._check();
    const flat = [];
    const add = (k, v) => { if (v != null) flat.push(String(k), Array.isArray(v) ? v.join(', ') : String(v)); };
    if (!headers) return { used: 0, limitBelowConfig: false };
    if (typeof headers.forEach === 'function' && !Array.isArray(headers)) headers.forEach((v, k) => add(k, v));
    else if (Array.isArray(headers)) for (const [k, v] of headers) add(k, v);
    else for (const [k, v] of Object.entries(headers)) add(k, v);
    const [used, low] = native.feedback(this.client._h, this.id, flat);
    if (used < 0) throw errorFor(used, `libquota: feedback '${this.name}'`);
    return { used, limitBelowConfig: low === 1 };
  }

  /** A snapshot: limits (capacity, available), in flight, spend, counters. */
  status() {
    this.client._check();
    const r = native.info(this.client._h, this.id);
    if (typeof r === 'number') throw errorFor(r, `libquota: status '${this.name}'`);
    return r;
  }

  // ---- waiting -----------------------------------------------------------

  _waiter(cost, resolve, reject) {
    try {
      const w = {
        requests: count(cost.requests, 'requests', 1),
        inputTokens: count(cost.inputTokens, 'inputTokens', 0),
        outputTokens: count(cost.outputTokens, 'outputTokens', 0),
        timeoutMs: cost.timeoutMs ?? Infinity,
        signal: cost.signal,
        resolve, reject, done: false, start: performance.now(), retryAfterMs: 0, deadlineTimer: null, onAbort: null,
      };
      if (typeof w.timeoutMs !== 'number' || !(w.timeoutMs >= 0))
        throw new RangeError(`timeoutMs must be a number >= 0, not ${cost.timeoutMs}`);
      this.client._check();
      if (w.signal?.aborted) throw abortReason(w.signal);
      w.deadline = performance.now() + w.timeoutMs;
      return w;
    } catch (e) {
      reject(e);
      return null;
    }
  }

  // One non-blocking attempt: true (resolved), false (refused for good:
  // rejected), or the retry delay in ms (w.retryAfterMs) for -EAGAIN.
  _try(w) {
    if (!this.client._h) {
      this._finish(w, null, new QuotaError(E.EBADF, 'libquota: the client is closed'));
      return false;
    }
    const t = native.reserve(this.client._h, this.id, w.requests, w.inputTokens, w.outputTokens);
    if (typeof t !== 'number') {
      this._finish(w, new Ticket(this, t, w), null);
      return true;
    }
    if (t === -E.EAGAIN) {
      w.retryAfterMs = native.lastRetryAfterNs() / 1e6;
      return w.retryAfterMs;
    }
    this._finish(w, null, errorFor(t, `libquota: reserve '${this.name}'`));
    return false;
  }

  _refuse(w) {
    if (w.done) return;
    this._finish(w, null, errorFor(-E.EAGAIN, `libquota: reserve '${this.name}'`, w.retryAfterMs));
  }

  _finish(w, ticket, err) {
    if (w.done) return;
    w.done = true;
    if (w.deadlineTimer) clearTimeout(w.deadlineTimer);
    if (w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
    const i = this._queue.indexOf(w);
    if (i >= 0) this._queue.splice(i, 1);
    if (this._native === w) this._setNative(null); // a wait still under way cancels its ticket
    if (ticket) w.resolve(ticket); else w.reject(err);
  }

  _enqueue(w) {
    this._queue.push(w);
    if (w.timeoutMs < 2 ** 31 - 1) { // setTimeout's longest delay
      // At its deadline a waiter gets one last try, wherever it is in line
      // (the head's own wait returns by then by itself). A timer may fire a
      // little early: it counts from the loop's cached time.
      const atDeadline = () => {
        w.deadlineTimer = null;
        if (w.done || this._native === w) return;
        const left = w.deadline - performance.now();
        if (left > 0) {
          w.deadlineTimer = setTimeout(atDeadline, Math.max(1, Math.ceil(left)));
          return;
        }
        if (this._try(w) !== true) this._refuse(w);
        this._wake();
      };
      w.deadlineTimer = setTimeout(atDeadline, Math.max(1, Math.ceil(w.deadline - performance.now())));
    }
    if (w.signal) {
      w.onAbort = () => {
        this._finish(w, null, abortReason(w.signal));
        this._wake();
      };
      w.signal.addEventListener('abort', w.onAbort, { once: true });
    }
    if (this._queue.length === 1) this._pump();
  }

  // The head takes its place in the library's line on a thread of the
  // addon's (native.wait), for at most a minute at a time.
  _startWait(w, left) {
    if (Quota.polling) return false;
    w.waitStart = performance.now();
    const ns = Math.ceil(Math.min(left, 60000) * 1e6);
    const rc = native.wait(this.client._h, this.id, w.requests, w.inputTokens, w.outputTokens, ns,
      (res, retryNs) => this._waited(w, res, retryNs));
    if (rc < 0) return false;
    this._setNative(w);
    return true;
  }

  // The waiter whose wait runs on a thread; while there is one, a timer
  // that never fires keeps the process alive (the wait itself does not, so
  // that an abandoned wait holds nothing up).
  _setNative(w) {
    this._native = w;
    if (w && !this._keepAlive) this._keepAlive = setInterval(() => {}, 2 ** 30);
    if (!w && this._keepAlive) { clearInterval(this._keepAlive); this._keepAlive = null; }
  }

  _waited(w, res, retryNs) {
    if (this._native === w) this._setNative(null);
    if (typeof res !== 'number') {
      const t = new Ticket(this, res, w);
      if (!w.done) this._finish(w, t, null);
      else try { t.cancel(); } catch { /* closed */ } // aborted or refused meanwhile
    } else if (!w.done && res !== -E.EAGAIN) {
      this._finish(w, null, errorFor(res, `libquota: reserve '${this.name}'`));
    } else if (res === -E.EAGAIN) {
      w.retryAfterMs = retryNs / 1e6; // the deadline (or the minute) passed: _pump decides
      // Refused at once (the budget moved away meanwhile): the next try
      // waits on a timer, so that refusals cannot spin.
      w.pollNext = performance.now() - w.waitStart < 1;
    }
    this._pump();
  }

  _arm(ms) {
    if (this._timer) clearTimeout(this._timer);
    // setTimeout counts whole milliseconds: round up, never below 1; a long
    // pause (a backoff) is re-checked every minute.
    this._timer = setTimeout(() => this._pump(), Math.min(60000, Math.max(1, Math.ceil(ms))));
  }

  // Budget may have come back (a local settle, a waiter left): the head
  // tries again now, unless it already holds its place in line.
  _wake() {
    if (this._queue.length === 0) {
      if (this._timer) { clearTimeout(this._timer); this._timer = null; }
      return;
    }
    if (this._native !== this._queue[0]) this._arm(0);
  }

  _pump() {
    if (this._timer) { clearTimeout(this._timer); this._timer = null; }
    while (this._queue.length) {
      const w = this._queue[0];
      if (this._native === w) return;
      const r = this._try(w);
      if (r === true || r === false) continue;
      const left = w.deadline - performance.now();
      if (left <= 0) { this._refuse(w); continue; }
      // In line when the library says the budget comes within the wait;
      // else (or without a thread) try again on a timer.
      if (!w.pollNext && r <= Math.min(left, 60000) && this._startWait(w, left)) return;
      w.pollNext = false;
      return this._arm(Math.min(r, left));
    }
  }

  _closeQueue() {
    if (this._timer) { clearTimeout(this._timer); this._timer = null; }
    for (const w of [...this._queue])
      this._finish(w, null, new QuotaError(E.EBADF, 'libquota: the client was closed while waiting'));
  }
}

/** An admitted reservation: settle it once with commit() or cancel(). */
class Ticket {
  constructor(quota, ext, cost) {
    this.quota = quota;
    this._t = ext;
    this.requests = cost.requests;
    this.inputTokens = cost.inputTokens;
    this.outputTokens = cost.outputTokens;
    /** How long reserve() waited, in ms. */
    this.waitedMs = performance.now() - cost.start;
  }

  /** Whether commit() or cancel() already ran. */
  get settled() { return !native.ticketInfo(this._t).open; }

  /** When the reservation was admitted, on the segment's clock (ms). */
  get admittedAt() { return native.ticketInfo(this._t).admittedAtNs / 1e6; }

  /**
   * Settle with the usage the provider reported. Omitted fields default to
   * what was reserved (no refund); requests defaults to the reserved count.
   */
  commit(used = {}) {
    const rc = native.commit(this._t, count(used.requests, 'requests', this.requests),
      count(used.inputTokens, 'inputTokens', this.inputTokens),
      count(used.outputTokens, 'outputTokens', this.outputTokens));
    this._settled(rc, 'commit');
  }

  /** The call never reached the provider: give everything back. */
  cancel() {
    this._settled(native.cancel(this._t), 'cancel');
  }

  _settled(rc, what) {
    if (rc < 0) {
      if (rc === -E.EINVAL) throw new QuotaError(E.EINVAL, `libquota: ${what}: the ticket is already settled`);
      if (rc === -E.EBADF) throw new QuotaError(E.EBADF, `libquota: ${what}: the client is closed`);
      throw errorFor(rc, `libquota: ${what}`);
    }
    if (this.quota._queue.length) this.quota._wake();
  }
}

/** Estimated prompt tokens of a JSON request body (the estimator of quota-proxy). */
function estimateTokens(body, endpoint = 'chat') {
  const r = native.estimate(typeof body === 'string' ? body : JSON.stringify(body), endpoint);
  if (typeof r === 'string') throw new TypeError(r.slice(1));
  return r;
}

/**
 * true: waiting reserves poll on timers (try, sleep retry_after, try
 * again) instead of taking their place in line on a thread of the addon.
 * For comparison and for environments that must not start threads.
 */
Quota.polling = process.env.LIBQUOTA_NODE_POLL === '1';

module.exports = {
  Client, Quota, Ticket,
  QuotaError, RetryLater, TooBig, BudgetExhausted, NoSuchQuota,
  estimateTokens,
  errno: E,
};
// After the exports: fetch.js requires them.
module.exports.createQuotaFetch = require('./fetch.js').createQuotaFetch;
