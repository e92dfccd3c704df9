/* SPDX-License-Identifier: MIT */
/* est_lines.c - for measure.mjs: reads one JSON string per line on stdin and
 * prints est_text() of each, one number per line. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "estimate.h"

int main(void)
{
	static char line[1 << 20];

	while (fgets(line, sizeof(line), stdin)) {
		cJSON *s = cJSON_Parse(line);

		if (!cJSON_IsString(s)) {
			fprintf(stderr, "est_lines: not a JSON string: %.60s\n", line);
			return 1;
		}
		printf("%llu\n", (unsigned long long)est_text(s->valuestring, strlen(s->valuestring)));
		cJSON_Delete(s);
	}
	return 0;
}
