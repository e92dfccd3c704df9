#!/usr/bin/env bash
# run-tests.sh - the README's test command: install dependencies, build with
# warnings as errors, run the whole suite, then again under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-deps.sh
jobs=$(nproc)
meson setup build --wipe -Dwerror=true >/dev/null 2>&1 || meson setup build -Dwerror=true >/dev/null
ninja -C build
meson test -C build --print-errorlogs --num-processes "$jobs"
# Sanitizers: the same suite with ASan and UBSan (halt on the first report).
meson setup build-asan --wipe -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false \
  -Dbuildtype=debug >/dev/null 2>&1 || \
  meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug >/dev/null
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --print-errorlogs --num-processes "$jobs" --no-suite bench --timeout-multiplier 3
