# SPDX-License-Identifier: MIT
"""httpx transports that share a quota before every LLM API call.

    import httpx, openai, libquota
    from libquota.httpx import QuotaTransport
    q = libquota.Client().quota("llama-4-scout")
    client = openai.OpenAI(http_client=httpx.Client(transport=QuotaTransport(q)))

For each POST to .../chat/completions, .../completions or .../embeddings
with a JSON body, the transport reserves 1 request, the estimated prompt
tokens and max_tokens (or max_completion_tokens; else ``default_max_tokens``)
x n, waiting up to ``max_wait`` seconds in line; forwards the request; and
settles by the answer:

- 2xx: commits the response's ``usage`` (for a stream, its final usage
  chunk: the transport asks for it with stream_options.include_usage and
  drops that chunk again if the caller did not ask for it); without usage,
  commits the estimate (no refund).
- 429: the quota is paused host-wide (quota.backoff) for the answer's
  retry-after, else x-ratelimit-reset-requests, else 1 s; the ticket is
  cancelled (a refused request is not charged) and the 429 passed on.
- any other answer: cancelled. No answer: cancelled if the connection was
  never made, else the estimate is committed (it may have been charged).

Every answer's x-ratelimit-* headers are folded in (quota.feedback). Local
refusals look like the provider's: RetryLater is a 429 with retry-after-ms
and retry-after (the SDK waits and retries), BudgetExhausted a 429
insufficient_quota with x-should-retry: false, TooBig a 400
context_length_exceeded. Other requests pass through untouched.

libquota 2.1: ``lane=`` reserves in one of the quota's priority lanes
(QuotaTransport(q, lane="batch")); ``stream_step=N`` makes a stream that
sets no max_tokens reserve N output tokens and N more each time its text
outgrows what it holds (Ticket.extend without waiting, as quota-proxy's
--stream-step: refused, the stream goes on and what it uses beyond is
charged at commit).
"""

import json
import math

import httpx

import libquota

__all__ = ["QuotaTransport", "AsyncQuotaTransport", "estimate_prompt_tokens"]

_METERED = ("/chat/completions", "/completions", "/embeddings")
_MESSAGE_OVERHEAD = 4  # tokens a chat message costs besides its content
_REPLY_PRIMING = 3


def _text_tokens(s):
    # Byte-level BPE vocabularies average ~4 bytes a token on English prose
    # and ~3 on code; 3 bytes a token (rounded up) errs on the high side.
    return math.ceil(len(s.encode("utf-8")) / 3) if s else 0


def _content_tokens(content):
    if content is None:
        return 0
    if isinstance(content, str):
        return _text_tokens(content)
    n = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                if part.get("type") == "image_url":
                    n += 1445  # the largest tiling of a high-detail image
                else:
                    n += _text_tokens(part.get("text") or "")
            elif isinstance(part, str):
                n += _text_tokens(part)
    return n


def estimate_prompt_tokens(body, path):
    """A conservative estimate of the prompt tokens of an OpenAI-style JSON
    request @body (a dict) for the endpoint @path: per chat message 4 plus
    ceil(UTF-8 bytes / 3) of its text, 1445 per image, 3 for the reply's
    priming; tools and response_format count as text. Pass your own
    ``estimate=`` callable to the transport for a real tokenizer."""
    if path.endswith("/chat/completions"):
        n = _REPLY_PRIMING
        for m in body.get("messages") or []:
            if isinstance(m, dict):
                n += _MESSAGE_OVERHEAD + _content_tokens(m.get("content"))
                for call in m.get("tool_calls") or []:
                    n += _text_tokens(json.dumps(call))
        for key in ("tools", "functions", "response_format"):
            if body.get(key):
                n += _text_tokens(json.dumps(body[key]))
        return n
    field = body.get("prompt" if path.endswith("/completions") else "input")
    if isinstance(field, list) and all(isinstance(x, int) for x in field):
        return len(field)  # one prompt of token ids
    items = field if isinstance(field, list) else [field]
    n = 0
    for it in items:
        if isinstance(it, str):
            n += _text_tokens(it)
        elif isinstance(it, list):  # token ids
            n += len(it)
    return n


