#!/bin/bash
# SPDX-License-Identifier: MIT
#
# endpoints.sh - quota-proxy's other metered endpoints, /v1/completions and
# /v1/embeddings, against a mock upstream (mock_upstream.py: quota-sim serves
# only chat): each is reserved, relayed unchanged and committed at the usage
# the upstream reported; a request that can never fit is refused locally
# (400 context_length_exceeded) without reaching the upstream.
# Every process started is stopped and the segment removed, also on failure.
#
# Usage: endpoints.sh QUOTAD QUOTA-PROXY QUOTACTL
set -u
QUOTAD=$1 PROXY=$2 QUOTACTL=$3
command -v curl >/dev/null || { echo "SKIP: curl is needed"; exit 77; }
[ -x /usr/bin/python3 ] || { echo "SKIP: /usr/bin/python3 is needed"; exit 77; }

# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$(dirname "$0")/../harness.sh" endpoints

fails=0 passes=0
ok() { echo "ok - $*"; passes=$((passes + 1)); }
nok() { echo "not ok - $*"; fails=$((fails + 1)); }

cat >"$tmp/quota.json" <<JSON
{ "segment": "$seg",
  "quotas": { "emb": { "rpm": 6000, "tpm": 900000, "context_window": 4096, "burst": 1 } } }
JSON
start_quotad "$QUOTAD" --socket "$tmp/quotad.sock"

/usr/bin/python3 "$(dirname "$0")/mock_upstream.py" >"$tmp/up.port" 2>"$tmp/up.err" &
pids+=($!)
uport=$(wait_line "$tmp/up.port" $!) || die "the mock upstream did not start"

"$PROXY" --upstream "http://127.0.0.1:$uport" -p 0 -S "$seg" --quiet >"$tmp/proxy.port" 2>"$tmp/proxy.err" &
pids+=($!)
port=$(wait_line "$tmp/proxy.port" $!) || die "quota-proxy did not start"

# jnum FIELD: a top-level number of quota "emb" in quotactl's JSON (no jq).
jnum() {
	"$QUOTACTL" --segment "$seg" status --json | grep -o "\"$1\":[0-9.e+-]*" | head -n 1 | cut -d: -f2
}
post() { # PATH BODY: sets $status and $body
	status=$(curl -s -o "$tmp/body" -w '%{http_code}' -H 'Authorization: Bearer sk-e' \
		-H 'Content-Type: application/json' --data-binary "$2" "http://127.0.0.1:$port$1")
	body=$(cat "$tmp/body")
}

post /v1/completions '{"model":"emb","prompt":"Say hello.","max_tokens":8}'
[ "$status" = 200 ] && [[ $body == *'"text": "hello"'* || $body == *'"text":"hello"'* ]] &&
	ok "completion relayed ($status)" || nok "completion: HTTP $status: $body"
[ "$(jnum admitted)" = 1 ] && ok "completion reserved" || nok "admitted $(jnum admitted), want 1"
[ "$(jnum admitted_input_tokens)" = 11 ] && [ "$(jnum admitted_output_tokens)" = 5 ] &&
	ok "completion committed at the reported usage (11 + 5)" ||
	nok "committed $(jnum admitted_input_tokens) + $(jnum admitted_output_tokens), want 11 + 5"

post /v1/embeddings '{"model":"emb","input":["a first text","a second one"]}'
[ "$status" = 200 ] && [[ $body == *embedding* ]] && ok "embeddings relayed ($status)" ||
	nok "embeddings: HTTP $status: $body"
[ "$(jnum admitted)" = 2 ] && ok "embeddings reserved" || nok "admitted $(jnum admitted), want 2"
[ "$(jnum admitted_input_tokens)" = 20 ] && [ "$(jnum admitted_output_tokens)" = 5 ] &&
	ok "embeddings committed at the reported usage (9 prompt tokens, no output)" ||
	nok "committed $(jnum admitted_input_tokens) + $(jnum admitted_output_tokens), want 20 + 5"

big=$(head -c 40000 /dev/zero | tr '\0' 'a')
post /v1/embeddings "{\"model\":\"emb\",\"input\":\"$big\"}"
[ "$status" = 400 ] && [[ $body == *context_length_exceeded* ]] &&
	ok "an input that can never fit is refused locally (400)" || nok "huge input: HTTP $status: $body"
[ "$(jnum admitted)" = 2 ] && ok "nothing reserved for it" || nok "admitted $(jnum admitted), want 2"
[ "$(jnum inflight)" = 0 ] && ok "nothing left in flight" || nok "in flight $(jnum inflight)"

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
