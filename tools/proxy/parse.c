/* SPDX-License-Identifier: MIT */
/*
 * parse.c - see parse.h. cJSON does the JSON; the checks here are the ones
 * an OpenAI-compatible server makes before it accepts a request, so that a
 * malformed body gets its 400 from the proxy and is never charged.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpbody.h"
#include "parse.h"

#define TOKENS_MAX (UINT64_C(1) << 40) /* largest max_tokens accepted */


/* Parse @n bytes as one JSON value followed by nothing but whitespace. */
static cJSON *json_parse_all(const char *s, size_t n)
{
	const char *end = NULL;
	cJSON *v = cJSON_ParseWithLengthOpts(s, n, &end, 0);

	if (!v)
		return NULL;
	for (; end && end < s + n; end++) {
		if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
			cJSON_Delete(v);
			return NULL;
		}
	}
	return v;
}

/* A JSON integer in [lo, hi] into *@v; -1 if it is not one. */
static int json_int(const cJSON *j, uint64_t lo, uint64_t hi, uint64_t *v)
{
	double d;

	if (!cJSON_IsNumber(j))
		return -1;
	d = j->valuedouble;
	if (!(d >= (double)lo && d <= (double)hi) || d != (double)(uint64_t)d)
		return -1;
	*v = (uint64_t)d;
	return 0;
}

/* The fields besides the prompt: model, stream, stream_options, max tokens. */
static int parse_fields(const cJSON *root, uint64_t default_max_tokens,
			struct proxy_request *r, char *err, size_t errsz)
{
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
	const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");

	if (!cJSON_IsString(model) || !model->valuestring[0] ||
	    strlen(model->valuestring) > PROXY_MODEL_MAX) {
		snprintf(err, errsz, "'model' must be a non-empty string of at most %d bytes",
			 PROXY_MODEL_MAX);
		return -EINVAL;
	}
	snprintf(r->model, sizeof(r->model), "%s", model->valuestring);
	if (stream && !cJSON_IsBool(stream) && !cJSON_IsNull(stream)) {
		snprintf(err, errsz, "'stream' must be a boolean");
		return -EINVAL;
	}
	r->stream = cJSON_IsTrue(stream);
	if (r->stream && r->endpoint == EST_EMBEDDING) {
		snprintf(err, errsz, "'stream' is not supported for embeddings");
		return -EINVAL;
	}
	if (so && !cJSON_IsNull(so)) {
		const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");

		if (!cJSON_IsObject(so) || (iu && !cJSON_IsBool(iu) && !cJSON_IsNull(iu))) {
			snprintf(err, errsz, "'stream_options' must be an object; "
					     "'stream_options.include_usage' a boolean");
			return -EINVAL;
		}
		r->include_usage = cJSON_IsTrue(iu);
	}
	if (!mt || cJSON_IsNull(mt))
		mt = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
	r->max_tokens = r->endpoint == EST_EMBEDDING ? 0 : default_max_tokens;
	if (r->endpoint != EST_EMBEDDING && mt && !cJSON_IsNull(mt) &&
	    json_int(mt, 1, TOKENS_MAX, &r->max_tokens) < 0) {
		snprintf(err, errsz, "'max_tokens' must be an integer in [1, 2^40]");
		return -EINVAL;
	}
	r->max_tokens_given = r->endpoint != EST_EMBEDDING && mt && !cJSON_IsNull(mt);
	return 0;
}

int proxy_parse_request(const char *body, size_t len, enum est_endpoint endpoint,
			uint64_t default_max_tokens, struct proxy_request *ret, char *err,
			size_t errsz)
{
	struct proxy_request r = { .endpoint = endpoint };
	cJSON *root;
	int rc;

	if (!body || len == 0) {
		snprintf(err, errsz, "empty request body; expected JSON");
		return -EINVAL;
	}
	if (httpbody_json_depth(body, len, PROXY_JSON_DEPTH) > PROXY_JSON_DEPTH) {
		snprintf(err, errsz, "JSON nested deeper than %d levels", PROXY_JSON_DEPTH);
		return -EINVAL;
	}
	root = json_parse_all(body, len);
	if (!root) {
		snprintf(err, errsz, "We could not parse the JSON body of your request.");
		return -EINVAL;
	}
	if (!cJSON_IsObject(root)) {
		snprintf(err, errsz, "the request body must be a JSON object");
		rc = -EINVAL;
	} else {
		rc = parse_fields(root, default_max_tokens, &r, err, errsz);
		if (rc == 0)
			rc = est_request(root, endpoint, &r.prompt_tokens, err, errsz);
	}
	cJSON_Delete(root);
	if (rc == 0)
		*ret = r;
	return rc;
}