def _delta_tokens(obj):
    """Estimated tokens of the text a stream chunk @obj carries: its
    choices' delta content (or legacy "text"), else their tool calls."""
    n = 0
    for ch in obj.get("choices") or []:
        if not isinstance(ch, dict):
            continue
        delta = ch.get("delta") if isinstance(ch.get("delta"), dict) else {}
        text = delta.get("content")
        if not isinstance(text, str):
            text = ch.get("text")
        if isinstance(text, str):
            n += _text_tokens(text)
        elif delta.get("tool_calls"):
            n += _text_tokens(json.dumps(delta["tool_calls"]))
    return n


class _Plan:
    """What the transport decided about one request."""

    def __init__(self, request, path, body, estimate, default_max_tokens, stream_step=0):
        self.path = path
        self.stream = bool(body.get("stream"))
        so = body.get("stream_options")
        so = so if isinstance(so, dict) else {}
        self.caller_wants_usage = bool(so.get("include_usage"))
        n = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
        self.step = 0  # output tokens each extension takes (stream_step)
        if path.endswith("/embeddings"):
            out = 0
        else:
            out = body.get("max_completion_tokens") or body.get("max_tokens")
            if not (isinstance(out, int) and out > 0):
                out = default_max_tokens
                if self.stream and stream_step:
                    out = self.step = stream_step
        self.input_tokens = max(0, int(estimate(body, path)))
        self.output_tokens = out * n
        self.request = request
        if self.stream and not self.caller_wants_usage and not path.endswith("/embeddings"):
            body = dict(body, stream_options=dict(so, include_usage=True))
            headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
            self.request = httpx.Request(request.method, request.url, headers=headers,
                                         content=json.dumps(body).encode(), extensions=request.extensions)


