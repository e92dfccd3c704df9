// SPDX-License-Identifier: MIT
//
// index.js - libquota for Node: Client, Quota, Ticket and the error classes
// over the N-API addon (src/addon.c), and createQuotaFetch (fetch.js). The C
// library keeps all the accounting; this layer only waits, and never on the
// event loop's thread: there the addon reserves (and extends) with a
// timeout of 0. A reservation or extension that must wait joins the queue of
// its quota's lane (a Line: first come, first served within the process);
// the head of the queue takes its place in the library's line on a thread of
// the addon (native.wait, native.waitExtend), or, when the budget is further
// than the wait or LIBQUOTA_NODE_POLL=1, sleeps on a timer for the delay the
// library names and tries again.
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
/** The quota has no lane of that name (or no lanes at all). */
class NoSuchLane extends QuotaError {
  constructor(message) { super(E.ENOENT, message); this.name = 'NoSuchLane'; }
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

  /**
   * Move a manual-clock segment's clock to `ms` (never backwards) for every
   * process on it, and wake the waits it lets through: for tests and
   * simulations. Throws QuotaError EPERM on a monotonic segment.
   */
  setClock(ms) {
    this._check();
    if (typeof ms !== 'number' || !(ms >= 0)) throw new RangeError(`setClock: ms must be a number >= 0, not ${ms}`);
    const rc = native.clockSet(this._h, Math.round(ms * 1e6));
    if (rc < 0) throw errorFor(rc, 'libquota: setClock');
    for (const q of this._quotas.values()) q._wake(); // polling heads try again now
  }

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
    this._lanes = new Map(); // lane name -> index, resolved once
    this._lines = new Map(); // lane index (-1: the default lane) -> Line
  }

  /**
   * The index of the lane named `name` (0 = the highest), resolved once and
   * cached; throws NoSuchLane (code ENOENT) if the quota has no such lane.
   */
  lane(name) {
    if (typeof name !== 'string') throw new TypeError(`lane must be a string, not ${typeof name}`);
    let i = this._lanes.get(name);
    if (i !== undefined) return i;
    this.client._check();
    i = native.lane(this.client._h, this.id, name);
    if (i === -E.ENOENT)
      throw new NoSuchLane(`libquota: quota '${this.name}' has no lane '${name}' (lanes are named in quotad's config)`);
    if (i < 0) throw errorFor(i, `libquota: lane '${name}' of '${this.name}'`);
    this._lanes.set(name, i);
    return i;
  }

  /**
   * Reserve `cost` against every limit of the quota, all or nothing, in
   * `lane` (a name; default the quota's lowest lane). timeoutMs: 0 = try
   * once; a number = wait at most that long; undefined, null or Infinity =
   * wait as long as it takes. `signal` aborts the wait. maxOutputTokens
   * bounds a learned estimate ("auto_estimate" quotas).
   * @returns {Promise<Ticket>}
   */
  reserve(cost = {}) {
    return new Promise((resolve, reject) => {
      const w = this._reserver(cost, resolve, reject);
      if (w) w.line.submit(w);
    });
  }

  /** Reserve now or throw: never waits. @returns {Ticket} */
  tryReserve(cost = {}) {
    let out, err;
    const w = this._reserver({ ...cost, timeoutMs: 0, signal: undefined },
      (t) => { out = t; }, (e) => { err = e; });
    if (w && w.line._try(w) !== true) w.line._refuse(w);
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

  /** A snapshot: limits (capacity, available), in flight, spend, counters, lanes, learning, alarms. */
  status() {
    this.client._check();
    const r = native.info(this.client._h, this.id);
    if (typeof r === 'number') throw errorFor(r, `libquota: status '${this.name}'`);
    return r;
  }

  // A waiter for reserve(): its cost, lane and what it makes when admitted.
  _reserver(cost, resolve, reject) {
    let lane = -1, laneName = null, maxOut = 0;
    try {
      if (cost.lane !== undefined && cost.lane !== null) { laneName = cost.lane; lane = this.lane(laneName); }
      maxOut = count(cost.maxOutputTokens, 'maxOutputTokens', 0);
    } catch (e) {
      reject(e);
      return null;
    }
    const op = {
      what: 'reserve',
      // w.since: its place in a lower lane's line, kept by every try and wait
      try: (w) => native.reserve(this.client._h, this.id, w.requests, w.inputTokens, w.outputTokens, lane, maxOut,
        w.since),
      wait: (w, ns, cb) => native.wait(this.client._h, this.id, w.requests, w.inputTokens, w.outputTokens,
        lane, maxOut, w.since, ns, cb),
      made: (w, ext) => new Ticket(this, ext, w, lane, laneName),
      drop: (t) => { try { t.cancel(); } catch { /* closed */ } }, // aborted or refused meanwhile
      after: () => {},
    };
    return this._line(lane)._waiter(cost, resolve, reject, op, 1);
  }

  // The line of a lane: its waiters in this process, first come, first served.
  _line(lane) {
    let l = this._lines.get(lane);
    if (!l) this._lines.set(lane, l = new Line(this, lane));
    return l;
  }

  // Budget may have come back (a local settle, a clock moved): every lane's head tries again.
  _wake() {
    for (const l of this._lines.values()) l._wake();
  }

  _closeQueue() {
    for (const l of this._lines.values()) l._close();
  }
}

