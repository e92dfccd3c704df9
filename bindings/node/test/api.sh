#!/bin/bash
# SPDX-License-Identifier: MIT
#
# api.sh - the Node binding's API tests (api.test.js) on a quotad of their
# own, twice: waiting reserves taking their place in line on the addon's
# threads (the default), then polling on timers (LIBQUOTA_NODE_POLL=1).
# Skipped (77) without node or the addon.
# Usage: api.sh QUOTAD ADDON
set -u
QUOTAD=$1 ADDON=$2
. "$(dirname "$0")/lib.sh"
node_env "$ADDON"
both_modes "$QUOTAD" "$here/api.json" "$here/api.test.js"
