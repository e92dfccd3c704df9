#!/usr/bin/env bash
# run-tests.sh - the README's test command: install dependencies, build with
# warnings as errors, run the whole suite, then again under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-deps.sh
jobs=$(nproc)
# setup DIR OPTIONS...: configure a fresh build directory, or reconfigure one.
setup() {
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then meson setup --reconfigure "$dir" "$@" >/dev/null
  else meson setup "$dir" "$@" >/dev/null; fi
}
# count DIR: "passed failed" from meson's test log.
count() {
  local log=$1/meson-logs/testlog.json
  [ -f "$log" ] || { echo "0 0"; return; }
  echo "$(grep -c '"result": "OK"' "$log") $(grep -vc '"result": "\(OK\|SKIP\)"' "$log")"
}
rc=0
setup build -Dwerror=true
ninja -C build
meson test -C build --print-errorlogs --num-processes "$jobs" || rc=1
# Sanitizers: the same suite with ASan and UBSan (halt on the first report).
setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --print-errorlogs --num-processes "$jobs" --no-suite bench --timeout-multiplier 3 || rc=1
read -r p1 f1 < <(count build)
read -r p2 f2 < <(count build-asan)
echo "tests: $((p1 + p2)) passed, $((f1 + f2)) failed"
exit $rc
