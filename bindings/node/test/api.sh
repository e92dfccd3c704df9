#!/bin/bash
# SPDX-License-Identifier: MIT
#
# api.sh - the Node binding's API tests (api.test.js) on a quotad of their
# own. Skipped (77) without node or the addon.
# Usage: api.sh QUOTAD ADDON
set -u
QUOTAD=$1 ADDON=$2
. "$(dirname "$0")/lib.sh"
node_env "$ADDON"
start_quotad "$QUOTAD" "$here/api.json"
node --expose-gc "$here/api.test.js"
