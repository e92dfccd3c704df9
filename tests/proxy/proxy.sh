#!/bin/bash
# SPDX-License-Identifier: MIT
#
# proxy.sh - quota-proxy between curl and quota-sim, on a segment of its own:
#   - a chat completion and a streamed one pass through (the usage chunk the
#     proxy asked for stripped, kept when the client asked), and are committed;
#   - local refusals: 400 bad bodies (OpenAI's error format), 413, 404 for a
#     model without a quota, 429 with retry-after(-ms) and x-ratelimit-*
#     headers, 429 insufficient_quota with x-should-retry: false, 400
#     context_length_exceeded;
#   - other paths pass through; the API key never appears in the log;
#   - an upstream 429 is passed on unchanged and pauses the quota for every
#     process of the host (a linked quota-worker then waits);
#   - a client that disconnects mid-stream aborts the upstream transfer and
#     what was streamed is committed (nothing left in flight at either end);
#   - requests short of budget wait in the proxy's line (not its event loop)
#     and are all served within --max-wait;
#   - `quotactl proxies` lists the proxy with its address, its upstream
#     without credentials and its counters; a killed proxy's record shows as
#     gone and is removed by the next proxy; a stopped proxy leaves none.
# Every process started is stopped and the segment removed, also on failure.
#
# Usage: proxy.sh QUOTAD QUOTA-SIM QUOTA-PROXY QUOTACTL QUOTA-WORKER
set -u
QUOTAD=$1 SIM=$2 PROXY=$3 QUOTACTL=$4 WORKER=$5
command -v curl >/dev/null || { echo "SKIP: curl is needed"; exit 77; }

# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$(dirname "$0")/../harness.sh" proxy

fails=0 passes=0
ok() { echo "ok - $*"; passes=$((passes + 1)); }
nok() { echo "not ok - $*"; fails=$((fails + 1)); }