/**
 * The waiters of one lane of a quota in this process, first come, first
 * served. The head waits: on a thread of the addon (op.wait: the library's
 * own wait, in the lane), or polling on a timer. Each lane has its own line
 * because the library gives lower lanes no place in line: a higher lane's
 * reservation must never queue behind a lower lane's here either. Waiters
 * are reservations and extensions of tickets of this lane alike (`op`).
 */
class Line {
  constructor(quota, lane) {
    this.quota = quota;
    this.lane = lane;
    this._queue = [];   // waiters, first come first served
    this._timer = null; // the head's retry timer (when it polls)
    this._native = null; // the waiter whose wait runs on the addon's thread
    this._keepAlive = null;
  }

  // A waiter: the cost (requests defaulting to `requests`), timeout, signal
  // and the operation; null (rejected) on a bad argument.
  _waiter(cost, resolve, reject, op, requests) {
    try {
      const w = {
        requests: count(cost.requests, 'requests', requests),
        inputTokens: count(cost.inputTokens, 'inputTokens', 0),
        outputTokens: count(cost.outputTokens, 'outputTokens', 0),
        timeoutMs: cost.timeoutMs ?? Infinity,
        signal: cost.signal, line: this, op,
        resolve, reject, done: false, start: performance.now(), retryAfterMs: 0, deadlineTimer: null, onAbort: null,
        since: 0,
      };
      if (typeof w.timeoutMs !== 'number' || !(w.timeoutMs >= 0))
        throw new RangeError(`timeoutMs must be a number >= 0, not ${cost.timeoutMs}`);
      this.quota.client._check();
      if (w.signal?.aborted) throw abortReason(w.signal);
      w.since = native.now(this.quota.client._h);
      w.deadline = performance.now() + w.timeoutMs;
      return w;
    } catch (e) {
      reject(e);
      return null;
    }
  }

  submit(w) {
    // Try at once unless others wait ahead of us (they keep their place).
    if (this._queue.length === 0 || w.timeoutMs === 0) {
      const t = this._try(w);
      if (t === true) return;
      if (w.timeoutMs === 0 || t === false) return this._refuse(w);
    }
    this._enqueue(w);
  }

  _what(w) { return `libquota: ${w.op.what} '${this.quota.name}'`; }

  // One non-blocking attempt: true (resolved), false (refused for good:
  // rejected), or the retry delay in ms (w.retryAfterMs) for -EAGAIN.
  _try(w) {
    if (!this.quota.client._h) {
      this._finish(w, null, new QuotaError(E.EBADF, 'libquota: the client is closed'));
      return false;
    }
    const t = w.op.try(w);
    if (typeof t !== 'number' || t === 0) {
      this._finish(w, w.op.made(w, t), null);
      return true;
    }
    if (t === -E.EAGAIN) {
      w.retryAfterMs = native.lastRetryAfterNs() / 1e6;
      return w.retryAfterMs;
    }
    this._finish(w, null, errorFor(t, this._what(w)));
    return false;
  }

  _refuse(w) {
    if (w.done) return;
    this._finish(w, null, errorFor(-E.EAGAIN, this._what(w), w.retryAfterMs));
  }

