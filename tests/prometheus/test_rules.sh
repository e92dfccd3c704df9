#!/usr/bin/env bash
# test_rules.sh - the alerting and recording rules operators load
# (docs/prometheus/libquota-rules.yml): `promtool check rules` accepts them,
# `promtool test rules` runs rules_test.yml (input series, every alert firing
# and not firing, the recorded values), and every quota_*/quotad_* series the
# rules use is one a real quotad exports (`quotactl metrics`), so that a
# renamed metric breaks this test rather than an operator's alerts.
# Usage: test_rules.sh PROMTOOL RULES RULES_TEST QUOTAD QUOTACTL
set -u
promtool=$1 rules=$2 rules_test=$3 quotad=$4 quotactl=$5
seg="qtest-rules-$$"
tmp=$(mktemp -d)
qd=
cleanup() {
  if [ -n "$qd" ]; then kill "$qd" 2>/dev/null; wait "$qd" 2>/dev/null; fi
  rm -f "/dev/shm/$seg"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail=0 pass=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); else echo "FAIL: $name"; fail=$((fail + 1)); fi
}

check "promtool check rules" "$promtool" check rules "$rules"
check "promtool test rules" "$promtool" test rules "$rules_test"

# A quotad with a quota that has every kind of series (limits, in flight,
# budgets), asked for its metrics once it is ready.
cat >"$tmp/config.json" <<'JSON'
{ "quotas": { "m": { "rpm": 60, "tpm": 6000, "max_inflight": 2,
                     "budget_usd": { "day": 1, "month": 10 } } } }
JSON
"$quotad" -c "$tmp/config.json" --segment "$seg" --socket "$tmp/sock" --remove-on-exit \
  --ready-fd 3 3>"$tmp/ready" 2>"$tmp/quotad.err" &
qd=$!
end=$((SECONDS + 15))
until grep -q ready "$tmp/ready" 2>/dev/null; do
  if [ $SECONDS -ge $end ] || ! kill -0 "$qd" 2>/dev/null; then
    echo "quotad did not start"; cat "$tmp/quotad.err"; exit 1
  fi
  sleep 0.05
done
check "quotactl metrics" "$quotactl" --segment "$seg" --socket "$tmp/sock" metrics >"$tmp/metrics"
# The series names in the rules' expressions, without the recorded ones
# (they have a colon) and those of other exporters.
sed -n 's/^ *expr: //p' "$rules" | grep -oE '\bquotad?_[a-z_]+\b' | sort -u >"$tmp/used"
check "the rules use quota series" [ -s "$tmp/used" ]
while read -r name; do
  check "quotad exports $name" grep -q "^# TYPE $name " "$tmp/metrics"
done <"$tmp/used"
echo "rules: $pass passed, $fail failed"
[ $fail -eq 0 ]
