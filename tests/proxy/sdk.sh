#!/bin/bash
# SPDX-License-Identifier: MIT
#
# sdk.sh - the official OpenAI SDK through quota-proxy (sdk.mjs): identical
# answers to a direct call, then CLIENTS SDK clients on one quota for SECONDS
# through the proxy (0 upstream 429s) and directly (the 429s they get).
# quotad, two quota-sims with the same seed (A direct, B behind the proxy;
# BPE counting when tools/vocab.sh can make the vocabulary) and the proxy,
# all stopped and removed at the end, also on failure. Skipped (77) without npm.
#
# Usage: sdk.sh QUOTAD QUOTA-SIM QUOTA-PROXY NODE-DIR VOCAB-DIR [CLIENTS SECONDS [MIN-UTIL]]
# The suite runs 16 clients for 6 s; the issue's full run (README):
#   tests/proxy/sdk.sh build/quotad/quotad build/tools/sim/quota-sim \
#     build/tools/proxy/quota-proxy build/tests/proxy/node build/vocab 16 60 95
set -u
QUOTAD=$1 SIM=$2 PROXY=$3 NODE_DIR=$4 VOCAB_DIR=$5 CLIENTS=${6:-16} SECONDS_=${7:-6} MIN_UTIL=${8:-0}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../estimate/npm-install.sh"
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
spec=openai
[ "$node_major" -lt 20 ] && spec='openai@^4'
npm_install "$NODE_DIR" "$spec"
cp "$here/sdk.mjs" "$NODE_DIR/sdk.mjs" || exit 1
vocab=$("$here/../../tools/vocab.sh" "$VOCAB_DIR" 2>/dev/null) && VOCAB=(--vocab "$vocab") || VOCAB=()

# Limits: TPM binds; the quota's burst a little below the provider's (see e2e.sh).
RPM=600 TPM=60000 BURST=0.125 QUOTA_BURST=0.12
# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$here/../harness.sh" sdkproxy

cat >"$tmp/quota.json" <<JSON
{ "segment": "$seg", "clock": "monotonic",
  "quotas": { "llama-4-scout": { "rpm": $RPM, "tpm": $TPM, "burst": $QUOTA_BURST,
                                 "context_window": 131072 } } }
JSON
start_quotad "$QUOTAD"
for s in a b; do
	"$SIM" --rpm $RPM --tpm $TPM --burst $BURST --latency-ms 10 --per-token-us 20 --seed 5 \
		"${VOCAB[@]}" -q >"$tmp/sim-$s.port" 2>"$tmp/sim-$s.err" &
	pids+=($!)
	wait_line "$tmp/sim-$s.port" $! >/dev/null || die "quota-sim did not start"
done
"$PROXY" --upstream "http://127.0.0.1:$(cat "$tmp/sim-b.port")" -p 0 -S "$seg" --max-wait 60s \
	--quiet >"$tmp/proxy.port" 2>"$tmp/proxy.err" &
pids+=($!)
pport=$(wait_line "$tmp/proxy.port" $!) || die "quota-proxy did not start"
echo "referee: ${VOCAB[*]:-byte rule}"
node "$NODE_DIR/sdk.mjs" "$pport" "$(cat "$tmp/sim-a.port")" "$(cat "$tmp/sim-b.port")" $TPM \
	"$CLIENTS" "$SECONDS_" ${MIN_UTIL:+--min-util $MIN_UTIL}
