#!/usr/bin/env bash
# build-deb.sh [OUT-DIR] - the Debian packages of this tree (libquota2,
# libquota-dev, quotad, quota-tools, python3-libquota): dpkg-buildpackage -b
# -us -uc on a copy of the files git tracks (so the checkout stays clean),
# the .deb files into OUT-DIR (default build/deb), then lintian, which must
# report no error. Installs its build dependencies when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-build/deb}")
need=(debhelper dpkg-dev lintian meson ninja-build pkg-config python3 liburing-dev libcjson-dev
      libmicrohttpd-dev libpcre2-dev libcurl4-openssl-dev libncurses-dev)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "build-deb: missing packages: ${missing[*]}" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
tmp=$(mktemp -d /tmp/quota-deb.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/libquota-$(dpkg-parsechangelog -S Version -l debian/changelog)
mkdir "$src"
git ls-files -z | xargs -0 cp --parents -t "$src"
if ! (cd "$src" && dpkg-buildpackage -b -us -uc) >"$tmp/build.log" 2>&1; then
  tail -n 40 "$tmp/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed" >&2
  exit 1
fi
mkdir -p "$out"
mv "$tmp"/*.deb "$tmp"/*.changes "$tmp"/*.buildinfo "$out"/
ls -1 "$out"/*.deb
changes=$(ls "$out"/libquota_*.changes | tail -n 1)
lintian --fail-on error "$changes"
echo "build-deb: packages in $out; lintian: no errors"
