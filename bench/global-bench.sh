#!/bin/bash
# SPDX-License-Identifier: MIT
# global-bench.sh - issue 11's figures: the hot path on a global quota against
# a host-scope one (qbench-global-lat), and what quotad costs Redis: grant
# calls per second per host and the function's cost (INFO commandstats),
# with 3 quotads sharing a key under a greedy load.
# Usage: global-bench.sh QUOTAD GLOBAL-LAT QUOTA-WORKER-UNUSED
set -eu
QUOTAD=$1 LAT=$2
tmp=$(mktemp -d /tmp/qgbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
redis-server --port 0 --unixsocket "$tmp/r.sock" --save "" --appendonly no --dir "$tmp" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$tmp/r.sock" ] && break; sleep 0.05; done
segs=()
for h in 1 2 3; do
	seg="qgbench-$$-$h"; segs+=("$seg")
	cat >"$tmp/q$h.json" <<EOJ
{ "segment": "$seg", "redis": { "url": "unix://$tmp/r.sock", "host_id": "h$h" },
  "quotas": {
    "host": { "rpm": 1000000000000, "burst": 1.0 },
    "global": { "rpm": 1000000000000, "burst": 1.0, "scope": "global", "expected_hosts": 1 } } }
EOJ
	"$QUOTAD" -c "$tmp/q$h.json" --segment "$seg" --socket "$tmp/q$h.sock" --remove-on-exit \
		--ready-fd 3 3>"$tmp/q$h.ready" 2>"$tmp/q$h.err" &
	pids+=($!)
	for _ in $(seq 200); do [ -s "$tmp/q$h.ready" ] && break; sleep 0.05; done
done
sleep 1 # grants flowing
echo "== hot path, one thread (host 1; hosts 2 and 3 idle on the same key)"
"$LAT" "${segs[0]}" 400
redis-cli -s "$tmp/r.sock" CONFIG RESETSTAT >/dev/null
t0=$(date +%s.%N)
"$LAT" "${segs[0]}" 6000 >/dev/null & a=$!
"$LAT" "${segs[1]}" 6000 >/dev/null & b=$!
"$LAT" "${segs[2]}" 6000 >/dev/null & c=$!
wait $a $b $c
t1=$(date +%s.%N)
echo "== Redis while 3 hosts run the loop above on the global quota at once"
stats=$(redis-cli -s "$tmp/r.sock" INFO commandstats | tr -d '\r' | grep -E 'cmdstat_fcall:')
calls=$(printf "%s" "$stats" | sed -n "s/^cmdstat_fcall:calls=\([0-9]*\),.*/\1/p")
usec=$(printf '%s' "$stats" | sed -n 's/.*usec_per_call=\([0-9.]*\).*/\1/p')
awk -v n="$calls" -v t0="$t0" -v t1="$t1" -v u="$usec" 'BEGIN {
	s = t1 - t0; printf "FCALL quotad_grant: %d calls in %.2f s = %.1f per second per host, %.2f us each in Redis\n", n, s, n / s / 3, u }'
echo "$stats"
echo "== Redis with the 3 hosts idle for 3 s (lease refresh only)"
redis-cli -s "$tmp/r.sock" CONFIG RESETSTAT >/dev/null
sleep 3
redis-cli -s "$tmp/r.sock" INFO commandstats | tr -d '\r' | grep -E 'cmdstat_fcall:'
