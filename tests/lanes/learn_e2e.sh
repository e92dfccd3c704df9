#!/bin/bash
# SPDX-License-Identifier: MIT
#
# learn_e2e.sh - estimates that learn, end to end against the referee:
# quotad (a quota with "auto_estimate": true) and quota-sim counting output
# tokens when a response ends (--charge usage) with skewed completion
# lengths (--completion skewed: 85 % under 300 tokens, 0.5 % from 1000 to
# 4000). Each call runs about a second, as streams do.
#   1. 32 quota-worker processes reserve max_tokens (4000) explicitly (they do
#      not queue: --reserve-timeout 0, retry when told): the
#      reservations park budget for the length of the call; their commits
#      teach the quota its histogram of actual output;
#   2. the same workers with --auto-estimate reserve 0 output tokens: the
#      learned p99 (bounded by max_tokens), against a fresh provider key.
# Prints both runs' figures; requires 0 x 429 in both (by the workers' logs
# and by the simulator's own count) and the binding limit (tpm) used more
# with the learned estimate (the same 14 s after a 10 s warm-up that the
# first burst falls in, in both runs). About 50 s. Every process it starts is stopped
# and the segment removed, also on failure.
#
# Usage: learn_e2e.sh QUOTAD QUOTACTL QUOTA-SIM QUOTA-WORKER REPORT.AWK
set -u

QUOTAD=$1 QUOTACTL=$2 SIM=$3 WORKER=$4 REPORT=$5

# tpm binds: 6000 tokens/s against ~350 tokens per call; the quota keeps a
# slightly smaller capacity than the provider (see tests/sim/e2e.sh).
RPM=${RPM:-6000} TPM=${TPM:-360000} BURST=${BURST:-0.14} QUOTA_BURST=${QUOTA_BURST:-0.133}
WORKERS=${WORKERS:-32} RUN1_S=${RUN1_S:-24} RUN2_S=${RUN2_S:-24} WARMUP_S=${WARMUP_S:-10} LAT_MS=${LAT_MS:-800}
RTIMEOUT=${RTIMEOUT:-0} RMAX=${RMAX:-20ms}
PROMPT=50-150 MAXTOK=${MAXTOK:-4000}

# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$(dirname "$0")/../harness.sh" learn

cat >"$tmp/quota.json" <<JSON
{ "segment": "$seg",
  "clock": "monotonic",
  "quotas": {
    "learn": {
      "rpm": $RPM, "tpm": $TPM, "context_window": 131072, "burst": $QUOTA_BURST,
      "refund": "actual", "auto_estimate": true,
      "alarms": { "held_s": 10, "over_estimate": 4 } } } }
JSON

start_quotad "$QUOTAD" --socket "$tmp/ctl.sock"

"$SIM" --rpm $RPM --tpm $TPM --burst $BURST --latency-ms $LAT_MS --per-token-us 500 --seed 7 \
	--charge usage --completion skewed >"$tmp/sim.port" 2>"$tmp/sim.err" &
pids+=($!)
port=$(wait_line "$tmp/sim.port" "${pids[1]}") || die "quota-sim did not print its port"

# run MODE KEY DURATION [WORKER OPTIONS]: the workers at once, logs in $tmp/MODE-*.csv.
run() {
	local mode=$1 key=$2 dur=$3 i wp=()
	shift 3
	for ((i = 1; i <= WORKERS; i++)); do
		"$WORKER" "$@" --estimate sim-rule --url "http://127.0.0.1:$port" --key "$key" \
			--segment "$seg" --quota learn --duration "${dur}s" --prompt-tokens $PROMPT \
			--max-tokens $MAXTOK --reserve-timeout $RTIMEOUT --retry-max $RMAX --seed $i --id $i --log "$tmp/$mode-$i.csv" --quiet &
		wp+=($!)
		pids+=($!)
	done
	for i in "${wp[@]}"; do
		wait "$i" || die "$mode worker exited with status $?"
	done
}

report() {
	awk -v rpm=$RPM -v tpm=$TPM -v pin=0 -v pout=0 -v warmup=$WARMUP_S -v duration="$2" \
		-f "$REPORT" "$tmp/$1"-*.csv
}
get() { sed -n "s/^$1=//p" "$2"; }
learned() {
	"$QUOTACTL" --segment "$seg" status --json |
		sed -n 's/.*"suggested_output_tokens":\([0-9.e+]*\).*/\1/p'
}

run fixed sk-learn-fixed $RUN1_S
report fixed $RUN1_S >"$tmp/fixed.sum"
# quotad merges the histograms every 250 ms while clients live: the estimate
# stays after they leave.
est=$(learned)
case ${est:-0} in 0 | "") die "nothing learned after the first run" ;; esac
"$QUOTACTL" --segment "$seg" status | sed -n '/output tokens\|suggested\|alarms/p'
run auto sk-learn-auto $RUN2_S --auto-estimate &
runpid=$!
# the estimate while the second run goes on (quotad merges the live rows)
for ((i = 0; i < 4; i++)); do
	sleep 5
	echo "during the second run: learned estimate $(learned)"
done
wait $runpid || exit 1
report auto $RUN2_S >"$tmp/auto.sum"
stats=$(sim_get "$port" /stats)

echo "limits: rpm $RPM, tpm $TPM, burst $BURST (quota $QUOTA_BURST); $WORKERS workers;" \
	"max_tokens $MAXTOK; learned output estimate $est"
printf '%-16s %14s %14s\n' "" "max_tokens" "auto_estimate"
for k in served n429 window_s tpm_util rpm_util binding_util wait_p50_ms wait_p99_ms; do
	printf '%-16s %14s %14s\n' "$k" "$(get $k "$tmp/fixed.sum")" "$(get $k "$tmp/auto.sum")"
done
echo "simulator: $stats"

for m in fixed auto; do
	n=$(get n429 "$tmp/$m.sum")
	[ "$n" = 0 ] || die "$m: the workers got $n answers 429 (want 0)"
	s=$(printf '%s' "$stats" | sed -n "s/.*\"sk-learn-$m\":{[^}]*\"rejected_429\":\([0-9]*\).*/\1/p")
	[ "$s" = 0 ] || die "$m: the simulator refused ${s:-?} requests (want 0)"
done
uf=$(get tpm_util "$tmp/fixed.sum") ua=$(get tpm_util "$tmp/auto.sum")
awk -v a="$ua" -v f="$uf" 'BEGIN { exit !(a > f) }' ||
	die "tpm used at $ua % with the learned estimate, $uf % reserving max_tokens"
echo "PASS: 0 x 429 in both; tpm used at $uf % reserving max_tokens, $ua % with the learned estimate ($est)"
exit 0