# wait_grep FILE PATTERN PID: poll (bounded: 10 s) until FILE matches.
wait_grep() {
	local i
	for ((i = 0; i < 200; i++)); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		kill -0 "$3" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

cat >"$tmp/quota.json" <<JSON
{ "segment": "$seg", "clock": "monotonic",
  "quotas": {
    "llama-4-scout": { "rpm": 6000, "tpm": 900000, "context_window": 131072, "burst": 1 },
    "tiny":   { "rpm": 1, "burst": 1 },
    "ctx":    { "rpm": 6000, "context_window": 100 },
    "line":   { "rpm": 120, "burst": 0.008 },
    "slow":   { "rpm": 6, "burst": 0.1 },
    "budget": { "rpm": 6000, "price_per_mtok": { "input": 100000, "output": 0 },
                "budget_usd": { "day": 3 } } } }
JSON
start_quotad "$QUOTAD"

# The upstream: one request at once per API key, then one a second; slow
# enough tokens (5 ms each, 4 to a chunk) that a stream can be cut.
"$SIM" --rpm 60 --burst 0.01 --latency-ms 5 --per-token-us 5000 --seed 3 \
	>"$tmp/sim.port" 2>"$tmp/sim.err" &
sim=$!
pids+=($sim)
sport=$(wait_line "$tmp/sim.port" $sim) || die "quota-sim did not start"

"$PROXY" --upstream "http://127.0.0.1:$sport" -p 0 -S "$seg" --max-wait 2s --max-body 65536 \
	--map gpt-tiny=tiny -v >"$tmp/proxy.port" 2>"$tmp/proxy.err" &
proxy=$!
pids+=($proxy)
port=$(wait_line "$tmp/proxy.port" $proxy) || die "quota-proxy did not start"
URL=http://127.0.0.1:$port

# post KEY BODY [curl args]: sets $status, $body (file $tmp/h the headers).
post() {
	local key=$1 data=$2
	shift 2
	status=$(curl -s -o "$tmp/body" -D "$tmp/h" -w '%{http_code}' "$@" \
		-H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
		--data-binary "$data" "$URL/v1/chat/completions")
	body=$(cat "$tmp/body")
}
header() { sed -n "s/^$1: *\([^\r]*\).*/\1/Ip" "$tmp/h" | head -n 1; }
status_json() { "$QUOTACTL" --segment "$seg" status --json; }
# jnum QUOTA FIELD: a top-level number of QUOTA in quotactl's JSON (no jq).
jnum() {
	status_json | sed 's/{"name":/\n{"name":/g' | grep "^{\"name\":\"$1\"" |
		grep -o "\"$2\":[0-9.e+-]*" | head -n 1 | cut -d: -f2
}
expect() { # WHAT WANT-STATUS [TEXT-IN-BODY]
	if [ "$status" != "$2" ]; then
		nok "$1: HTTP $status, want $2: $body"
	elif [ -n "${3:-}" ] && [[ $body != *"$3"* ]]; then
		nok "$1: body lacks '$3': $body"
	else
		ok "$1 ($status)"
	fi
}
M='"messages":[{"role":"user","content":"Say hello."}]'

# ---- relayed and committed
post sk-a "{\"model\":\"llama-4-scout\",\"max_tokens\":16,$M}"
expect "chat completion through the proxy" 200 '"usage"'
[ "$(header x-ratelimit-limit-requests)" = 60 ] && ok "upstream x-ratelimit headers passed on" ||
	nok "x-ratelimit-limit-requests '$(header x-ratelimit-limit-requests)', want 60"
[ "$(jnum llama-4-scout admitted)" = 1 ] && ok "reserved from the segment" || nok "admitted $(jnum llama-4-scout admitted)"
[ "$(jnum llama-4-scout admitted_input_tokens)" = 7 ] && ok "committed the reported usage (7 prompt tokens)" ||
	nok "admitted_input_tokens $(jnum llama-4-scout admitted_input_tokens), want 7"

post sk-b "{\"model\":\"llama-4-scout\",\"max_tokens\":8,\"stream\":true,$M}" -N
expect "stream through the proxy" 200 'data: [DONE]'
[[ $body != *'"usage"'* ]] && ok "usage chunk and usage:null stripped (not asked for)" || nok "usage in a stream that did not ask: $body"
[ "$(grep -c '^data: ' <<<"$body")" -ge 3 ] && ok "events passed on one by one" || nok "events: $body"
[[ $(header content-type) == text/event-stream* ]] && ok "content-type text/event-stream" || nok "content-type $(header content-type)"
post sk-c "{\"model\":\"llama-4-scout\",\"max_tokens\":8,\"stream\":true,\"stream_options\":{\"include_usage\":true},$M}" -N
expect "stream with include_usage" 200 '"choices":[],"usage":{"prompt_tokens":7'
[ "$(jnum llama-4-scout inflight)" = 0 ] && ok "nothing left in flight" || nok "inflight $(jnum llama-4-scout inflight)"

# ---- bad requests: refused by the proxy, never charged
before=$(jnum llama-4-scout admitted)
post sk-d '{"model":' ; expect "malformed JSON" 400 invalid_request_error
post sk-d '{"model":3,"messages":[]}' ; expect "model of the wrong type" 400 "'model'"
post sk-d '{"model":"llama-4-scout","messages":"x"}' ; expect "messages of the wrong type" 400 "'messages'"
post sk-d "{\"model\":\"llama-4-scout\",\"max_tokens\":-1,$M}" ; expect "negative max_tokens" 400 max_tokens
post sk-d "{\"model\":\"llama-4-scout\",\"stream\":\"yes\",$M}" ; expect "stream of the wrong type" 400 "'stream'"
post sk-d "$(printf '[%.0s' $(seq 100))" ; expect "JSON too deep" 400 "deeper than"
post sk-d "{\"model\":\"llama-4-scout\",\"messages\":[{\"role\":\"user\",\"content\":\"$(printf 'x%.0s' $(seq 70000))\"}]}"
expect "body above --max-body" 413 "request body above"
post sk-d "{\"model\":\"no-such-model\",$M}" ; expect "model without a quota" 404 model_not_found
[ "$(jnum llama-4-scout admitted)" = "$before" ] && ok "bad requests were not charged" || nok "admitted moved"

# ---- local refusals
post sk-e "{\"model\":\"ctx\",\"max_tokens\":200,$M}"
expect "never fits the context window" 400 context_length_exceeded
post sk-f "{\"model\":\"gpt-tiny\",\"max_tokens\":8,$M}" ; expect "--map to a quota" 200
post sk-g "{\"model\":\"gpt-tiny\",\"max_tokens\":8,$M}"
expect "no budget within --max-wait: local 429" 429 rate_limit_exceeded
ra=$(header retry-after) ram=$(header retry-after-ms)
[ "${ra:-0}" -ge 50 ] && [ "${ram:-0}" -ge 50000 ] && ok "retry-after $ra s, retry-after-ms $ram" ||
	nok "retry-after '$ra', retry-after-ms '$ram'"
[ "$(header x-ratelimit-limit-requests)" = 1 ] && [ "$(header x-ratelimit-remaining-requests)" = 0 ] &&
	[ -n "$(header x-ratelimit-reset-requests)" ] && ok "x-ratelimit-* from the segment" || nok "x-ratelimit headers: $(cat "$tmp/h")"
spent=0
for i in 1 2 3 4 5 6 7 8; do
	post "sk-h$i" "{\"model\":\"budget\",\"max_tokens\":1,$M}"
	[ "$status" = 429 ] && break
	spent=$((spent + 1))
done
expect "spend budget used up (after $spent requests)" 429 insufficient_quota
[ "$(header x-should-retry)" = false ] && ok "x-should-retry: false" || nok "x-should-retry '$(header x-should-retry)'"

# ---- pass-through, and the key is never logged
status=$(curl -s -o "$tmp/body" -w '%{http_code}' "$URL/health"); body=$(cat "$tmp/body")
expect "other paths pass through" 200 '"ok"'
grep -q 'sk-a\|sk-b\|Bearer' "$tmp/proxy.err" && nok "the API key appears in the log" || ok "the API key is never logged"

# ---- upstream 429: passed on unchanged, the whole host paused
post sk-z "{\"model\":\"llama-4-scout\",\"max_tokens\":8,$M}"
post sk-z "{\"model\":\"llama-4-scout\",\"max_tokens\":8,$M}"
expect "upstream 429 passed on" 429 '"type":"requests"'
[[ $body == *'Rate limit reached on requests per min'* ]] && ok "the upstream's own error body" || nok "body $body"
paused=$(jnum llama-4-scout paused_s)
awk -v p="${paused:-0}" 'BEGIN { exit !(p > 0) }' && ok "quota paused on the segment ($paused s)" || nok "paused_s '$paused'"
"$WORKER" --url "http://127.0.0.1:$sport" --key sk-w -S "$seg" -q llama-4-scout -n 1 \
	--prompt-tokens 10 --max-tokens 8 --log "$tmp/worker.csv" --quiet 2>"$tmp/worker.err"
waited=$(awk -F, 'NR == 2 { print $14 }' "$tmp/worker.csv")
[ "${waited:-0}" -gt 0 ] && ok "a linked worker waited out the pause ($((waited / 1000000)) ms)" ||
	nok "worker reserve_waited_ns '$waited'"

# ---- a client gone mid-stream
curl -sN -H 'Authorization: Bearer sk-cut' --data-binary \
	"{\"model\":\"llama-4-scout\",\"max_tokens\":2000,\"stream\":true,$M}" \
	"$URL/v1/chat/completions" 2>/dev/null | head -c 400 >/dev/null
if wait_grep "$tmp/proxy.err" "client gone mid-stream: committed" $proxy; then
	ok "client disconnect: $(grep -o 'client gone mid-stream: committed.*' "$tmp/proxy.err")"
else
	nok "no commit after the client went"
fi
wait_grep "$tmp/sim.err" "cut after" $sim && ok "the upstream transfer was aborted ($(grep -o 'stream .* cut after.*' "$tmp/sim.err"))" ||
	nok "the upstream stream was not cut"
[ "$(jnum llama-4-scout inflight)" = 0 ] && ok "nothing in flight after the disconnect" || nok "inflight $(jnum llama-4-scout inflight)"

# ---- waiting for budget: in the proxy's line, served in turn within --max-wait
proxies_json() { "$QUOTACTL" --segment "$seg" proxies --json; }
# pnum PID FIELD: a number of proxy PID in `quotactl proxies --json`.
pnum() {
	proxies_json | sed 's/{"pid":/\n{"pid":/g' | grep "^{\"pid\":$1," |
		grep -o "\"$2\":[0-9]*" | head -n 1 | cut -d: -f2
}
lpids=()
for i in 1 2 3; do
	curl -s -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer sk-l$i" --data-binary \
		"{\"model\":\"line\",\"max_tokens\":4,$M}" "$URL/v1/chat/completions" >"$tmp/line$i" &
	lpids+=($!)
done
seen=0
for ((i = 0; i < 200; i++)); do # bounded: 10 s
	[ "$(pnum $proxy waiting)" -ge 1 ] 2>/dev/null && { seen=1; break; }
	running=0
	for p in "${lpids[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
	[ $running = 1 ] || break # all answered (the first one served may be any)
	sleep 0.05
done
wait "${lpids[@]}"
[ $seen = 1 ] && ok "quotactl proxies shows requests waiting for budget" || nok "no waiting request seen"
[ "$(cat "$tmp"/line1 "$tmp"/line2 "$tmp"/line3 | tr '\n' ' ')" = "200 200 200 " ] &&
	ok "3 requests short of budget waited in line and were served" ||
	nok "line answers: $(cat "$tmp"/line1 "$tmp"/line2 "$tmp"/line3 | tr '\n' ' ')"
[ "$(pnum $proxy waiting)" = 0 ] && [ "$(pnum $proxy in_flight)" = 0 ] &&
	ok "nothing waiting or in flight afterwards" || nok "waiting/in_flight left: $(proxies_json)"

# ---- quotactl proxies
pj=$(proxies_json)
[[ $pj == *"\"pid\":$proxy,\"alive\":true,\"listen\":\"127.0.0.1:$port\",\"upstream\":\"http://127.0.0.1:$sport\""* ]] &&
	ok "quotactl proxies: pid, address and upstream" || nok "quotactl proxies --json: $pj"
[ "$(pnum $proxy relayed)" -ge 8 ] && [ "$(pnum $proxy refused)" -ge 3 ] &&
	[ "$(pnum $proxy bad)" -ge 8 ] && [ "$(pnum $proxy upstream_429)" -ge 1 ] &&
	ok "counters: relayed $(pnum $proxy relayed), refused $(pnum $proxy refused), bad $(pnum $proxy bad), upstream 429s $(pnum $proxy upstream_429)" ||
	nok "counters: $pj"
"$QUOTACTL" --segment "$seg" proxies | grep -q "^$proxy  *127.0.0.1:$port  *http://127.0.0.1:$sport " &&
	ok "quotactl proxies: the table" || nok "table: $("$QUOTACTL" --segment "$seg" proxies)"
"$QUOTACTL" --segment "$seg" status | grep -q "^quota-proxy: 1 process, 0 in flight, 0 waiting" &&
	ok "quotactl status: a line about the proxies" || nok "status: $("$QUOTACTL" --segment "$seg" status | head -n 3)"
# A proxy whose upstream URL holds credentials, killed: they are never
# recorded; its record shows as gone, and the next proxy removes it.
"$PROXY" --upstream "http://user:pw-secret@127.0.0.1:$sport" -p 0 -S "$seg" --quiet \
	>"$tmp/p2.port" 2>"$tmp/p2.err" &
p2=$!
pids+=($p2)
wait_line "$tmp/p2.port" $p2 >/dev/null || die "second quota-proxy did not start"
proxies_json | grep -q 'pw-secret\|user:' && nok "credentials in the record" || ok "no credentials in the record"
kill -KILL $p2
wait $p2 2>/dev/null
[[ $(proxies_json) == *"\"pid\":$p2,\"alive\":false"* ]] && ok "a killed proxy's record shows as gone" ||
	nok "killed proxy: $(proxies_json)"
"$PROXY" --upstream "http://127.0.0.1:$sport" -p 0 -S "$seg" --max-wait 30s --quiet \
	>"$tmp/p3.port" 2>"$tmp/p3.err" &
p3=$!
pids+=($p3)
p3port=$(wait_line "$tmp/p3.port" $p3) || die "third quota-proxy did not start"
[ ! -e "/dev/shm/$seg.proxy.$p2" ] && [ -e "/dev/shm/$seg.proxy.$p3" ] &&
	ok "the next proxy removed the stale record" || nok "records: $(ls /dev/shm | grep "$seg.proxy")"

# ---- a client that gives up while waiting for budget leaves the line at
# once, uncharged ("slow": one request, then one every 10 s)
post3() {
	curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer sk-s' "$@" \
		--data-binary "{\"model\":\"slow\",\"max_tokens\":4,$M}" "http://127.0.0.1:$p3port/v1/chat/completions"
}
[ "$(post3)" = 200 ] && ok "slow: first request served" || nok "slow: first request"
post3 --max-time 2 >/dev/null &
gc=$!
seen=0
for ((i = 0; i < 100; i++)); do # bounded: 5 s, while the client waits
	[ "$(pnum $p3 waiting)" = 1 ] && { seen=1; break; }
	sleep 0.05
done
wait $gc
left=0
for ((i = 0; i < 100; i++)); do # bounded: 5 s, before its 10 s turn
	[ "$(pnum $p3 waiting)" = 0 ] && { left=1; break; }
	sleep 0.05
done
[ $seen = 1 ] && [ $left = 1 ] && [ "$(jnum slow admitted)" = 1 ] &&
	ok "a client gone while in line left it, uncharged" ||
	nok "client gone in line: seen $seen, left $left, admitted $(jnum slow admitted): $(proxies_json)"
kill -TERM $p3
wait $p3
[ ! -e "/dev/shm/$seg.proxy.$p3" ] && ok "a stopped proxy leaves no record" || nok "record left by $p3"

# ---- a clean stop
kill -TERM $proxy
wait $proxy
rc=$?
unset 'pids[2]'
[ $rc = 0 ] && ! grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$tmp/proxy.err" &&
	ok "SIGTERM stops quota-proxy cleanly" || { nok "quota-proxy stopped with $rc"; cat "$tmp/proxy.err"; }
echo "$passes passed, $fails failed"
[ $fails = 0 ]