def _plan(request, estimate, default_max_tokens, stream_step=0):
    if request.method != "POST" or not request.url.path.endswith(_METERED):
        return None
    try:
        body = json.loads(request.content or b"")
    except (ValueError, httpx.RequestNotRead, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    return _Plan(request, request.url.path, body, estimate, default_max_tokens, stream_step)


def _refusal(request, e):
    """An OpenAI-shaped answer for a local refusal."""
    if isinstance(e, libquota.RetryLater):
        ms = max(1, math.ceil(e.retry_after * 1000))
        headers = {"retry-after-ms": str(ms), "retry-after": str(max(1, math.ceil(ms / 1000)))}
        err = {"message": "libquota: rate limit of this host reached; retry after %d ms" % ms,
               "type": "requests", "param": None, "code": "rate_limit_exceeded"}
        status = 429
    elif isinstance(e, libquota.BudgetExhausted):
        headers = {"x-should-retry": "false"}
        err = {"message": "libquota: the spend budget of this quota is reached",
               "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}
        status = 429
    else:  # TooBig
        headers = {"x-should-retry": "false"}
        err = {"message": "libquota: this request can never fit the quota (%s)" % e,
               "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
        status = 400
    return httpx.Response(status, headers=headers, json={"error": err}, request=request)


def _backoff_seconds(headers):
    for name in ("retry-after-ms", "retry-after"):
        v = headers.get(name)
        if v:
            try:
                s = float(v)
                return s / 1000 if name == "retry-after-ms" else s
            except ValueError:
                pass
    return 1.0


class _Settle:
    """Settles a ticket from the answer; shared by both transports."""

    def __init__(self, quota, ticket, plan):
        self.quota, self.ticket, self.plan = quota, ticket, plan
        self.streamed = 0  # estimated output tokens streamed so far (stream_step)
        self.refused = False  # an extension was refused: no more

    def grew(self, tokens):
        """A stream passed on @tokens more (estimated): with stream_step,
        extend the ticket by steps while the text outgrows it, never
        waiting; once refused, no more (the rest is debt at commit)."""
        self.streamed += tokens
        while not self.refused and not self.ticket.settled and self.streamed > self.ticket.output_tokens:
            try:
                self.ticket.extend(output_tokens=self.plan.step, timeout=0)
            except libquota.QuotaError:
                self.refused = True

    def headers(self, response):
        self.quota.feedback(response.headers)
        if response.status_code == 429:
            self.quota.backoff(min(_backoff_seconds(response.headers), 86400))

    def usage(self, u):
        if self.ticket.settled:
            return
        if isinstance(u, dict) and isinstance(u.get("prompt_tokens"), int):
            out = u.get("completion_tokens")
            self.ticket.commit(input_tokens=u["prompt_tokens"],
                               output_tokens=out if isinstance(out, int) and out >= 0 else 0)

    def body(self, content):
        try:
            self.usage(json.loads(content).get("usage"))
        except (ValueError, AttributeError):
            pass
        self.finish()

    def finish(self):
        if not self.ticket.settled:
            # No usage seen: the estimate, no refund; a stream that outgrew
            # its steps, what it streamed.
            self.ticket.commit(output_tokens=max(self.ticket.output_tokens, self.streamed))

    def cancel(self):
        if not self.ticket.settled:
            self.ticket.cancel()


class _SSE:
    """Reads a server-sent-events stream chunk by chunk: finds the usage
    chunk, and drops it when the caller did not ask for it."""

    def __init__(self, settle):
        self.settle, self.buf = settle, b""

    def feed(self, chunk):
        self.buf += chunk
        out = []
        while True:
            cut = [i for i in (self.buf.find(b"\n\n"), self.buf.find(b"\r\n\r\n")) if i >= 0]
            if not cut:
                break
            i = min(cut)
            sep = 4 if self.buf[i:i + 4] == b"\r\n\r\n" else 2
            event, self.buf = self.buf[:i + sep], self.buf[i + sep:]
            out.append(self.event(event))
        return b"".join(out)

    def event(self, event):
        data = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data.startswith(b"{"):
            return event
        try:
            obj = json.loads(data)
        except ValueError:
            return event
        if not isinstance(obj, dict):
            return event
        if self.settle.plan.step:
            self.settle.grew(_delta_tokens(obj))
        u = obj.get("usage")
        if u:
            self.settle.usage(u)
            if not self.settle.plan.caller_wants_usage and not obj.get("choices"):
                return b""
        return event

    def end(self):
        rest, self.buf = self.buf, b""
        return rest


def _passed_on(response, request, stream):
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, stream=stream, request=request,
                          extensions=response.extensions)


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, response, settle):
        self.response, self.settle, self.sse = response, settle, _SSE(settle)

    def __iter__(self):
        for chunk in self.response.iter_bytes():
            out = self.sse.feed(chunk)
            if out:
                yield out
        rest = self.sse.end()
        if rest:
            yield rest
        self.settle.finish()

    def close(self):
        self.response.close()
        self.settle.finish()  # a caller that stopped reading: the estimate


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, response, settle):
        self.response, self.settle, self.sse = response, settle, _SSE(settle)

    async def __aiter__(self):
        async for chunk in self.response.aiter_bytes():
            out = self.sse.feed(chunk)
            if out:
                yield out
        rest = self.sse.end()
        if rest:
            yield rest
        self.settle.finish()

    async def aclose(self):
        await self.response.aclose()
        self.settle.finish()