char *proxy_stream_body(const char *body, size_t len, size_t *out_len)
{
	static const char add[] = "\"stream_options\":{\"include_usage\":true},";
	cJSON *root = cJSON_ParseWithLength(body, len), *so, *copy = NULL;
	const char *brace;
	char *out = NULL;
	size_t pre;

	if (!cJSON_IsObject(root) || !root->child)
		goto done;
	so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
	if (!so) {
		/* Insert the member after the opening brace: the rest of the
		 * body goes upstream byte for byte. */
		brace = memchr(body, '{', len);
		out = brace ? malloc(len + sizeof(add)) : NULL;
		if (!out)
			goto done;
		pre = (size_t)(brace - body) + 1;
		memcpy(out, body, pre);
		memcpy(out + pre, add, sizeof(add) - 1);
		memcpy(out + pre + sizeof(add) - 1, body + pre, len - pre);
		out[len + sizeof(add) - 1] = '\0';
		*out_len = len + sizeof(add) - 1;
		goto done;
	}
	/* Rare: the client set stream_options without include_usage (or to
	 * null). Rewrite the body with the member set. */
	copy = cJSON_IsObject(so) ? cJSON_Duplicate(so, 1) : cJSON_CreateObject();
	if (!copy)
		goto done;
	cJSON_DeleteItemFromObjectCaseSensitive(copy, "include_usage");
	if (!cJSON_AddTrueToObject(copy, "include_usage") ||
	    !cJSON_ReplaceItemInObjectCaseSensitive(root, "stream_options", copy)) {
		cJSON_Delete(copy);
		goto done;
	}
	out = cJSON_PrintUnformatted(root);
	if (out)
		*out_len = strlen(out);
done:
	cJSON_Delete(root);
	return out;
}

/* A usage object's token counts; -ENOENT if it has none. */
static int usage_of(const cJSON *usage, struct proxy_usage *u)
{
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
	struct proxy_usage v = { 0, 0 };

	if (json_int(p, 0, UINT64_C(1) << 62, &v.prompt_tokens) < 0)
		return -ENOENT;
	if (c && !cJSON_IsNull(c) && json_int(c, 0, UINT64_C(1) << 62, &v.completion_tokens) < 0)
		return -ENOENT;
	*u = v;
	return 0;
}

/*
 * The fast path: providers put "usage" last in the answer, so parse only
 * that object when it is the last member of the top-level object (the
 * bytes after it are one '}' and white space; in a string the quotes of
 * "usage" would be escaped). 0, or -ENOENT to parse the whole answer.
 */
static int usage_at_end(const char *body, size_t len, struct proxy_usage *u)
{
	static const char key[] = "\"usage\"";
	const char *p = NULL, *end;
	struct proxy_usage v;
	cJSON *obj;
	int rc;

	for (size_t i = len; i >= sizeof(key) - 1; i--)
		if (body[i - (sizeof(key) - 1)] == '"' &&
		    memcmp(body + i - (sizeof(key) - 1), key, sizeof(key) - 1) == 0) {
			p = body + i;
			break;
		}
	if (!p)
		return -ENOENT;
	while (p < body + len && isspace((unsigned char)*p))
		p++;
	if (p == body + len || *p++ != ':')
		return -ENOENT;
	while (p < body + len && isspace((unsigned char)*p))
		p++;
	if (p == body + len || *p != '{')
		return -ENOENT;
	obj = cJSON_ParseWithLengthOpts(p, (size_t)(body + len - p), &end, 0);
	if (!obj)
		return -ENOENT;
	while (end < body + len && isspace((unsigned char)*end))
		end++;
	rc = end < body + len && *end == '}' ? usage_of(obj, &v) : -ENOENT;
	for (end++; rc == 0 && end < body + len; end++)
		if (!isspace((unsigned char)*end))
			rc = -ENOENT;
	cJSON_Delete(obj);
	if (rc == 0)
		*u = v;
	return rc;
}

