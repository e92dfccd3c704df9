/* SPDX-License-Identifier: MIT */
/*
 * httpbody.c - see httpbody.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "httpbody.h"

int httpbody_append(char **body, size_t *len, size_t *cap, int *too_big, size_t max,
		    const char *data, size_t n)
{
	if (*too_big || n > max - *len) {
		*too_big = 1;
		return 0;
	}
	if (*len + n + 1 > *cap) {
		size_t c = *cap ? *cap : 4096;
		char *p;

		while (c < *len + n + 1)
			c *= 2;
		p = realloc(*body, c);
		if (!p)
			return -ENOMEM;
		*body = p;
		*cap = c;
	}
	memcpy(*body + *len, data, n);
	*len += n;
	(*body)[*len] = '\0';
	return 0;
}

int httpbody_json_depth(const char *s, size_t n, int limit)
{
	int depth = 0, max = 0, in_str = 0;

	for (size_t i = 0; i < n && max <= limit; i++) {
		char c = s[i];

		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = 0;
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '[' || c == '{') {
			if (++depth > max)
				max = depth;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return max;
}
