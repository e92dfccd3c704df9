/* SPDX-License-Identifier: MIT */
/*
 * estimate.h - a conservative estimate of the prompt tokens of an OpenAI-style
 * request, without the provider's vocabulary. Used by quota-proxy (before it
 * reserves), quota-worker and the demo; measured against real BPE tokenizers
 * on tests/estimate/corpus (docs/BENCHMARKS.md, "Token estimation").
 *
 * "Conservative" means: meant never to be below what a byte-level BPE
 * tokenizer of the o200k / Llama 3 family counts, and on the corpus at most
 * ~15 % above it on average. A reservation that is too high is refunded at
 * commit; one that is too low is a 429 waiting to happen.
 */
#ifndef QUOTA_TOOLS_ESTIMATE_H
#define QUOTA_TOOLS_ESTIMATE_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* Tokens a chat message costs besides its content (role, separators), the
 * same per-message overhead quota-sim charges. */
#define EST_MESSAGE_OVERHEAD 4
/* Tokens of the reply's priming, once per chat request. */
#define EST_REPLY_PRIMING 3
/* An image whose size is unknown, at detail "high" or "auto": the largest
 * tiling OpenAI documents (2048 x 768 -> 8 tiles of 170, plus 85). */
#define EST_IMAGE_HIGH 1445
/* An image at detail "low": a flat 85. */
#define EST_IMAGE_LOW 85

/* Which request body est_request() reads. */
enum est_endpoint {
	EST_CHAT,       /* /v1/chat/completions: messages, tools, response_format */
	EST_COMPLETION, /* /v1/completions: prompt */
	EST_EMBEDDING,  /* /v1/embeddings: input */
};

/* Estimated tokens of @n bytes of UTF-8 text (invalid bytes count as one
 * token each). Never 0 for non-empty text. */
uint64_t est_text(const char *s, size_t n);

/*
 * Estimated prompt tokens of the request @root (a parsed JSON body) for
 * @endpoint. Returns 0 and sets *@ret, or -EINVAL with a message in @err
 * (OpenAI's style: names the field) when a field the estimate reads has the
 * wrong shape. Sums saturate at 2^62.
 */
int est_request(const cJSON *root, enum est_endpoint endpoint, uint64_t *ret, char *err,
		size_t errsz);

#endif
