/* SPDX-License-Identifier: MIT */
/*
 * driver.c - a standalone, deterministic driver for the libFuzzer harnesses
 * when the compiler has no -fsanitize=fuzzer (gcc): runs every file given on
 * the command line, then N mutations (bit flips, byte changes, insertions,
 * deletions, splices) of the harness's seeds from a fixed PRNG seed. Built
 * with ASan+UBSan in CI, so a crash or an out-of-bounds read fails the test.
 * With clang, meson -Dfuzz=true builds the same harnesses against libFuzzer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
/* Bytes worth inserting into JSON-ish and header-ish inputs. */
static const char alphabet[] = "{}[]\",:0123456789.eE-+ \\smhnu";
static uint64_t next(void)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	return rng;
}

int main(int argc, char **argv)
{
	long iterations = 200000;
	int files = 0;
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "-runs=", 6) == 0) {
			iterations = strtol(argv[i] + 6, NULL, 10);
			continue;
		}
		FILE *f = fopen(argv[i], "rb");
		if (!f) {
			perror(argv[i]);
			return 1;
		}
		static uint8_t buf[1 << 20];
		size_t n = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, n);
		files++;
	}
	int nseeds = 0;
	while (fuzz_seeds[nseeds])
		nseeds++;
	static uint8_t buf[8192];
	for (long it = 0; it < iterations; it++) {
		const char *seed = fuzz_seeds[next() % (uint64_t)nseeds];
		size_t n = strlen(seed);
		if (n > sizeof(buf) - 64)
			n = sizeof(buf) - 64;
		memcpy(buf, seed, n);
		int muts = 1 + (int)(next() % 8);
		for (int m = 0; m < muts; m++) {
			uint64_t r = next();
			size_t at = n ? (size_t)(r >> 8) % n : 0;
			switch (r % 6) {
			case 0: if (n) buf[at] ^= (uint8_t)(1u << ((r >> 40) % 8)); break;
			case 1: if (n) buf[at] = (uint8_t)(r >> 32); break;
			case 2: if (n < sizeof(buf) - 1) { memmove(buf + at + 1, buf + at, n - at); buf[at] = alphabet[(r >> 32) % (sizeof(alphabet) - 1)]; n++; } break;
			case 3: if (n) { memmove(buf + at, buf + at + 1, n - at - 1); n--; } break;
			case 4: n = at; break;
			default: {
				const char *other = fuzz_seeds[(r >> 16) % (uint64_t)nseeds];
				size_t on = strlen(other), from = on ? (size_t)(r >> 24) % on : 0;
				size_t len = on - from;
				if (at + len > sizeof(buf) - 1)
					len = sizeof(buf) - 1 - at;
				memcpy(buf + at, other + from, len);
				n = at + len;
			}
			}
		}
		LLVMFuzzerTestOneInput(buf, n);
	}
	printf("fuzz driver: %d files, %ld mutated inputs, no crash\n", files, iterations);
	return 0;
}
