#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""mock_upstream.py - a minimal OpenAI-shaped upstream for quota-proxy's
tests of the endpoints quota-sim does not serve: POST /v1/completions and
POST /v1/embeddings answer with a fixed, known usage; anything else is 404.
Listens on 127.0.0.1, an ephemeral port printed alone on the first line of
stdout; stops on SIGTERM. Standard library only."""
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USAGE = {"/v1/completions": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
         "/v1/embeddings": {"prompt_tokens": 9, "total_tokens": 9}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n) or b"{}")
        if self.path not in USAGE:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/v1/completions":
            body = {"id": "cmpl-mock", "object": "text_completion", "model": req.get("model"),
                    "choices": [{"index": 0, "text": "hello", "finish_reason": "stop"}]}
        else:
            body = {"object": "list", "model": req.get("model"),
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}]}
        body["usage"] = USAGE[self.path]
        out = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
