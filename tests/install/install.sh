#!/bin/bash
# SPDX-License-Identifier: MIT
#
# install.sh - `meson install` into a temporary DESTDIR, then, from what was
# installed only:
#   - every file lies under DESTDIR/PREFIX (DESTDIR-clean);
#   - the library has its SONAME and every quota_* symbol a version;
#   - a C program and a C++ program build with `pkg-config --cflags --libs
#     libquota` (sysroot: DESTDIR), link the installed libquota.so.2 and
#     reserve and commit on a segment served by the installed quotad;
#   - the installed Python package imports (libquota, libquota.httpx) with
#     /usr/bin/python3, from DESTDIR, and reserves and commits there too;
#   - `systemd-analyze verify` accepts the installed quotad.service (its
#     ExecStart pointed at the installed quotad), systemd-sysusers the
#     sysusers.d file (dry run), systemd-tmpfiles the tmpfiles.d file (in a
#     scratch root), and the hardening exposure is printed.
# Everything started is stopped and DESTDIR removed, also on failure.
#
# Usage: install.sh BUILD-DIR
set -u
BUILD=$1
tmp=$(mktemp -d /tmp/quota-install.XXXXXX) || exit 1
root=$tmp/root
seg="quota-install-$$-$RANDOM"
qpid=
cleanup() {
	[ -n "$qpid" ] && { kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; }
	rm -f "/dev/shm/$seg"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
. "$(dirname "$0")/../../tools/wait-line.sh"
fails=0
ok() { echo "ok - $*"; }
nok() { echo "not ok - $*"; fails=$((fails + 1)); }
die() { echo "FAIL: $*"; exit 1; }

meson install -C "$BUILD" --destdir "$root" --no-rebuild --quiet >"$tmp/install.log" 2>&1 ||
	{ cat "$tmp/install.log"; die "meson install failed"; }
prefix=$(meson introspect "$BUILD" --buildoptions | /usr/bin/python3 -c \
	'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"][0])')
outside=$(cd "$root" && find . -type f -o -type l | sed 's#^\.##' | grep -v "^$prefix/")
[ -z "$outside" ] && ok "every installed file is under DESTDIR$prefix" || nok "installed outside the prefix: $outside"

pc=$(find "$root" -name libquota.pc | head -n 1)
[ -n "$pc" ] || die "no libquota.pc installed"
libdir=$(dirname "$(dirname "$pc")")
PKG_CONFIG_LIBDIR=$(dirname "$pc")
export PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_LIBDIR
flags=$(pkg-config --cflags --libs libquota) || die "pkg-config libquota failed"
echo "pkg-config --cflags --libs libquota: $flags"

cat >"$tmp/app.c" <<'C'
#include <stdio.h>
#include <quota.h>
int main(int argc, char **argv)
{
	quota_client *c;
	struct quota_ticket t;
	struct quota_cost est = { 1, 100, 50 }, used = { 1, 100, 20 };
	int r = quota_open(argv[1], &c), q;
	if (r < 0 || (q = quota_find(c, "m")) < 0 || quota_reserve(c, q, &est, 1000000000, &t) < 0 ||
	    quota_commit(c, &t, &used) < 0)
		return 1;
	quota_close(c);
	printf("C program: reserved and committed (libquota %d.%d)\n", QUOTA_VERSION_MAJOR, argc);
	return 0;
}
C
cat >"$tmp/app.cpp" <<'CPP'
#include <cstdio>
#include <quota.h>
int main(int, char **argv)
{
	quota_client *c = nullptr;
	quota_ticket t{};
	quota_cost est{ 1, 100, 50 };
	if (quota_open(argv[1], &c) < 0)
		return 1;
	int q = quota_find(c, "m");
	if (q < 0 || quota_reserve(c, q, &est, 1000000000, &t) < 0 || quota_cancel(c, &t) < 0)
		return 1;
	quota_close(c);
	std::printf("C++ program: reserved and cancelled\n");
	return 0;
}
CPP
# shellcheck disable=SC2086 # $flags is a list of words
cc -Wall -Werror -o "$tmp/app" "$tmp/app.c" $flags || nok "C program builds with pkg-config"
# shellcheck disable=SC2086
c++ -Wall -Werror -o "$tmp/appxx" "$tmp/app.cpp" $flags || nok "C++ program builds with pkg-config"

cat >"$tmp/q.json" <<JSON
{ "segment": "$seg", "quotas": { "m": { "rpm": 600, "tpm": 60000 } } }
JSON
quotad=$root$prefix/sbin/quotad
[ -x "$quotad" ] || quotad=$(find "$root" -type f -name quotad | head -n 1)
"$quotad" -c "$tmp/q.json" --socket "$tmp/q.sock" --remove-on-exit --ready-fd 3 \
	3>"$tmp/ready" 2>"$tmp/quotad.err" &
qpid=$!
wait_line "$tmp/ready" $qpid >/dev/null || { cat "$tmp/quotad.err"; die "installed quotad did not get ready"; }

lib=$(readlink -f "$libdir/libquota.so.2")
soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
unversioned=$(objdump -T "$lib" | awk '$4 == ".text" && $NF ~ /^quota_/ && $(NF-1) !~ /^LIBQUOTA_/' | wc -l)
versioned=$(objdump -T "$lib" | awk '$4 == ".text" && $NF ~ /^quota_/ && $(NF-1) ~ /^LIBQUOTA_/' | wc -l)
if [ "$soname" = libquota.so.2 ] && [ "$unversioned" -eq 0 ] && [ "$versioned" -gt 0 ]; then
	ok "installed library: SONAME $soname, all $versioned quota_* symbols versioned (LIBQUOTA_*)"
else
	nok "installed library: SONAME '$soname', $unversioned unversioned symbols"
fi
export LD_LIBRARY_PATH=$libdir
for app in app appxx; do
	[ -x "$tmp/$app" ] || continue
	if ldd "$tmp/$app" | grep -q "libquota.so.2 => $libdir/"; then
		ok "$app links the installed libquota.so.2"
	else
		nok "$app links: $(ldd "$tmp/$app" | grep libquota)"
	fi
	"$tmp/$app" "$seg" && ok "$app runs against the installed quotad" || nok "$app failed"
done

pkgdir=$(find "$root" -type d -name libquota -path '*-packages/*' | head -n 1)
if [ -z "$pkgdir" ]; then
	nok "the Python package is installed"
else
	PYTHONPATH=$(dirname "$pkgdir") PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -I -c '
import sys
sys.path.insert(0, sys.argv[2])
import libquota, libquota.httpx
assert libquota.__file__.startswith(sys.argv[3]), libquota.__file__
with libquota.Client(sys.argv[1]) as c:
    with c.quota("m").reserve(input_tokens=10, output_tokens=10, timeout=1) as t:
        t.commit(input_tokens=10, output_tokens=3)
print("Python: imported", libquota.__file__, "and committed")
' "$seg" "$(dirname "$pkgdir")" "$root" && ok "the installed Python package imports and reserves" ||
		nok "the installed Python package"
fi

unit=$(find "$root" -name quotad.service | head -n 1)
if [ -z "$unit" ]; then
	nok "quotad.service is installed"
elif ! command -v systemd-analyze >/dev/null; then
	nok "systemd-analyze is not installed (tools/setup-deps.sh installs systemd)"
else
	sed "s#$prefix/sbin/quotad#$quotad#" "$unit" >"$tmp/quotad.service"
	if MANPATH=$root$prefix/share/man systemd-analyze verify "$tmp/quotad.service" >"$tmp/verify" 2>&1; then
		ok "systemd-analyze verify accepts quotad.service"
	else
		nok "systemd-analyze verify: $(cat "$tmp/verify")"
	fi
	systemd-analyze security --offline=yes "$tmp/quotad.service" 2>/dev/null | tail -n 1
fi
sysusers=$(find "$root" -path '*sysusers.d/quotad.conf' | head -n 1)
if [ -z "$sysusers" ] || ! command -v systemd-sysusers >/dev/null; then
	nok "sysusers.d/quotad.conf installed and systemd-sysusers present"
else
	systemd-sysusers --dry-run "$sysusers" >/dev/null 2>"$tmp/sysusers" && ! grep -qi "error\|ignoring" "$tmp/sysusers" &&
		ok "systemd-sysusers accepts quotad.conf" || nok "sysusers: $(cat "$tmp/sysusers")"
fi
tmpfiles=$(find "$root" -path '*tmpfiles.d/quotad.conf' | head -n 1)
if [ -z "$tmpfiles" ] || ! command -v systemd-tmpfiles >/dev/null; then
	nok "tmpfiles.d/quotad.conf installed and systemd-tmpfiles present"
else
	mkdir -p "$tmp/troot/run"
	systemd-tmpfiles --root="$tmp/troot" --create "$tmpfiles" 2>"$tmp/tmpfiles" &&
		[ "$(readlink "$tmp/troot/run/quotad.sock")" = /run/quotad/quotad.sock ] &&
		ok "tmpfiles.d links /run/quotad.sock to the service's socket" || nok "tmpfiles: $(cat "$tmp/tmpfiles")"
fi
[ $fails -eq 0 ] && echo "install: all passed" || echo "install: $fails failed"
exit $((fails > 0))
