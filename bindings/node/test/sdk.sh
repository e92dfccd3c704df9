#!/bin/bash
# SPDX-License-Identifier: MIT
#
# sdk.sh - the official `openai` npm SDK through createQuotaFetch against
# quota-sim (sdk.mjs): identical answers to a direct call (streamed or not),
# usage committed, local refusals the SDK understands; then PROCS Node
# processes x CLIENTS SDK clients sharing one quota for SECONDS: 0 x 429 from
# the simulator and >= MIN-UTIL % of the binding limit (TPM) used. quotad,
# two quota-sims with the same seed (A direct, B behind createQuotaFetch;
# BPE counting when tools/vocab.sh can make the vocabulary), all stopped and
# removed at the end, also on failure. Skipped (77) without node, npm, the
# registry or the addon.
#
# Usage: sdk.sh QUOTAD QUOTA-SIM ADDON NODE-DIR VOCAB-DIR [PROCS CLIENTS SECONDS MIN-UTIL]
set -u
QUOTAD=$1 SIM=$2 ADDON=$3 NODE_DIR=$4 VOCAB_DIR=$5
PROCS=${6:-4} CLIENTS=${7:-6} SECONDS_=${8:-12} MIN_UTIL=${9:-95}
. "$(dirname "$0")/lib.sh"
node_env "$ADDON"
. "$here/../../../tests/estimate/npm-install.sh"
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
spec=openai
[ "$node_major" -lt 20 ] && spec='openai@^4' # the current SDK needs Node 20
( unset LD_PRELOAD; npm_install "$NODE_DIR" "$spec" ) || exit $?
vocab=$( unset LD_PRELOAD; "$here/../../../tools/vocab.sh" "$VOCAB_DIR" 2>/dev/null) &&
	VOCAB=(--vocab "$vocab") || VOCAB=()

# TPM binds; the quota's burst a little below the provider's (see
# tests/sim/e2e.sh): the time a request takes to reach it.
RPM=1200 TPM=120000 BURST=0.125 QUOTA_BURST=0.12
sed -e "s/@RPM@/$RPM/" -e "s/@TPM@/$TPM/" -e "s/@BURST@/$QUOTA_BURST/" "$here/sdk.json" >"$tmp/sdk.json"
node_quotad "$QUOTAD" "$tmp/sdk.json"
for s in a b; do
	( unset LD_PRELOAD; exec "$SIM" --rpm $RPM --tpm $TPM --burst $BURST --latency-ms 10 \
		--per-token-us 20 --seed 5 "${VOCAB[@]}" -q >"$tmp/sim-$s.port" 2>"$tmp/sim-$s.err" ) &
	pids+=($!)
	wait_line "$tmp/sim-$s.port" $! >/dev/null || die "quota-sim did not start"
done
# The script beside the SDK (ESM resolves packages from the script's folder).
ln -s "$(cd "$NODE_DIR" && pwd)/node_modules" "$tmp/node_modules" && cp "$here/sdk.mjs" "$tmp/" || exit 1
export LIBQUOTA_NODE_PKG=$here/..
echo "referee: ${VOCAB[*]:-byte rule}; openai SDK $(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$NODE_DIR/node_modules/openai/package.json" | head -n 1)"
node "$tmp/sdk.mjs" "$(cat "$tmp/sim-a.port")" "$(cat "$tmp/sim-b.port")" $TPM \
	"$PROCS" "$CLIENTS" "$SECONDS_" "$MIN_UTIL"
