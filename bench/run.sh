#!/bin/sh
# run.sh - the benchmark suite's entry point (also `meson compile -C BUILD bench`).
#   bench/run.sh [QUOTA_BENCH [OUTDIR [quota-bench options...]]]
# Runs every scenario once (5 runs each by default), prints the table, and
# writes OUTDIR/results.json, OUTDIR/table.txt and OUTDIR/throughput.png.
# Defaults: QUOTA_BENCH=build/bench/quota-bench, OUTDIR=build/bench/results.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bench=${1:-$here/build/bench/quota-bench}
out=${2:-$(dirname "$bench")/results}
[ $# -gt 2 ] && shift 2 || set --
if [ ! -x "$bench" ]; then
	echo "run.sh: $bench not built (meson setup build && ninja -C build)" >&2
	exit 2
fi
for tool in redis-server gnuplot; do
	command -v "$tool" >/dev/null 2>&1 ||
		echo "run.sh: warning: $tool not found (apt-get install redis-server gnuplot-nox)" >&2
done
mkdir -p "$out"
status=0
"$bench" --json-file "$out/results.json" --png "$out/throughput.png" "$@" \
	> "$out/table.txt" || status=$?
cat "$out/table.txt"
echo "results: $out/table.txt $out/results.json $out/throughput.png"
exit $status
