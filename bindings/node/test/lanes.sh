#!/bin/bash
# SPDX-License-Identifier: MIT
#
# lanes.sh - the Node binding's libquota 2.1 tests (lanes.test.js) on a
# quotad of their own with a manual clock (lanes.json), where every figure
# is exact: lanes, extend, settlePartial, status' 2.1 fields, the fetch's
# lane. Twice, each on a fresh quotad: waits on the addon's threads, then
# polling on timers (LIBQUOTA_NODE_POLL=1). Skipped (77) without node or
# the addon.
# Usage: lanes.sh QUOTAD ADDON
set -u
QUOTAD=$1 ADDON=$2
. "$(dirname "$0")/lib.sh"
node_env "$ADDON"
both_modes "$QUOTAD" "$here/lanes.json" "$here/lanes.test.js"
