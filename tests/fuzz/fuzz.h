/* SPDX-License-Identifier: MIT */
/* fuzz.h - the libFuzzer entry point every harness here defines. */
#ifndef QUOTA_FUZZ_H
#define QUOTA_FUZZ_H
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Seeds the standalone driver mutates (NULL-terminated). */
extern const char *const fuzz_seeds[];
#endif
