#!/bin/bash
# SPDX-License-Identifier: MIT
#
# sim_inputs.sh - quota-sim refuses bad input with the right status and an
# OpenAI-style error, and keeps serving: malformed and deep JSON, wrong types,
# out-of-range max_tokens, a prompt above the context window, a non-boolean stream, no
# or a malformed key, an oversized body, unknown paths and methods. Then a
# valid request (content given as text parts) is still served, and /stats
# counted what it saw. Raw HTTP through bash's /dev/tcp: no client needed.
#
# Usage: sim_inputs.sh QUOTA-SIM
set -u
SIM=$1

# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$(dirname "$0")/../harness.sh" siminputs

"$SIM" --context 1000 --max-body 4096 >"$tmp/port" 2>"$tmp/sim.err" &
sim_pid=$!
pids+=($!)
port=$(wait_line "$tmp/port" "$sim_pid") || die "quota-sim did not start"

fails=0 passes=0
# req METHOD PATH AUTH BODY -> sets $status and $body
req() {
	local method=$1 path=$2 auth=$3 data=$4 resp
	exec 5<>"/dev/tcp/127.0.0.1/$port" || { status=000; body=; return; }
	{
		printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n' "$method" "$path"
		[ -n "$auth" ] && printf 'Authorization: %s\r\n' "$auth"
		printf 'Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' "${#data}" "$data"
	} >&5
	resp=$(cat <&5)
	exec 5<&-
	status=$(printf '%s' "$resp" | sed -n '1s/^HTTP\/1\.[01] \([0-9]*\).*/\1/p')
	body=${resp##*$'\r\n\r\n'}
}

# expect STATUS WHAT METHOD PATH AUTH BODY [TEXT-IN-BODY]
expect() {
	local want=$1 what=$2
	req "$3" "$4" "$5" "$6"
	if [ "$status" != "$want" ]; then
		echo "not ok - $what: HTTP $status, want $want: $body"
		fails=$((fails + 1))
	elif [ -n "${7:-}" ] && [[ $body != *"$7"* ]]; then
		echo "not ok - $what: body lacks '$7': $body"
		fails=$((fails + 1))
	else
		echo "ok - $what ($status)"
		passes=$((passes + 1))
	fi
}

K='Bearer sk-inputs'
C=/v1/chat/completions
ok='{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
deep=$(printf '[%.0s' $(seq 40))$(printf ']%.0s' $(seq 40))
big=$(printf '{"model":"m","messages":[{"role":"user","content":"%05000d"}]}' 0)

expect 200 "valid request" POST $C "$K" "$ok" '"usage"'
expect 401 "no Authorization" POST $C "" "$ok" invalid_api_key
expect 401 "not a Bearer key" POST $C "Basic abc" "$ok" invalid_api_key
expect 401 "key too long" POST $C "Bearer $(printf 'k%.0s' $(seq 200))" "$ok" invalid_api_key
expect 400 "empty body" POST $C "$K" "" "empty request body"
expect 400 "not JSON" POST $C "$K" '{"model":' "not valid JSON"
expect 400 "JSON too deep" POST $C "$K" "$deep" "deeper than"
expect 400 "body not an object" POST $C "$K" '[1,2]' "JSON object"
expect 400 "no model" POST $C "$K" '{"messages":[{"role":"user","content":"x"}]}' "'model'"
expect 400 "no messages" POST $C "$K" '{"model":"m"}' "'messages'"
expect 400 "empty messages" POST $C "$K" '{"model":"m","messages":[]}' "'messages'"
expect 400 "message without role" POST $C "$K" '{"model":"m","messages":[{"content":"x"}]}' "role"
expect 400 "content a number" POST $C "$K" '{"model":"m","messages":[{"role":"user","content":5}]}' "content"
expect 400 "bad content part" POST $C "$K" '{"model":"m","messages":[{"role":"user","content":[{"type":"image"}]}]}' "content parts"
expect 400 "max_tokens 0" POST $C "$K" '{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}' max_tokens
expect 400 "max_tokens negative" POST $C "$K" '{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}' max_tokens
expect 400 "max_tokens fraction" POST $C "$K" '{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1.5}' max_tokens
expect 400 "max_tokens a string" POST $C "$K" '{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"8"}' max_tokens
expect 400 "max_tokens huge" POST $C "$K" '{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e300}' max_tokens
expect 400 "above the context window" POST $C "$K" '{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":999}' "maximum context length"
expect 400 "stream not a boolean" POST $C "$K" '{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}' "'stream'"
expect 413 "body above --max-body" POST $C "$K" "$big" "request body above"
expect 404 "unknown path" POST /v1/completions "$K" "$ok" unknown_url
expect 405 "GET on completions" GET $C "$K" "" "use POST"
expect 200 "content as text parts, max_completion_tokens" POST $C "$K" \
	'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"abcd"},{"type":"text","text":"e"}]},{"role":"assistant","content":null}],"max_completion_tokens":4}' \
	'"prompt_tokens":10'
expect 200 "health" GET /health "" "" '"ok"'
expect 200 "stats" GET /stats "" "" '"served":2'
[[ $body == *'"bad_request":18'* ]] && passes=$((passes + 1)) ||
	{ echo "not ok - stats count 18 bad requests: $body"; fails=$((fails + 1)); }
[[ $body == *'"unauthorized":3'* ]] && passes=$((passes + 1)) ||
	{ echo "not ok - stats count 3 unauthorized: $body"; fails=$((fails + 1)); }
if kill -0 "$sim_pid"; then
	# A clean stop: exit 0, and nothing from the sanitizers in a sanitized build.
	kill -TERM "$sim_pid"
	wait "$sim_pid"
	rc=$?
	pids=()
	if [ $rc = 0 ] && ! grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$tmp/sim.err"; then
		echo "ok - SIGTERM stops quota-sim cleanly"
		passes=$((passes + 1))
	else
		echo "not ok - quota-sim stopped with status $rc:"
		cat "$tmp/sim.err"
		fails=$((fails + 1))
	fi
else
	echo "not ok - quota-sim died"
	fails=$((fails + 1))
fi

echo "$passes passed, $fails failed"
[ $fails = 0 ]
