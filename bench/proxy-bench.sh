#!/bin/bash
# SPDX-License-Identifier: MIT
#
# proxy-bench.sh - run proxy-bench against quota-sim (no latency, no limits)
# directly and through quota-proxy on a quotad segment with a quota far above
# the load (so the proxy never waits): the latency the proxy adds, p50/p99,
# one client and 64 concurrent. `meson compile -C build proxy-bench`.
# With $PROXY_BASELINE (another build's quota-proxy binary) that one is
# measured too, in the same run, on the same segment and upstream;
# $PROXY_ARGS are extra options for the proxy under test (e.g. --workers 2).
#
# Usage: proxy-bench.sh QUOTAD QUOTA-SIM QUOTA-PROXY PROXY-BENCH [REQUESTS [CLIENTS]]
set -u
QUOTAD=$1 SIM=$2 PROXY=$3 BENCH=$4 N=${5:-4000} C=${6:-64} BASE=${PROXY_BASELINE:-}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/quota-pbench.XXXXXX) || exit 1
seg="quota-pbench-$$"
pids=()
cleanup() {
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null; wait "${pids[i]}" 2>/dev/null; done
	rm -f "/dev/shm/$seg"; rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
. "$here/../tools/wait-line.sh"
cat >"$tmp/q.json" <<JSON
{ "segment": "$seg", "clock": "monotonic",
  "quotas": { "bench": { "rpm": 1000000000, "tpm": 1000000000000, "context_window": 131072 } } }
JSON
"$QUOTAD" -c "$tmp/q.json" --segment "$seg" --remove-on-exit --ready-fd 3 3>"$tmp/ready" 2>"$tmp/quotad.err" &
pids+=($!)
wait_line "$tmp/ready" $! >/dev/null || { cat "$tmp/quotad.err"; exit 1; }
"$SIM" --rpm 0 --tpm 0 --latency-ms 0 --per-token-us 0 --max-connections 1024 -q >"$tmp/sim.port" 2>"$tmp/sim.err" &
pids+=($!)
sport=$(wait_line "$tmp/sim.port" $!) || exit 1
"$PROXY" --upstream "http://127.0.0.1:$sport" -p 0 -S "$seg" --quiet ${PROXY_ARGS:-} >"$tmp/proxy.port" 2>"$tmp/proxy.err" &
pids+=($!)
pport=$(wait_line "$tmp/proxy.port" $!) || exit 1
burl=
if [ -n "$BASE" ]; then
	"$BASE" --upstream "http://127.0.0.1:$sport" -p 0 -S "$seg" --quiet >"$tmp/base.port" 2>"$tmp/base.err" &
	pids+=($!)
	bport=$(wait_line "$tmp/base.port" $!) || { cat "$tmp/base.err"; exit 1; }
	burl="http://127.0.0.1:$bport/v1/chat/completions"
fi
cs=/sys/devices/system/clocksource/clocksource0/current_clocksource
echo "quota-proxy overhead: $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)," \
	"clocksource $(cat $cs 2>/dev/null || echo unknown), load average $(cut -d' ' -f1-3 /proc/loadavg));" \
	"upstream quota-sim with no latency${PROXY_ARGS:+; proxy $PROXY_ARGS}${BASE:+; baseline $BASE}"
# cpu PID: utime + stime of PID, in ticks (not printed with PROXY_ARGS,
# which may fork --workers).
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
ppid=${pids[2]} bpid=${pids[3]:-}
c0=$(cpu "$ppid") b0=$([ -n "$bpid" ] && cpu "$bpid")
"$BENCH" "http://127.0.0.1:$sport/v1/chat/completions" "http://127.0.0.1:$pport/v1/chat/completions" "$N" "$C" $burl | tee "$tmp/out"
rc=${PIPESTATUS[0]}
# CPU time per request, a figure the machine's load weighs on less than latency.
sent=$(sed -n 's/^requests per target: //p' "$tmp/out")
tick=$(getconf CLK_TCK)
per() { awk -v t="$1" -v n="$sent" -v hz="$tick" 'BEGIN { printf "%.1f us", t / hz * 1e6 / n }'; }
if [ -n "$sent" ] && [ "$sent" -gt 0 ]; then
	[ -z "${PROXY_ARGS:-}" ] && echo "CPU per request: proxy $(per $(($(cpu "$ppid") - c0)))${bpid:+, baseline $(per $(($(cpu "$bpid") - b0)))}"
fi
exit "$rc"
