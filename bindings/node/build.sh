#!/bin/sh
# SPDX-License-Identifier: MIT
#
# build.sh - `npm install`'s build of the addon (build/libquota_node.node),
# with the system compiler against the headers of the node that runs npm
# (PREFIX/include/node: Debian's libnode-dev, NodeSource's nodejs): no header
# download, no node-gyp. libquota from pkg-config (an installed libquota, or
# PKG_CONFIG_PATH=BUILD/meson-uninstalled for a build tree); cJSON from
# pkg-config; the token estimator from this source tree. Inside the libquota
# tree, meson builds the same addon (bindings/node/meson.build) and the tests
# use that one (LIBQUOTA_NODE_ADDON).
set -eu
cd "$(dirname "$0")"
CC=${CC:-cc}
node_inc=${NODE_INCLUDE:-$(dirname "$(dirname "$(command -v node)")")/include/node}
[ -f "$node_inc/node_api.h" ] || node_inc=/usr/include/node
[ -f "$node_inc/node_api.h" ] || { echo "build.sh: Node's headers not found (install libnode-dev, or set NODE_INCLUDE)" >&2; exit 1; }
est=../../tools/common
[ -f "$est/estimate.c" ] || { echo "build.sh: tools/common/estimate.c not found: build inside the libquota tree" >&2; exit 1; }
pc=$(pkg-config --cflags --libs libquota libcjson) ||
	{ echo "build.sh: pkg-config cannot find libquota (install it, or PKG_CONFIG_PATH=BUILD/meson-uninstalled)" >&2; exit 1; }
mkdir -p build
# shellcheck disable=SC2086
$CC -std=gnu11 -O2 -g -Wall -Wextra -fPIC -shared -fvisibility=hidden -isystem "$node_inc" -I"$est" -I../../libquota/include \
	src/addon.c "$est/estimate.c" $pc -o build/libquota_node.node
echo "build.sh: built build/libquota_node.node"