class _Options:
    """The arguments both transports take (see QuotaTransport)."""

    def __init__(self, quota, transport, max_wait=30.0, default_max_tokens=4096,
                 estimate=estimate_prompt_tokens, lane=None, stream_step=0):
        for name, v in (("default_max_tokens", default_max_tokens), ("stream_step", stream_step)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**40:
                raise ValueError("%s must be an integer from 0 to 2**40, not %r" % (name, v))
        if lane is not None:
            quota.lane_index(lane)  # NoSuchLane now rather than at every request
        self.quota = quota
        self.transport = transport
        self.max_wait = max_wait
        self.default_max_tokens = default_max_tokens
        self.estimate = estimate
        self.lane = lane
        self.stream_step = stream_step

    def _plan(self, request):
        return _plan(request, self.estimate, self.default_max_tokens, self.stream_step)

    def _reserve_args(self, plan):
        return dict(input_tokens=plan.input_tokens, output_tokens=plan.output_tokens, requests=1,
                    timeout=self.max_wait, lane=self.lane)


class QuotaTransport(_Options, httpx.BaseTransport):
    """An httpx transport that reserves on @quota (a libquota.Quota) before
    each metered request and settles after it (see the module's doc).

    ``transport``: the transport that sends (default httpx.HTTPTransport());
    ``max_wait``: seconds to wait in line for budget (default 30; 0 never
    waits); ``default_max_tokens``: output tokens reserved when the request
    names none (default 4096); ``estimate``: callable(body, path) -> prompt
    tokens (default estimate_prompt_tokens); ``lane``: the name of the
    quota's priority lane to reserve in (default None: its last; an unknown
    name raises libquota.NoSuchLane here); ``stream_step``: a stream that
    names no max_tokens reserves this many output tokens instead of
    default_max_tokens, and as many more each time its text outgrows them
    (default 0: off)."""

    def __init__(self, quota, transport=None, max_wait=30.0, default_max_tokens=4096,
                 estimate=estimate_prompt_tokens, *, lane=None, stream_step=0):
        super().__init__(quota, transport if transport is not None else httpx.HTTPTransport(),
                         max_wait, default_max_tokens, estimate, lane, stream_step)

    def handle_request(self, request):
        plan = self._plan(request)
        if plan is None:
            return self.transport.handle_request(request)
        try:
            ticket = self.quota.reserve(**self._reserve_args(plan))
        except (libquota.RetryLater, libquota.BudgetExhausted, libquota.TooBig) as e:
            return _refusal(request, e)
        settle = _Settle(self.quota, ticket, plan)
        try:
            response = self.transport.handle_request(plan.request)
        except httpx.ConnectError:
            settle.cancel()
            raise
        except BaseException:
            settle.finish()
            raise
        try:
            settle.headers(response)
            if not 200 <= response.status_code < 300:
                settle.cancel()
                return response
            wrapped = httpx.Response(response.status_code, headers=response.headers,
                                     stream=response.stream, request=request)
            if plan.stream:
                return _passed_on(response, request, _SyncStream(wrapped, settle))
            content = wrapped.read()
            settle.body(content)
            return _passed_on(response, request, httpx.ByteStream(content))
        except BaseException:
            settle.finish()
            raise

    def close(self):
        self.transport.close()


class AsyncQuotaTransport(_Options, httpx.AsyncBaseTransport):
    """QuotaTransport for httpx.AsyncClient (and openai.AsyncOpenAI): waits
    for budget with Quota.areserve, never blocking the event loop; a task
    cancelled while it waits holds no ticket. Same arguments (``transport``
    defaults to httpx.AsyncHTTPTransport()); a stream's extensions never
    wait either."""

    def __init__(self, quota, transport=None, max_wait=30.0, default_max_tokens=4096,
                 estimate=estimate_prompt_tokens, *, lane=None, stream_step=0):
        super().__init__(quota, transport if transport is not None else httpx.AsyncHTTPTransport(),
                         max_wait, default_max_tokens, estimate, lane, stream_step)

    async def handle_async_request(self, request):
        plan = self._plan(request)
        if plan is None:
            return await self.transport.handle_async_request(request)
        try:
            ticket = await self.quota.areserve(**self._reserve_args(plan))
        except (libquota.RetryLater, libquota.BudgetExhausted, libquota.TooBig) as e:
            return _refusal(request, e)
        settle = _Settle(self.quota, ticket, plan)
        try:
            response = await self.transport.handle_async_request(plan.request)
        except httpx.ConnectError:
            settle.cancel()
            raise
        except BaseException:
            settle.finish()
            raise
        try:
            settle.headers(response)
            if not 200 <= response.status_code < 300:
                settle.cancel()
                return response
            wrapped = httpx.Response(response.status_code, headers=response.headers,
                                     stream=response.stream, request=request)
            if plan.stream:
                return _passed_on(response, request, _AsyncStream(wrapped, settle))
            content = await wrapped.aread()
            settle.body(content)
            return _passed_on(response, request, httpx.ByteStream(content))
        except BaseException:
            settle.finish()
            raise

    async def aclose(self):
        await self.transport.aclose()
