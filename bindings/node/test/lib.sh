# shellcheck shell=bash
# lib.sh - sourced by the Node tests' wrappers (api.sh, sdk.sh): a private
# temporary directory, quotad on a segment of its own, the addon (and, in a
# sanitizer build, the ASan runtime preloaded into node) and cleanup that
# stops whatever was started, also on failure. Exit 77 (skipped) says why.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../../../tests/harness.sh
. "$here/../../../tests/harness.sh" node
skip() { echo "SKIP: $*"; exit 77; }

# node_env ADDON: check node and the addon; export what lib/index.js reads.
node_env() {
	command -v node >/dev/null || skip "node is needed"
	[ -n "$1" ] && [ -f "$1" ] || skip "the Node addon was not built (Node's headers, /usr/include/node/node_api.h, not found: install libnode-dev)"
	LIBQUOTA_NODE_ADDON=$(realpath "$1") && export LIBQUOTA_NODE_ADDON
	# A sanitizer build's addon needs the ASan runtime first in the process.
	if readelf -d "$1" 2>/dev/null | grep -q 'libasan'; then
		local rt
		rt=$(${CC:-cc} -print-file-name=libasan.so 2>/dev/null)
		[ -f "$rt" ] || skip "ASan build: the ASan runtime (libasan.so) to preload into node was not found"
		export LD_PRELOAD=$rt
		# node itself is not built for leak checking: its leaks are not ours.
		export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
	fi
	node -e 'require(process.env.LIBQUOTA_NODE_ADDON)' >"$tmp/load.err" 2>&1 ||
		{ tail -n 5 "$tmp/load.err"; [ -n "${LD_PRELOAD:-}" ] && skip "node cannot load the ASan-built addon"; die "node cannot load the addon"; }
}

# node_quotad QUOTAD CONFIG-TEMPLATE: quotad on $seg (start_quotad,
# tests/harness.sh) with the template's @SEG@ replaced and without node's
# ASan runtime; exports QUOTA_SEGMENT.
node_quotad() {
	sed "s/@SEG@/$seg/g" "$2" >"$tmp/quota.json" || exit 1
	LD_PRELOAD='' start_quotad "$1" --socket "$tmp/ctl.sock"
	export QUOTA_SEGMENT=$seg
}

# stop_quotad: stop the quotad started last (it removes its segment).
stop_quotad() {
	local last=$((${#pids[@]} - 1))
	kill "${pids[last]}" 2>/dev/null
	wait "${pids[last]}" 2>/dev/null
	unset "pids[last]"
}

# both_modes QUOTAD CONFIG-TEMPLATE TEST.js: the test on a fresh quotad each
# time, twice: waiting reserves taking their place in line on the addon's
# threads (the default), then polling on timers (LIBQUOTA_NODE_POLL=1).
both_modes() {
	node_quotad "$1" "$2"
	echo "# waiting on the addon's threads"
	node --expose-gc "$3" || exit 1
	stop_quotad
	node_quotad "$1" "$2"
	echo "# waiting on timers (LIBQUOTA_NODE_POLL=1)"
	LIBQUOTA_NODE_POLL=1 node --expose-gc "$3"
}
