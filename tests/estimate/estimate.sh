#!/bin/bash
# SPDX-License-Identifier: MIT
#
# estimate.sh - the token estimator against real BPE tokenizers on the
# corpus: never below either count, mean ratio at most 1.15 (measure.mjs).
# The tokenizers come from npm into NODE_DIR (skipped, 77, without npm).
#
# Usage: estimate.sh EST_LINES NODE_DIR
set -u
EST=$1 NODE_DIR=$2
here=$(cd "$(dirname "$0")" && pwd)
. "$here/npm-install.sh"
npm_install "$NODE_DIR" gpt-tokenizer llama3-tokenizer-js
cp "$here/measure.mjs" "$NODE_DIR/measure.mjs" || exit 1
node "$NODE_DIR/measure.mjs" "$here/corpus" "$EST" --max-mean 1.15
