#!/bin/bash
# SPDX-License-Identifier: MIT
#
# proxy_stream.sh - quota-proxy --stream-step: a stream without max_tokens
# reserves one step of output and takes another (quota_extend) each time it
# outgrows what it holds. On a quota whose capacity (1200 tokens) is below the
# proxy's default max_tokens (4096), such a stream is refused without steps
# and served with them; its commit settles at the usage the upstream
# reported; nothing stays in flight. A few seconds; everything started is
# stopped and the segment removed, also on failure.
#
# Usage: proxy_stream.sh QUOTAD QUOTA-SIM QUOTA-PROXY QUOTACTL
set -u
QUOTAD=$1 SIM=$2 PROXY=$3 QUOTACTL=$4
command -v curl >/dev/null || { echo "SKIP: curl is needed"; exit 77; }

# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$(dirname "$0")/../harness.sh" pstream

cat >"$tmp/quota.json" <<JSON
{ "segment": "$seg", "clock": "monotonic",
  "quotas": { "llama-4-scout": { "rpm": 6000, "tpm": 1200, "context_window": 131072, "burst": 1 } } }
JSON
start_quotad "$QUOTAD" --socket "$tmp/ctl.sock"
# Answers of up to 300 tokens when a request sets no max_tokens.
"$SIM" --default-max-tokens 300 --latency-ms 5 --per-token-us 200 --seed 5 \
	>"$tmp/sim.port" 2>"$tmp/sim.err" &
pids+=($!)
sport=$(wait_line "$tmp/sim.port" $!) || die "quota-sim did not start"

# start_proxy STEP: a proxy with --stream-step STEP; sets $URL.
start_proxy() {
	"$PROXY" --upstream "http://127.0.0.1:$sport" -p 0 -S "$seg" --max-wait 2s \
		--stream-step "$1" -v >"$tmp/proxy$1.port" 2>"$tmp/proxy$1.err" &
	pids+=($!)
	URL=http://127.0.0.1:$(wait_line "$tmp/proxy$1.port" $!) || die "quota-proxy did not start"
}
stream() {
	curl -s -N -o "$tmp/body" -w '%{http_code}' -H "Authorization: Bearer sk-s" \
		-H 'Content-Type: application/json' --data-binary \
		'{"model":"llama-4-scout","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}' \
		"$URL/v1/chat/completions"
}
jnum() {
	"$QUOTACTL" --segment "$seg" status --json | grep -o "\"$1\":[0-9.e+-]*" | head -n 1 | cut -d: -f2
}

start_proxy 0
st=$(stream)
[ "$st" = 400 ] || die "without steps: HTTP $st, want 400 (4096 > capacity): $(cat "$tmp/body")"
echo "ok - without --stream-step: refused (prompt + 4096 above the capacity of 1200)"

start_proxy 32
fails=0
for i in 1 2 3; do
	st=$(stream)
	[ "$st" = 200 ] && grep -q 'data: \[DONE\]' "$tmp/body" || die "stream $i: HTTP $st: $(cat "$tmp/body")"
	out=$(grep -o '"completion_tokens":[0-9]*' "$tmp/body" | tail -n 1 | cut -d: -f2)
	echo "ok - stream $i served with steps of 32: $out output tokens"
	total=$((${total:-0} + out))
done
adm=$(jnum admitted_output_tokens)
infl=$(jnum inflight)
[ "$adm" = "$total" ] || die "admitted output tokens $adm, want the usage, $total"
[ "$infl" = 0 ] || die "$infl in flight after the streams"
grep -q "not extended" "$tmp/proxy32.err" && die "an extension was refused: $(grep 'not extended' "$tmp/proxy32.err")"
echo "ok - committed at the usage ($total output tokens), nothing in flight, every step taken"
echo "PASS"
