#!/usr/bin/env bash
# test_quotad_cli.sh - quotad and quotactl as a user meets them: --help,
# --print-default-config, --check-config (exit 2 naming the key), serving the
# embedded default, refusing an existing segment by name, SIGTERM leaving the
# segment in place, --remove-on-exit removing it, quotactl status and usage.
# Usage: test_quotad_cli.sh QUOTAD QUOTACTL QUOTA_HELLO
set -u
quotad=$1 quotactl=$2 hello=$3
seg="qtest-cli-$$"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -f "/dev/shm/$seg"
  rm -rf "$tmp"
}
trap cleanup EXIT
fail=0 pass=0
check() { # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); else echo "FAIL: $name"; fail=$((fail + 1)); fi
}
# start_quotad ARGS...: start in the background, wait for --ready-fd.
start_quotad() {
  mkfifo "$tmp/ready"
  "$quotad" "$@" --ready-fd 3 3>"$tmp/ready" 2>>"$tmp/quotad.log" &
  pids+=($!)
  local line=""
  read -r -t 10 line <"$tmp/ready"
  rm -f "$tmp/ready"
  [ "$line" = ready ]
}

check "--help exits 0" "$quotad" --help >/dev/null
check "--help mentions --check-config" grep -q -- --check-config <("$quotad" --help)
"$quotad" --bogus >/dev/null 2>&1; st=$?
check "bad option exits 2" [ "$st" -eq 2 ]
"$quotad" --print-default-config >"$tmp/default.json"
check "default config names llama-4-scout" grep -q '"llama-4-scout"' "$tmp/default.json"
check "default config is valid" "$quotad" --check-config "$tmp/default.json"
echo '{"quotas": {"m": {"rpm": 1.5}}}' >"$tmp/bad.json"
"$quotad" --check-config "$tmp/bad.json" 2>"$tmp/err"; st=$?
check "bad config exits 2" [ "$st" -eq 2 ]
check "bad config message names file and key" grep -q "$tmp/bad.json: quotas.m.rpm: must be an integer" "$tmp/err"
: >"$tmp/empty.json"
"$quotad" -c "$tmp/empty.json" --segment "$seg" 2>"$tmp/err"; st=$?
check "empty config exits 2" [ "$st" -eq 2 ]
check "empty config creates nothing" [ ! -e "/dev/shm/$seg" ]

check "quotad serves the embedded default" start_quotad --segment "$seg"
qd=${pids[-1]}
check "segment exists with mode 0660" [ "$(stat -c %a "/dev/shm/$seg")" = 660 ]
"$hello" --segment "$seg" -n 3 >"$tmp/hello" 2>&1
check "three reservations admitted" [ "$(grep -c 'admitted after' "$tmp/hello")" -eq 3 ]
"$quotactl" --segment "$seg" status >"$tmp/status"
check "status shows the quota" grep -q "llama-4-scout" "$tmp/status"
check "status shows quotad up" grep -q "quotad up" "$tmp/status"
"$quotactl" --segment "$seg" status --json >"$tmp/status.json"
check "status --json counts 3 admitted" grep -q '"admitted":3,' "$tmp/status.json"
"$quotad" --segment "$seg" 2>"$tmp/err"; st=$?
check "second quotad on the segment fails" [ "$st" -ne 0 ]
check "and says why (the segment or the serving quotad's pid)" grep -qE "/$seg|pid" "$tmp/err"
kill -TERM "$qd"; wait "$qd"; st=$?
check "SIGTERM exits 0" [ "$st" -eq 0 ]
check "SIGTERM leaves the segment in place" [ -e "/dev/shm/$seg" ]
"$quotactl" --segment "$seg" status >"$tmp/status"
check "status shows quotad down" grep -q "quotad DOWN" "$tmp/status"
"$hello" --segment "$seg" -n 1 >"$tmp/hello" 2>&1
check "workers keep working without quotad" grep -q 'admitted after' "$tmp/hello"
rm -f "/dev/shm/$seg"

check "quotad --remove-on-exit starts" start_quotad --segment "$seg" --remove-on-exit
qd=${pids[-1]}
kill -INT "$qd"; wait "$qd"
check "--remove-on-exit removes the segment" [ ! -e "/dev/shm/$seg" ]

"$quotactl" --segment "$seg" status 2>"$tmp/err"; st=$?
check "status on a missing segment exits 1" [ "$st" -eq 1 ]
"$quotactl" frobnicate 2>/dev/null; st=$?
check "unknown command exits 2" [ "$st" -eq 2 ]
check "quotactl --help exits 0" "$quotactl" --help >/dev/null

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
