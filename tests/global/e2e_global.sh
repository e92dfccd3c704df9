#!/bin/bash
# SPDX-License-Identifier: MIT
#
# e2e_global.sh - end to end across "hosts": one redis-server (unix socket),
# quota-sim enforcing one API key's limits, three quotads with their own
# segments and host_ids sharing the key as a global quota, and three
# quota-workers per host on that key. Zero 429s (workers' logs and the
# simulator's own count) and the binding limit used at >= 95 %. About 15 s.
# Every process it starts is stopped and every file removed, also on failure.
#
# Usage: e2e_global.sh QUOTAD QUOTA-SIM QUOTA-WORKER REPORT.AWK
#
# The workers wait at most 40 ms in quota_reserve (--reserve-timeout): a
# reservation on a global quota that may wait longer than the hold minus a
# tick (docs/ARCHITECTURE.md, term D) can book ahead of the host's grant.
set -u

QUOTAD=$1 SIM=$2 WORKER=$3 REPORT=$4
RPM=600 TPM=90000 BURST=0.125 QUOTA_BURST=0.12
HOSTS=3 WORKERS=3 RUN_S=10 WARMUP_S=3
PROMPT=50-150 MAXTOK=200

# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$(dirname "$0")/../harness.sh" e2eg

command -v redis-server >/dev/null || { echo "redis-server missing: skipped"; exit 77; }
redis-server --port 0 --unixsocket "$tmp/redis.sock" --save "" --appendonly no --dir "$tmp" \
	>"$tmp/redis.err" 2>&1 &
pids+=($!)
for ((i = 0; i < 200; i++)); do
	[ -S "$tmp/redis.sock" ] && break
	kill -0 "${pids[0]}" 2>/dev/null || die "redis-server exited"
	sleep 0.05
done
[ -S "$tmp/redis.sock" ] || die "redis-server did not open its socket"

for ((h = 1; h <= HOSTS; h++)); do
	seg="quota-e2eg-$$-$RANDOM-$h"
	segs+=("$seg")
	cat >"$tmp/q$h.json" <<EOJ
{ "segment": "$seg",
  "redis": { "url": "unix://$tmp/redis.sock", "host_id": "host$h" },
  "quotas": {
    "e2e": {
      "rpm": $RPM, "tpm": $TPM, "context_window": 131072, "burst": $QUOTA_BURST,
      "refund": "actual", "scope": "global", "global_key": "sk-e2e-global",
      "expected_hosts": $HOSTS } } }
EOJ
	"$QUOTAD" -c "$tmp/q$h.json" --segment "$seg" --socket "$tmp/q$h.sock" --remove-on-exit \
		--ready-fd 3 3>"$tmp/q$h.ready" 2>"$tmp/quotad$h.err" &
	pids+=($!)
	wait_line "$tmp/q$h.ready" "$!" >/dev/null || die "quotad $h did not become ready"
done

"$SIM" --rpm $RPM --tpm $TPM --burst $BURST --latency-ms 10 --per-token-us 20 --seed 7 \
	>"$tmp/sim.port" 2>"$tmp/sim.err" &
pids+=($!)
port=$(wait_line "$tmp/sim.port" "$!") || die "quota-sim did not print its port"

wp=()
for ((h = 1; h <= HOSTS; h++)); do
	for ((i = 1; i <= WORKERS; i++)); do
		"$WORKER" --estimate sim-rule --url "http://127.0.0.1:$port" --key sk-e2e-global \
			--segment "${segs[$((h - 1))]}" --quota e2e --duration "${RUN_S}s" \
			--prompt-tokens $PROMPT --max-tokens $MAXTOK --seed $((h * 10 + i)) \
			--id $((h * 10 + i)) --reserve-timeout 40ms --log "$tmp/w-$h-$i.csv" --quiet &
		wp+=($!)
		pids+=($!)
	done
done
for p in "${wp[@]}"; do
	wait "$p" || die "a worker exited with status $?"
done
awk -v rpm=$RPM -v tpm=$TPM -v pin=0.10 -v pout=0.25 -v warmup=$WARMUP_S -v duration=$RUN_S \
	-f "$REPORT" "$tmp"/w-*.csv >"$tmp/sum"
stats=$(sim_get "$port" /stats)
get() { sed -n "s/^$1=//p" "$tmp/sum"; }
echo "global key: rpm $RPM, tpm $TPM, burst $BURST (quota $QUOTA_BURST); $HOSTS hosts x $WORKERS workers"
for k in served n429 window_s rpm_util tpm_util binding binding_util wait_p50_ms wait_p99_ms; do
	printf '%-16s %12s\n' "$k" "$(get $k)"
done
echo "simulator: $stats"
for ((h = 1; h <= HOSTS; h++)); do
	"$(dirname "$QUOTAD")/../tools/quotactl" -S "$tmp/q$h.sock" global 2>/dev/null | tail -n 2
done
q429=$(get n429)
util=$(get binding_util)
sim429=$(printf '%s' "$stats" | sed -n 's/.*"sk-e2e-global":{[^}]*"rejected_429":\([0-9]*\).*/\1/p')
[ "$(get served)" -gt 0 ] || die "nothing served"
[ "$q429" = 0 ] || die "workers got $q429 answers 429 (want 0)"
[ "${sim429:-x}" = 0 ] || die "the simulator refused ${sim429:-?} requests (want 0)"
awk -v u="$util" 'BEGIN { exit !(u >= 95) }' || die "binding limit used at $util % (want >= 95 %)"
echo "PASS: 3 hosts, 0 x 429 at $util % of the binding limit"
