#!/bin/bash
# SPDX-License-Identifier: MIT
#
# shared.sh - one quota, one API key, shared by 2 quota-proxy processes on
# one port (--workers 2, SO_REUSEPORT) and 4 quota-worker processes linked
# to libquota: 4 more workers send through the proxies (--naive: they know
# nothing of libquota) while the 4 linked ones reserve themselves. The
# referee (quota-sim, counting BPE tokens) must never refuse one: its window
# bound (r * W + b, per its own buckets) holds for the whole host. A few
# seconds. Skipped (77) when the BPE vocabulary cannot be made (npm).
#
# Usage: shared.sh QUOTAD QUOTA-SIM QUOTA-PROXY QUOTA-WORKER VOCAB-DIR
set -u
QUOTAD=$1 SIM=$2 PROXY=$3 WORKER=$4 VOCAB_DIR=$5
here=$(cd "$(dirname "$0")" && pwd)
vocab=$("$here/../../tools/vocab.sh" "$VOCAB_DIR") || exit $?

RPM=600 TPM=60000 BURST=0.125 QUOTA_BURST=0.12 RUN_S=6
# shellcheck source-path=SCRIPTDIR source=../harness.sh
. "$here/../harness.sh" shared

cat >"$tmp/quota.json" <<JSON
{ "segment": "$seg", "clock": "monotonic",
  "quotas": { "llama-4-scout": { "rpm": $RPM, "tpm": $TPM, "burst": $QUOTA_BURST,
                                 "context_window": 131072 } } }
JSON
start_quotad "$QUOTAD"
"$SIM" --rpm $RPM --tpm $TPM --burst $BURST --latency-ms 10 --per-token-us 20 --seed 9 \
	--vocab "$vocab" >"$tmp/sim.port" 2>"$tmp/sim.err" &
pids+=($!)
sport=$(wait_line "$tmp/sim.port" $!) || die "quota-sim did not start"
"$PROXY" --upstream "http://127.0.0.1:$sport" -p 0 -S "$seg" --workers 2 --max-wait 60s -v \
	>"$tmp/proxy.port" 2>"$tmp/proxy.err" &
pids+=($!)
pport=$(wait_line "$tmp/proxy.port" $!) || die "quota-proxy did not start"

wp=()
for i in 1 2 3 4; do
	"$WORKER" --url "http://127.0.0.1:$sport" --key sk-shared -S "$seg" -q llama-4-scout \
		--duration ${RUN_S}s --prompt-tokens 50-300 --max-tokens 300 --seed $i --id $i \
		--log "$tmp/linked-$i.csv" --quiet &
	wp+=($!)
	"$WORKER" --naive --url "http://127.0.0.1:$pport" --key sk-shared \
		--duration ${RUN_S}s --prompt-tokens 50-300 --max-tokens 300 --seed $((i + 10)) \
		--id $((i + 10)) --log "$tmp/proxied-$i.csv" --quiet &
	wp+=($!)
done
pids+=("${wp[@]}")
for p in "${wp[@]}"; do wait "$p" || die "a worker failed"; done

exec 5<>"/dev/tcp/127.0.0.1/$sport" || die "no /stats"
printf 'GET /stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&5
stats=$(cat <&5)
exec 5<&-
key=$(printf '%s' "$stats" | sed -n 's/.*"sk-shared":{\([^}]*\)}.*/\1/p')
served=$(printf '%s' "$key" | sed -n 's/.*"served":\([0-9]*\).*/\1/p')
r429=$(printf '%s' "$key" | sed -n 's/.*"rejected_429":\([0-9]*\).*/\1/p')
linked=$(cat "$tmp"/linked-*.csv | awk -F, '$7 == 200 { n++ } END { print n + 0 }')
proxied=$(cat "$tmp"/proxied-*.csv | awk -F, '$7 == 200 { n++ } END { print n + 0 }')
procs=$(sed -n 's/^quota-proxy\[\([0-9]*\)\]: .*reserved.*/\1/p' "$tmp/proxy.err" | sort -u | wc -l)
echo "served by the referee: $served (linked workers $linked, through $procs proxy process(es) $proxied); its 429s: $r429"
[ "${served:-0}" -gt 0 ] && [ "$linked" -gt 0 ] && [ "$proxied" -gt 0 ] || die "nothing served on one side"
[ "$r429" = 0 ] || die "the referee refused $r429 requests: the host over-admitted"
echo PASS
