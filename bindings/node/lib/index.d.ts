// SPDX-License-Identifier: MIT
// Types of the libquota Node binding (lib/index.js, lib/fetch.js).

/** What one API call may consume. Integers >= 0; requests defaults to 1. */
export interface Cost {
  requests?: number;
  inputTokens?: number;
  outputTokens?: number;
}

export interface WaitOptions {
  /** 0 = try once; a number = wait at most that long; undefined / null / Infinity = as long as it takes. */
  timeoutMs?: number | null;
  /** Aborts the wait: the promise rejects with signal.reason and nothing is held. */
  signal?: AbortSignal;
}

export interface ReserveOptions extends Cost, WaitOptions {
  /**
   * The quota's priority lane, by name (resolved once per quota and cached; NoSuchLane if the quota has no
   * such lane). Default: its lowest lane. A lower lane is admitted only while the headroom of the lanes above
   * stays free, and holds no place in line while it waits.
   */
  lane?: string;
  /** On an "auto_estimate" quota with outputTokens 0: the call's max_tokens, bounding the learned estimate. */
  maxOutputTokens?: number;
}

/** What extend() adds, or what settlePartial() lowers the ticket to: tokens only (integers >= 0). */
export interface Tokens {
  inputTokens?: number;
  outputTokens?: number;
}

export interface LimitStatus { limit: number; capacity: number; available: number; periodMs: number; }

export interface QuotaStatus {
  name: string;
  removed: boolean;
  refundActual: boolean;
  /** Only the limits the quota has: rpm, rpd, tpm, tpd, itpm, itpd, otpm, otpd. */
  limits: Partial<Record<'rpm' | 'rpd' | 'tpm' | 'tpd' | 'itpm' | 'itpd' | 'otpm' | 'otpd', LimitStatus>>;
  maxInflight: number; // 0 = no limit
  inflight: number;
  contextWindow: number; // 0 = no limit
  priceInputUsdPerMtok: number;
  priceOutputUsdPerMtok: number;
  budgetDayUsd: number; spentDayUsd: number;
  budgetMonthUsd: number; spentMonthUsd: number;
  pausedMs: number;
  admitted: number;
  admittedInputTokens: number;
  admittedOutputTokens: number;
  /** Refusals by reason: each rate kind, inflight, spend, tooBig, paused. */
  rejected: Record<string, number>;
  reclaimed: number;
  generation: number;
  /** Priority lanes of the quota (0: none). */
  lanes: number;
  learned: {
    /** "off", "learn" (suggests), "auto" ("auto_estimate": also reserves it when outputTokens is 0). */
    mode: 'off' | 'learn' | 'auto';
    /** quotad's p99 of the output tokens commits report (a bucket's upper edge); 0 = not yet (under 100
     * samples); Infinity = 2048 or more (reserve max_tokens). */
    outputTokens: number;
    /** The (decayed) weight it comes from. */
    samples: number;
    /** Live clients' output tokens in 16 half-octave buckets: <16, 16-23, 24-31, 32-47, ..., 1536-2047, 2048+. */
    outputHistogram: number[];
    /** (2.2) quotad's p50 and p99 of the prompt tokens commits report (the bucket's largest token count, e.g.
     * 1023); 0 = not yet (under 100 samples, or a 2.1 library); Infinity = 131072 or more. */
    promptTokens: { p50: number; p99: number };
    /** (2.2) quotad's p50 and p99 of actual / estimated output tokens of commits (the ratio below which the
     * bucket lies, e.g. 0.125 or 1.5); 0 = not yet (under 100 samples, or a 2.1 library); Infinity = 8 or more. */
    outputRatio: { p50: number; p99: number };
  };
  alarms: {
    /** Tickets settled more than heldAfterMs after their admission. */
    held: number;
    /** Commits whose output was above overEstimateRatio x their estimate. */
    overEstimate: number;
    heldAfterMs: number; // 0 = off
    overEstimateRatio: number; // 0 = off
    /** (2.2) Tickets open longer than heldAfterMs as of quotad's last alarm phase flip (one every heldAfterMs: a
     * ticket shows at the second flip after its admission, leaves at the first after it is settled); 0 before
     * the first flip, when the alarm is off, or with a 2.1 library. */
    heldOpen: number;
  };
}

/** Something that holds response headers. */
export type HeadersLike = Headers | Map<string, string> | Array<[string, string]> | Record<string, string | string[]>;

/** A handle on one segment; one per thread (main or worker) is enough. */
export class Client {
  /** segment: default $QUOTA_SEGMENT, else "quota". Throws QuotaError (ENOENT, EACCES, ...). */
  constructor(segment?: string);
  readonly segment: string;
  readonly closed: boolean;
  /** Throws NoSuchQuota. */
  quota(name: string): Quota;
  /** Pending reserves reject (EBADF); open tickets give back their in-flight slots. */
  close(): void;
  /** The segment's clock, in ms. */
  now(): number;
  /** Move a manual-clock segment's clock to ms (never backwards), for every process: tests, simulations. EPERM on a monotonic one. */
  setClock(ms: number): void;
}

