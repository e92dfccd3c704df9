// SPDX-License-Identifier: MIT
// Types of the libquota Node binding (lib/index.js, lib/fetch.js).

/** What one API call may consume. Integers >= 0; requests defaults to 1. */
export interface Cost {
  requests?: number;
  inputTokens?: number;
  outputTokens?: number;
}

export interface ReserveOptions extends Cost {
  /** 0 = try once; a number = wait at most that long; undefined / null / Infinity = as long as it takes. */
  timeoutMs?: number | null;
  /** Aborts the wait: the promise rejects with signal.reason and nothing is held. */
  signal?: AbortSignal;
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
  /** Never blocks the event loop; waits in line (FIFO within the process). */
  reserve(opts?: ReserveOptions): Promise<Ticket>;
  /** Now or never: throws RetryLater instead of waiting. */
  tryReserve(cost?: Cost): Ticket;
  /** The provider answered 429: pause the quota for every process of the host. */
  backoff(ms: number): void;
  /** Fold x-ratelimit-* and retry-after headers into the shared state (only tightens). */
  feedback(headers: HeadersLike): { used: number; limitBelowConfig: boolean };
  status(): QuotaStatus;
}

export class Ticket {
  readonly quota: Quota;
  readonly requests: number;
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

export type Endpoint = 'chat' | 'completion' | 'embedding';
/** Conservative estimate of a request's prompt tokens (quota-proxy's estimator). Throws TypeError on a malformed field. */
export function estimateTokens(body: string | object, endpoint?: Endpoint): number;

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
}
/** A fetch for `new OpenAI({ fetch })`: reserves, sends, commits the usage reported. */
export function createQuotaFetch(quota: Quota, opts?: QuotaFetchOptions): typeof fetch;

export const errno: Record<string, number>;
