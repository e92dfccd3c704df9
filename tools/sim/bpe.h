/* SPDX-License-Identifier: MIT */
/*
 * bpe.h - quota-sim's honest token count: byte-level BPE with a real
 * vocabulary (a tiktoken rank file, e.g. o200k_base written out by
 * tests/estimate/vocab.mjs) and the o200k pre-tokenizer, so the referee
 * counts prompt tokens the way a provider does. Independent of the
 * estimator the clients use (tools/common/estimate.c).
 */
#ifndef QUOTA_SIM_BPE_H
#define QUOTA_SIM_BPE_H

#include <stddef.h>
#include <stdint.h>

struct bpe;

/* Load the rank file @path ("<base64 bytes> <rank>" per line). NULL on
 * error, with the file, line and reason in @err. */
struct bpe *bpe_load(const char *path, char *err, size_t errsz);

/* Tokens of @n bytes of text (invalid UTF-8: one token per stray byte).
 * Safe to call from several threads at once. */
uint64_t bpe_count(const struct bpe *b, const char *text, size_t n);

/* Number of tokens in the vocabulary. */
size_t bpe_size(const struct bpe *b);

void bpe_free(struct bpe *b);

#endif
