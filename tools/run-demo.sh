#!/usr/bin/env bash
# run-demo.sh - the README's first command: install dependencies, build,
# then run the demo on quotad's embedded default configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-deps.sh
[ -f build/build.ninja ] || meson setup build -Dwerror=true >/dev/null
ninja -C build >/dev/null
if [ -x tools/demo.sh ] && [ "${QUOTA_DEMO:-full}" = full ]; then
  exec bash tools/demo.sh
fi
# The core demo: quotad on its embedded default, a few reservations, status.
seg="quota-demo-$$"
build/quotad/quotad --segment "$seg" --remove-on-exit --ready-fd 3 3>"/tmp/$seg.ready" &
qd=$!
trap 'kill "$qd" 2>/dev/null; wait "$qd" 2>/dev/null || true; rm -f "/tmp/$seg.ready"' EXIT INT TERM
for _ in $(seq 100); do grep -q ready "/tmp/$seg.ready" 2>/dev/null && break; sleep 0.05; done
build/tools/quota-hello --segment "$seg" -n 5
build/tools/quotactl --segment "$seg" status
