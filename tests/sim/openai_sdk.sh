#!/bin/bash
# SPDX-License-Identifier: MIT
#
# openai_sdk.sh - runs openai_sdk.mjs (the official `openai` npm package)
# against quota-sim. The package is installed once into NODE_DIR (in the
# build tree). Exit 77 (skipped) only when node/npm are missing or the
# package cannot be installed.
#
# Usage: openai_sdk.sh QUOTA-SIM SCRIPT.mjs NODE_DIR
set -u
SIM=$1 SCRIPT=$2 NODE_DIR=$3

. "$(dirname "$0")/../estimate/npm-install.sh"
command -v node >/dev/null && command -v npm >/dev/null ||
	{ echo "SKIP: node and npm are needed"; exit 77; }
# The current SDK supports Node 20 and later; Debian's Node 18 gets the last
# major that supported it.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
spec=openai
[ "$node_major" -lt 20 ] && spec='openai@^4'
npm_install "$NODE_DIR" "$spec"
echo "openai SDK $(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$NODE_DIR/node_modules/openai/package.json" | head -n 1)"
cp "$SCRIPT" "$NODE_DIR/openai_sdk.mjs" || exit 1

# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$(dirname "$0")/../harness.sh" sdk

# One request at once, then one per second, per key.
"$SIM" --rpm 60 --burst 0.01 --latency-ms 5 --per-token-us 0 >"$tmp/port" 2>"$tmp/sim.err" &
pids+=($!)
port=$(wait_line "$tmp/port" $!) || die "quota-sim did not start"

node "$NODE_DIR/openai_sdk.mjs" "$port"
