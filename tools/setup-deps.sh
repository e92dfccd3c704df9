#!/usr/bin/env bash
# setup-deps.sh - install what building, testing and demoing libquota need,
# from Debian's archive. Idempotent: does nothing when all is present.
set -euo pipefail
pkgs=(
  build-essential meson ninja-build pkg-config          # toolchain
  liburing-dev libcjson-dev libcriterion-dev            # core: io_uring, JSON, tests
  libpcre2-dev                                          # quota-sim --vocab: the BPE pre-tokenizer
  libmicrohttpd-dev libcurl4-openssl-dev                # provider simulator, worker
  libncurses-dev tmux                                   # quotactl top, and its terminal test
  libhiredis-dev redis-server gnuplot-nox               # global quotas (quotad), benchmarks: Redis, plots
  faketime                                              # tests/global: a host whose clock is off
  prometheus                                            # promtool checks the metrics format
  nodejs curl                                           # the openai SDK and quota-proxy tests
  python3 python3-pytest python3-httpx                  # the Python package and its tests
  debhelper lintian                                     # tools/build-deb.sh and its test
  systemd man-db                                        # the install test: systemd-analyze verify (and its man: links)
  clang                                                 # libFuzzer targets
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# This machine's nodejs may bundle npm (and conflict with Debian's npm).
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Node's headers for the Node binding's addon: Debian's nodejs keeps them in
# libnode-dev; a nodejs that ships them itself (NodeSource) conflicts with it.
[ -f /usr/include/node/node_api.h ] || missing+=(libnode-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-deps: missing packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
