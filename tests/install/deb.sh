#!/bin/bash
# SPDX-License-Identifier: MIT
#
# deb.sh - tools/build-deb.sh builds the Debian packages (dpkg-buildpackage
# -b -us -uc, lintian without errors) and each holds what it should: the
# library with its SONAME, the header and pkg-config file, quotad with its
# unit, sysusers.d and tmpfiles.d files, the Python package. The output
# folder is removed afterwards. Skipped (77) without git, dpkg-buildpackage
# or lintian.
#
# Usage: deb.sh SOURCE-DIR
set -u
SRC=$1
for tool in git dpkg-buildpackage lintian; do
	command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
done
git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1 || { echo "SKIP: not a git checkout"; exit 77; }
out=$(mktemp -d /tmp/quota-debs.XXXXXX) || exit 1
trap 'rm -rf "$out"' EXIT
bash "$SRC/tools/build-deb.sh" "$out" || { echo "FAIL: build-deb.sh"; exit 1; }
fails=0
has() { # PACKAGE PATH-PATTERN
	local deb
	deb=$(ls "$out/$1"_*.deb 2>/dev/null | head -n 1)
	if [ -n "$deb" ] && dpkg-deb -c "$deb" | grep -- "$2" >/dev/null; then
		echo "ok - $1 has $2"
	else
		echo "not ok - $1 lacks $2"
		fails=$((fails + 1))
	fi
}
has libquota2 'usr/lib/.*/libquota.so.2 -> '
has libquota-dev 'usr/include/quota.h'
has libquota-dev 'pkgconfig/libquota.pc'
has quotad 'usr/sbin/quotad'
has quotad 'lib/systemd/system/quotad.service'
has quotad 'usr/lib/sysusers.d/quotad.conf'
has quotad 'usr/lib/tmpfiles.d/quotad.conf'
has quotad 'usr/bin/quotactl'
has quota-tools 'usr/bin/quota-sim'
has python3-libquota 'dist-packages/libquota/httpx.py'
has python3-libquota 'man3/python-libquota.3'
soname=$(dpkg-deb --fsys-tarfile "$out"/libquota2_*.deb | tar -xO --wildcards '*libquota.so.2.*' | \
	{ f=$(mktemp); cat >"$f"; objdump -p "$f" | awk '/SONAME/ {print $2}'; rm -f "$f"; })
[ "$soname" = libquota.so.2 ] && echo "ok - SONAME libquota.so.2" || { echo "not ok - SONAME '$soname'"; fails=$((fails + 1)); }
# What other packages link against needs this version of the library
# (2.2): the shlibs file says so.
shlibs=$(dpkg-deb --ctrl-tarfile "$(ls "$out"/libquota2_*.deb | head -n 1)" | tar -xO ./shlibs 2>/dev/null)
case "$shlibs" in
*"libquota 2 libquota2 (>= 2.2.0)"*) echo "ok - shlibs: $shlibs" ;;
*) echo "not ok - shlibs: '$shlibs'"; fails=$((fails + 1)) ;;
esac
[ $fails -eq 0 ] && echo "deb: all passed" || echo "deb: $fails failed"
exit $((fails > 0))
