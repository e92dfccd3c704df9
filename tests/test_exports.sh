#!/usr/bin/env bash
# test_exports.sh - the shared library exports exactly the quota_* API of
# libquota.map (nothing internal leaks) and carries the SONAME major.
set -u
lib=$1 map=$2
fail=0
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /[TDBR]/ {print $3}' | sed 's/@.*//' | sort -u)
listed=$(grep -oE '^\s+quota_[a-z_]+;' "$map" | tr -d ' \t;' | sort -u)
if [ "$exported" != "$listed" ]; then
  echo "FAIL: exported symbols differ from libquota.map:"; diff <(echo "$listed") <(echo "$exported")
  fail=1
fi
soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
if [ "$soname" != "libquota.so.2" ]; then echo "FAIL: SONAME is '$soname'"; fail=1; fi
[ $fail -eq 0 ] && echo "1 passed, 0 failed" || echo "0 passed, 1 failed"
exit $fail