  _finish(w, value, err) {
    if (w.done) return;
    w.done = true;
    if (w.deadlineTimer) clearTimeout(w.deadlineTimer);
    if (w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
    const i = this._queue.indexOf(w);
    if (i >= 0) this._queue.splice(i, 1);
    if (this._native === w) this._setNative(null); // a wait still under way ends by itself
    if (err) w.reject(err); else w.resolve(value);
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
  // addon's (op.wait), for at most a minute at a time.
  _startWait(w, left) {
    if (Quota.polling) return false;
    w.waitStart = performance.now();
    const ns = Math.ceil(Math.min(left, 60000) * 1e6);
    const rc = w.op.wait(w, ns, (res, retryNs) => this._waited(w, res, retryNs));
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
    w.op.after(w);
    if (typeof res !== 'number' || res === 0) {
      const v = w.op.made(w, res);
      if (!w.done) this._finish(w, v, null);
      else w.op.drop(v);
    } else if (!w.done && res !== -E.EAGAIN) {
      this._finish(w, null, errorFor(res, this._what(w)));
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

  _close() {
    if (this._timer) { clearTimeout(this._timer); this._timer = null; }
    for (const w of [...this._queue])
      this._finish(w, null, new QuotaError(E.EBADF, 'libquota: the client was closed while waiting'));
  }
}

/** An admitted reservation: settle it once with commit() or cancel(). */
class Ticket {
  constructor(quota, ext, cost, lane = -1, laneName = null) {
    this.quota = quota;
    this._t = ext;
    this._lane = lane;
    /** The lane it was reserved in (its name), null for the default lane. */
    this.lane = laneName;
    this.requests = cost.requests;
    this.inputTokens = cost.inputTokens;
    this.outputTokens = cost.outputTokens;
    /** How long reserve() waited, in ms. */
    this.waitedMs = performance.now() - cost.start;
    this._extending = null; // the extend() under way
    this._busy = false;     // ... and its wait runs on the addon's thread
    this._pending = null;   // a settle asked for meanwhile: [native fn, args]
  }

  /** Whether commit() or cancel() already ran. */
  get settled() { return this._pending !== null || !native.ticketInfo(this._t).open; }

  /** When the reservation was admitted, on the segment's clock (ms). */
  get admittedAt() { return native.ticketInfo(this._t).admittedAtNs / 1e6; }

  /**
   * Settle with the usage the provider reported. Omitted fields default to
   * what the ticket holds (no refund); requests defaults to the reserved count.
   */
  commit(used = {}) {
    this._settle('commit', [count(used.requests, 'requests', this.requests),
      count(used.inputTokens, 'inputTokens', this.inputTokens),
      count(used.outputTokens, 'outputTokens', this.outputTokens)]);
  }

  /** The call never reached the provider: give everything back. */
  cancel() {
    this._settle('cancel', []);
  }

  /**
   * Take more tokens for this ticket while its call runs (a stream that
   * outgrows its estimate), in its lane, all or nothing; waits like
   * reserve() (timeoutMs, signal) and rejects like it (RetryLater with
   * retryAfterMs, TooBig above a limit's capacity or the context window
   * with what the ticket holds, BudgetExhausted). One at a time per ticket.
   * @returns {Promise<void>}
   */
  extend(more = {}) {
    return new Promise((resolve, reject) => {
      const w = this._extender(more, resolve, reject);
      if (w) w.line.submit(w);
    });
  }

  /** extend() now or never: throws RetryLater instead of waiting. */
  tryExtend(more = {}) {
    let err;
    const w = this._extender({ ...more, timeoutMs: 0, signal: undefined }, () => {}, (e) => { err = e; });
    if (w && w.line._try(w) !== true) w.line._refuse(w);
    if (err) throw err;
  }

  // A waiter for extend() in the ticket's lane's line, or null (rejected).
  _extender(more, resolve, reject) {
    if (this._extending)
      return reject(new QuotaError(E.EBUSY, 'libquota: extend: an extend() of this ticket is under way')), null;
    if (this.settled) return reject(new QuotaError(E.EINVAL, 'libquota: extend: the ticket is settled')), null;
    if (more.requests) return reject(new RangeError('extend: requests cannot be extended (only tokens)')), null;
    const op = {
      what: 'extend',
      try: (w) => native.extend(this._t, w.inputTokens, w.outputTokens),
      wait: (w, ns, cb) => {
        const rc = native.waitExtend(this._t, w.inputTokens, w.outputTokens, ns, cb);
        if (rc === 0) this._busy = true;
        return rc;
      },
      made: (w) => { // granted, even if the caller gave up meanwhile: the ticket holds it
        this.inputTokens += w.inputTokens;
        this.outputTokens += w.outputTokens;
      },
      drop: () => {},
      after: (w) => { // the addon's thread returned: settle what was asked meanwhile
        this._busy = false;
        if (this._extending === w) this._extending = null;
        const p = this._pending;
        if (p) try { native[p[0]](this._t, ...p[1]); } catch { /* closed */ }
      },
    };
    // Settled or given up: no longer under way, unless its wait still runs.
    let w = null;
    const over = () => { if (w && this._extending === w && !this._busy) this._extending = null; };
    w = this.quota._line(this._lane)._waiter({ ...more, requests: 0 },
      () => { over(); resolve(); }, (e) => { over(); reject(e); }, op, 0);
    if (!w) return null;
    if (w.inputTokens + w.outputTokens === 0)
      return reject(new RangeError('extend: give inputTokens or outputTokens (> 0)')), null;
    this._extending = w;
    return w;
  }

  /**
   * Mid-stream: lower what the ticket holds to `estimate` (the most the call
   * can still use in all; omitted fields: unchanged) and give the difference
   * back as a commit would; the ticket stays open. Refunds come from the last
   * piece (the last extension, else the reservation). Throws QuotaError EINVAL
   * above what the ticket holds, EBUSY while an extend() of it is under way.
   */
  settlePartial(estimate = {}) {
    const inp = count(estimate.inputTokens, 'inputTokens', this.inputTokens);
    const out = count(estimate.outputTokens, 'outputTokens', this.outputTokens);
    if (this._extending) throw new QuotaError(E.EBUSY, 'libquota: settlePartial: an extend() of this ticket is under way');
    // The library checks against what the ticket holds (which may be more
    // than this object knows: an "auto_estimate" reservation of 0 output).
    const rc = native.settlePartial(this._t, this.requests, inp, out);
    if (rc === -E.EINVAL && !this.settled)
      throw new QuotaError(E.EINVAL, `libquota: settlePartial: {inputTokens: ${inp}, outputTokens: ${out}} is ` +
        `above what the ticket holds ({inputTokens: ${this.inputTokens}, outputTokens: ${this.outputTokens}})`);
    this._check(rc, 'settlePartial');
    this.inputTokens = inp;
    this.outputTokens = out;
    if (this.quota._lines.size) this.quota._wake();
  }

  _settle(what, args) {
    if (this._pending) throw new QuotaError(E.EINVAL, `libquota: ${what}: the ticket is already settled`);
    const w = this._extending;
    if (w) {
      w.line._finish(w, null, new QuotaError(E.EINVAL, `libquota: extend: the ticket was settled (${what}) meanwhile`));
      w.line._wake();
      if (this._busy) { // the addon's thread still extends it: settle when it returns
        this._pending = [what, [...args]];
        return;
      }
    }
    this._check(native[what](this._t, ...args), what);
    if (this.quota._lines.size) this.quota._wake();
  }

  _check(rc, what) {
    if (rc < 0) {
      if (rc === -E.EINVAL)
        throw new QuotaError(E.EINVAL, `libquota: ${what}: the ticket is already settled`);
      if (rc === -E.EBADF) throw new QuotaError(E.EBADF, `libquota: ${what}: the client is closed`);
      throw errorFor(rc, `libquota: ${what}`);
    }
  }
}

/** Estimated tokens of a piece of text (the estimator of quota-proxy; never 0 for non-empty text). */
function estimateTextTokens(text) {
  if (typeof text !== 'string') throw new TypeError('estimateTextTokens: text must be a string');
  return native.estimateText(text);
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
  QuotaError, RetryLater, TooBig, BudgetExhausted, NoSuchQuota, NoSuchLane,
  estimateTokens, estimateTextTokens,
  errno: E,
};
// After the exports: fetch.js requires them.
module.exports.createQuotaFetch = require('./fetch.js').createQuotaFetch;