export class Quota {
  /**
   * false (default): a waiting reserve takes its place in the library's line on a thread of the addon
   * (first come, first served across processes). true (or LIBQUOTA_NODE_POLL=1 at load): it polls on timers.
   */
  static polling: boolean;
  readonly client: Client;
  readonly name: string;
  readonly id: number;
  /** The index of a lane (0 = the highest), cached; throws NoSuchLane. */
  lane(name: string): number;
  /** Never blocks the event loop; waits in line (FIFO within the process and lane). */
  reserve(opts?: ReserveOptions): Promise<Ticket>;
  /** Now or never: throws RetryLater instead of waiting. */
  tryReserve(cost?: Cost & { lane?: string; maxOutputTokens?: number }): Ticket;
  /** The provider answered 429: pause the quota for every process of the host. */
  backoff(ms: number): void;
  /** Fold x-ratelimit-* and retry-after headers into the shared state (only tightens). */
  feedback(headers: HeadersLike): { used: number; limitBelowConfig: boolean };
  status(): QuotaStatus;
}

export class Ticket {
  readonly quota: Quota;
  /** The lane it was reserved in, null for the default (lowest) one. */
  readonly lane: string | null;
  readonly requests: number;
  /** What the ticket holds now (grown by extend(), lowered by settlePartial()). */
  readonly inputTokens: number;
  readonly outputTokens: number;
  /** How long reserve() waited, ms. */
  readonly waitedMs: number;
  /** Admission instant on the segment's clock, ms. */
  readonly admittedAt: number;
  readonly settled: boolean;
  /** Settle with the usage reported; omitted fields default to what was reserved. */
  commit(used?: Cost): void;
  /** The call never reached the provider: give everything back. */
  cancel(): void;
  /**
   * Take more tokens while the call runs (a stream outgrowing its estimate), in the ticket's lane, all or
   * nothing; waits like reserve() and rejects like it (RetryLater with retryAfterMs, TooBig, BudgetExhausted);
   * QuotaError EBUSY while another extend() of the ticket is under way.
   */
  extend(more: Tokens & WaitOptions): Promise<void>;
  /** extend() now or never: throws RetryLater instead of waiting. */
  tryExtend(more: Tokens): void;
  /**
   * Lower what the ticket holds to `estimate` (the most the call can still use in all; omitted: unchanged)
   * and give the difference back; the ticket stays open. QuotaError EINVAL above what it holds, EBUSY while
   * an extend() is under way.
   */
  settlePartial(estimate: Tokens): void;
}

export class QuotaError extends Error {
  /** The positive errno, and its name ('EAGAIN', 'E2BIG', 'EDQUOT', 'ENOENT', 'EINVAL', 'EBADF', ...). */
  errno: number;
  code: string;
}
export class RetryLater extends QuotaError { retryAfterMs: number; }
export class TooBig extends QuotaError {}
export class BudgetExhausted extends QuotaError {}
export class NoSuchQuota extends QuotaError {}
/** The quota has no lane of that name (code ENOENT). */
export class NoSuchLane extends QuotaError {}

export type Endpoint = 'chat' | 'completion' | 'embedding';
/** Conservative estimate of a request's prompt tokens (quota-proxy's estimator). Throws TypeError on a malformed field. */
export function estimateTokens(body: string | object, endpoint?: Endpoint): number;
/** Estimated tokens of a piece of text (the same estimator; never 0 for non-empty text). */
export function estimateTextTokens(text: string): number;

export interface QuotaFetchOptions {
  /** The fetch to wrap (default globalThis.fetch). */
  fetch?: typeof fetch;
  /** Longest wait for budget before answering a local 429 (default 60000). */
  timeoutMs?: number;
  /** Output tokens reserved when a request names no max_tokens (default 4096; 16 for completions). */
  defaultMaxTokens?: number;
  /** Host-wide pause on a provider 429 that has no retry-after (default 1000). */
  backoffMs?: number;
  /** Prompt tokens of a request (default: estimateTokens). */
  estimate?: (body: any, endpoint: Endpoint, text: string) => number;
  /** The quota's lane to reserve in (default its lowest); NoSuchLane at once if it has none such. */
  lane?: string;
  /**
   * A stream that names no max_tokens reserves this many output tokens (x n), and this many more each time
   * its output (estimated as it passes) outgrows them, never waiting (tryExtend: refused once, the rest is
   * debt at commit). Default 0: such streams reserve defaultMaxTokens.
   */
  streamStep?: number;
}
/** A fetch for `new OpenAI({ fetch })`: reserves, sends, commits the usage reported. */
export function createQuotaFetch(quota: Quota, opts?: QuotaFetchOptions): typeof fetch;

export const errno: Record<string, number>;