int proxy_parse_usage(const char *body, size_t len, struct proxy_usage *u)
{
	cJSON *root;
	int rc;

	if (!body || httpbody_json_depth(body, len, PROXY_JSON_DEPTH) > PROXY_JSON_DEPTH)
		return -ENOENT;
	if (usage_at_end(body, len, u) == 0)
		return 0;
	root = cJSON_ParseWithLength(body, len);
	rc = usage_of(cJSON_GetObjectItemCaseSensitive(root, "usage"), u);
	cJSON_Delete(root);
	return rc;
}

/* Estimated tokens of the text deltas of a chunk's choices. */
static uint64_t delta_tokens(const cJSON *choices)
{
	const cJSON *ch;
	uint64_t t = 0;

	cJSON_ArrayForEach(ch, choices)
	{
		const cJSON *delta = cJSON_GetObjectItemCaseSensitive(ch, "delta");
		const cJSON *text = cJSON_GetObjectItemCaseSensitive(delta, "content");

		if (!cJSON_IsString(text)) /* legacy completions stream "text" */
			text = cJSON_GetObjectItemCaseSensitive(ch, "text");
		if (cJSON_IsString(text)) {
			t += est_text(text->valuestring, strlen(text->valuestring));
		} else if (cJSON_GetObjectItemCaseSensitive(delta, "tool_calls")) {
			char *calls = cJSON_PrintUnformatted(
				cJSON_GetObjectItemCaseSensitive(delta, "tool_calls"));

			t += calls ? est_text(calls, strlen(calls)) : 1;
			cJSON_free(calls);
		}
	}
	return t;
}

void proxy_parse_event(const char *ev, size_t len, struct proxy_event *out)
{
	char *data = malloc(len + 1);
	size_t dn = 0, i = 0;
	cJSON *root;

	memset(out, 0, sizeof(*out));
	if (!data)
		return;
	/* Join the "data:" lines (one optional space after the colon). */
	while (i < len) {
		size_t e = i;

		while (e < len && ev[e] != '\n' && ev[e] != '\r')
			e++;
		if (e - i >= 5 && memcmp(ev + i, "data:", 5) == 0) {
			size_t s = i + 5;

			if (s < e && ev[s] == ' ')
				s++;
			if (dn)
				data[dn++] = '\n';
			memcpy(data + dn, ev + s, e - s);
			dn += e - s;
		}
		i = e;
		if (i < len && ev[i] == '\r')
			i++;
		if (i < len && ev[i] == '\n')
			i++;
	}
	data[dn] = '\0';
	if (dn == 6 && memcmp(data, "[DONE]", 6) == 0) {
		out->done = 1;
		free(data);
		return;
	}
	if (dn == 0 || httpbody_json_depth(data, dn, PROXY_JSON_DEPTH) > PROXY_JSON_DEPTH) {
		free(data);
		return;
	}
	root = cJSON_ParseWithLength(data, dn);
	free(data);
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return;
	}
	{
		const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
		const cJSON *usage = cJSON_GetObjectItemCaseSensitive(root, "usage");

		out->output_tokens = delta_tokens(choices);
		if (cJSON_IsObject(usage) && usage_of(usage, &out->u) == 0) {
			out->has_usage = 1;
			out->usage_only = cJSON_IsArray(choices) && !choices->child;
		}
	}
	cJSON_Delete(root);
}

size_t proxy_sse_next(const char *buf, size_t len, size_t *body_len)
{
	for (size_t i = 0; i + 1 < len; i++) {
		if (buf[i] == '\n' && buf[i + 1] == '\n') {
			*body_len = i;
			return i + 2;
		}
		if (buf[i] == '\r' && buf[i + 1] == '\r') {
			*body_len = i;
			return i + 2;
		}
		if (i + 3 < len && memcmp(buf + i, "\r\n\r\n", 4) == 0) {
			*body_len = i;
			return i + 4;
		}
	}
	return 0;
}
