/* SPDX-License-Identifier: MIT */
/*
 * feedback.c - fold what a provider's response headers say into the shared
 * state. Only ever tightens: a limit the provider says is emptier than we
 * think is brought down to the provider's figure; nothing is loosened, so a
 * stale or lying header can cost throughput but never over-admit.
 */
#include <errno.h>

#include "gcra.h"
#include "internal.h"

int quota_feedback_apply(quota_client *c, int id, const struct quota_feedback *fb)
{
	if (!c || !fb)
		return -EINVAL;
	struct qs_quota *q;
	int err = qc_writable_quota(c, id, &q);
	if (err < 0)
		return err;
	if (fb->retry_after_ns > 0) {
		int r = quota_backoff(c, id, fb->retry_after_ns > QC_DAY_NS ? QC_DAY_NS : fb->retry_after_ns);
		if (r < 0)
			return r;
	}
	struct qs_quota cfg; /* a consistent copy: quotad may be reloading */
	int r = qs_quota_snapshot(q, &cfg);
	if (r < 0)
		return r;
	int64_t now = qc_clock(c);
	uint32_t n = cfg.nlimits <= QS_RATE_KINDS ? cfg.nlimits : QS_RATE_KINDS;
	int lower = 0;
	for (uint32_t k = 0; k < n; k++) {
		const struct qs_limit_cfg *l = &cfg.cfg[k];
		int64_t remaining = -1;
		/* The provider's request and token figures are per minute (OpenAI's
		 * x-ratelimit-*-requests / -tokens); apply them to our per-minute
		 * request and total-token limits. */
		if (l->period_ns != QC_MINUTE_NS)
			continue;
		int64_t limit = -1;
		if (l->kind == QUOTA_RPM)
			remaining = fb->remaining_requests, limit = fb->limit_requests;
		else if (l->kind == QUOTA_TPM)
			remaining = fb->remaining_tokens, limit = fb->limit_tokens;
		if (remaining >= 0)
			qg_tighten(q, k, now, &cfg.cfg[k], (uint64_t)remaining);
		/* The provider enforces less than we were configured with: we
		 * cannot fix the rate from here, but the caller should know. */
		if (limit >= 0 && (uint64_t)limit < l->limit)
			lower = 1;
	}
	return lower;
}
