# shellcheck shell=bash
# harness.sh - sourced by the test scripts that start quotad and its company
# on a segment of their own (tests/proxy, tests/sim/e2e.sh, tests/lanes,
# tests/global/e2e_global.sh, the Node tests' lib.sh): `. harness.sh NAME`
# sets
#   tmp   a private directory, /tmp/quota-NAME.XXXXXX;
#   seg   a segment name of its own, quota-NAME-PID-RANDOM;
#   pids  the processes to stop (add each with pids+=($!); unset is fine),
#   segs  more segments to remove (add with segs+=(NAME));
# and at exit, also on failure or SIGINT/SIGTERM, stops every one of pids,
# the last started first (quotad, started first, goes last: it removes its
# segment), then removes $seg, the objects named after it ($seg.*: the
# quota-proxy records), segs and $tmp (E2E_KEEP=1 keeps $tmp and prints it).
# Then: die MESSAGE (FAIL, the tail of each $tmp/*.err, exit 1),
# start_quotad QUOTAD [OPTION...] (quotad on $seg with $tmp/quota.json,
# ready when it returns), sim_get PORT PATH (GET from a quota-sim, by bash's
# /dev/tcp: no curl needed) and wait_line FILE PID (tools/wait-line.sh).
. "$(dirname "${BASH_SOURCE[0]}")/../tools/wait-line.sh"

harness_cleanup() {
	local i keys=("${!pids[@]}") # the array may have holes (unset)
	for ((i = ${#keys[@]} - 1; i >= 0; i--)); do
		kill "${pids[keys[i]]}" 2>/dev/null
		wait "${pids[keys[i]]}" 2>/dev/null
	done
	for i in "$seg" "${segs[@]}"; do
		rm -f "/dev/shm/$i" "/dev/shm/$i."*
	done
	if [ -n "${E2E_KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}

die() {
	local f
	echo "FAIL: $*"
	for f in "$tmp"/*.err; do
		[ -s "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }
	done
	exit 1
}

start_quotad() {
	"$1" -c "$tmp/quota.json" --segment "$seg" --remove-on-exit "${@:2}" --ready-fd 3 \
		3>"$tmp/quotad.ready" 2>"$tmp/quotad.err" &
	pids+=($!)
	wait_line "$tmp/quotad.ready" $! >/dev/null || die "quotad did not become ready"
}

sim_get() {
	local body
	exec 5<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&5
	body=$(cat <&5)
	exec 5<&-
	printf '%s\n' "${body##*$'\r\n\r\n'}"
}

tmp=$(mktemp -d "/tmp/quota-$1.XXXXXX") || exit 1
seg="quota-$1-$$-$RANDOM"
pids=()
segs=()
trap harness_cleanup EXIT
trap 'exit 1' INT TERM
