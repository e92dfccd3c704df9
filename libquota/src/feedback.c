/* SPDX-License-Identifier: MIT */
/*
 * feedback.c - fold what a provider's response headers say into the shared
 * state. Only ever tightens: a limit the provider says is emptier than we
 * think is brought down to the provider's figure; nothing is loosened, so a
 * stale or lying header can cost throughput but never over-admit.
 */
#include <errno.h>
#include <stddef.h>

#include "internal.h"

int quota_feedback_apply(quota_client *c, int id, const struct quota_feedback *fb)
{
	if (!c || !fb || fb->size < offsetof(struct quota_feedback, reserved_))
		return -EINVAL;
	struct qc_thread *t;
	int err = qc_writer(c, &t);
	if (err < 0)
		return err;
	struct qs_quota *q = qc_quota(c, id);
	if (!q)
		return -ENOENT;
	struct qc_cfg *cf;
	err = qc_cfg_get(t, (uint32_t)id, q, &cf);
	if (err < 0)
		return err;
	if (cf->flags & QS_REC_REMOVED)
		return -ENOENT;
	if (fb->retry_after_ns > 0)
		qg_atomic_max(&q->paused_until,
			      qc_clock(c) + (fb->retry_after_ns > QC_DAY_NS ? QC_DAY_NS : fb->retry_after_ns));
	int64_t now = qc_clock(c);
	/* The provider's request and token figures are per minute (OpenAI's
	 * x-ratelimit-*-requests / -tokens): they apply to our per-minute
	 * request and total-token limits. */
	static const struct { uint32_t kind; size_t limit, remaining; } map[] = {
		{ QUOTA_RPM, offsetof(struct quota_feedback, limit_requests),
		  offsetof(struct quota_feedback, remaining_requests) },
		{ QUOTA_TPM, offsetof(struct quota_feedback, limit_tokens),
		  offsetof(struct quota_feedback, remaining_tokens) },
	};
	int lower = 0;
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		int p = cf->pos[map[i].kind];
		if (p < 0)
			continue;
		const struct qs_limit_cfg *l = &cf->lim[p];
		int64_t limit = *(const int64_t *)(const void *)((const char *)fb + map[i].limit);
		int64_t remaining = *(const int64_t *)(const void *)((const char *)fb + map[i].remaining);
		if (remaining >= 0)
			qg_tighten(q, now, l, (uint64_t)remaining);
		/* The provider enforces less than we were configured with: we
		 * cannot fix the rate from here, but the caller should know. */
		if (limit >= 0 && (uint64_t)limit < l->limit)
			lower = 1;
	}
	return lower;
}
