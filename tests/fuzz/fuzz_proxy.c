/* SPDX-License-Identifier: MIT */
/* fuzz_proxy.c - quota-proxy's body parsers (tools/proxy/parse.c) and the
 * token estimator under them, on arbitrary bytes: the request of each
 * endpoint (and, when accepted, the stream body rewrite, which must stay
 * valid JSON), the answer's usage, SSE framing and events. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "parse.h"

const char *const fuzz_seeds[] = {
	"{\"model\":\"llama-4-scout\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}]}",
	"{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":\"system\",\"content\":null},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\\u00e9t\\u00e9 \\ud83d\\ude00\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\",\"detail\":\"low\"}}]}]}",
	"{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":false},\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"1\"}]}]}",
	"{\"model\":\"m\",\"prompt\":[\"a b c\",\"12345 678\"],\"max_tokens\":1}",
	"{\"model\":\"m\",\"input\":[[1,2,3],[4]]}",
	"{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}",
	"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
	"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1}}\r\n\r\ndata: [DONE]\n\n",
	": ping\n\nevent: x\ndata: {\"choices\":[{\"text\":\"\\t\\t  \\n\"}]}\n\n",
	NULL,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_request r;
	struct proxy_usage u;
	struct proxy_event ev;
	char err[256], *s, *b;
	size_t body, out_len, off;

	s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	/* Every parser on every input: a request for each endpoint ... */
	for (int ep = EST_CHAT; ep <= EST_EMBEDDING; ep++) {
		if (proxy_parse_request(s, size, (enum est_endpoint)ep, 4096, &r, err,
					sizeof(err)) != 0)
			continue;
		if (!memchr(r.model, '\0', sizeof(r.model)))
			abort();
		b = proxy_stream_body(s, size, &out_len);
		if (b) {
			cJSON *j = cJSON_ParseWithLength(b, out_len);

			/* The rewrite keeps the body JSON, with include_usage set. */
			if (!j || !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
					  cJSON_GetObjectItemCaseSensitive(j, "stream_options"),
					  "include_usage")))
				abort();
			cJSON_Delete(j);
			free(b);
		}
	}
	/* ... an answer's usage, the estimator on raw bytes ... */
	(void)proxy_parse_usage(s, size, &u);
	if (size && est_text(s, size) == 0)
		abort();
	/* ... and an SSE stream cut into events. */
	for (off = 0; off < size;) {
		size_t k = proxy_sse_next(s + off, size - off, &body);

		if (!k) {
			proxy_parse_event(s + off, size - off, &ev);
			break;
		}
		if (k > size - off || body > k)
			abort();
		proxy_parse_event(s + off, body, &ev);
		off += k;
	}
	free(s);
	return 0;
}
