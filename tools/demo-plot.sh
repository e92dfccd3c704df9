#!/bin/bash
# SPDX-License-Identifier: MIT
#
# demo-plot.sh - the demo as a picture: tokens per second sent over time by
# the libquota fleet and by the naive fleet, each against the provider's
# limit, with the 429 answers each received marked; one PNG through gnuplot.
#
# Usage: tools/demo-plot.sh OUT.png LOGDIR TPM DURATION QUOTA_KEY NAIVE_KEY
#   LOGDIR holds the demo's per-request worker logs (quota-N.csv, naive-N.csv,
#   see quota-worker(1)) and quota-sim's --trace (sim.trace, complete: the
#   simulator stopped). Tokens are the prompt + completion tokens of served
#   requests, counted in the second their last attempt was sent; 429s are the
#   simulator's refusals for each fleet's API key, in the second they arrived.
#   Time 0 is each fleet's first request. Environment: QUOTA_GNUPLOT (gnuplot).
set -u
help() { sed -n '4,14p' "$0" | sed 's/^# \{0,1\}//'; }
case ${1:-} in -h | --help) help; exit 0 ;; esac
[ $# -eq 6 ] || { help >&2; exit 2; }
out=$1 dir=$2 tpm=$3 duration=$4 key_quota=$5 key_naive=$6
gnuplot=${QUOTA_GNUPLOT:-gnuplot}
command -v "$gnuplot" >/dev/null || { echo "demo-plot: $gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }

# series MODE KEY: "second tokens 429s" for each second of MODE's run.
series() {
	local mode=$1 key=$2
	# t0: the fleet's first request (start_ns, column 4).
	t0=$(cat "$dir/$mode"-*.csv | awk -F, '$1 != "worker" && NF >= 15 && (t0 == "" || $4 < t0) { t0 = $4 }
		END { printf "%s", t0 }')
	[ -n "$t0" ] || return 1
	{
		cat "$dir/$mode"-*.csv | awk -F, -v t0="$t0" '$1 != "worker" && NF >= 15 && $7 == 200 {
			print "tok", int(($5 - t0) / 1e9), $10 + $11 }'
		awk -v t0="$t0" -v key="$key" '$1 == "arrive" && $3 == key && $NF == "reject" {
			print "429", int(($2 - t0) / 1e9), 1 }' "$dir/sim.trace"
	} | awk -v d="$duration" '
		{ if ($1 == "tok") tok[$2] += $3; else n429[$2] += $3 }
		END {
			for (s = 0; s < d; s++) printf "%d %d %d\n", s, tok[s] + 0, n429[s] + 0
			printf "%d %d 0\n", d, tok[d - 1] + 0 # where the last step ends
		}'
}

series quota "$key_quota" >"$dir/plot-quota.dat" || { echo "demo-plot: no libquota log" >&2; exit 1; }
series naive "$key_naive" >"$dir/plot-naive.dat" || { echo "demo-plot: no naive log" >&2; exit 1; }
# Every 429 of each key, also those after the last whole second.
sum429() { awk -v key="$1" '$1 == "arrive" && $3 == key && $NF == "reject" { n++ } END { print n + 0 }' "$dir/sim.trace"; }
q429=$(sum429 "$key_quota")
n429=$(sum429 "$key_naive")
limit=$((tpm / 60))
# The first seconds spend the provider's full minute of burst; the y range
# keeps the steady state readable and lets that burst go off the top.
ymax=$((limit * 3))

"$gnuplot" <<EOF || { echo "demo-plot: gnuplot failed" >&2; exit 1; }
set terminal pngcairo size 1000,640 font 'sans,10'
set output '$out'
set multiplot layout 2,1 title "tokens sent per second against a provider limit of $tpm tokens/min, the same workers and requests" font 'sans,12'
set xrange [0:$duration]
set yrange [0:$ymax]
set y2range [0:40]
set ytics nomirror
set y2tics 0,10,40 textcolor rgb '#c0392b'
set ylabel 'tokens/s sent'
set y2label '429 answers/s' textcolor rgb '#c0392b'
set grid ytics
set key top right opaque box
set label 1 'off the scale: bursts that a full minute of provider capacity lets through' at graph 0.02, graph 0.93 font 'sans,9'
set title "with libquota: $q429 answers 429"
plot '$dir/plot-quota.dat' using 1:2 with steps lw 2 lc rgb '#2471a3' title 'tokens/s', \
     $limit with lines dt 2 lw 2 lc rgb '#555555' title 'limit ($limit/s)', \
     '$dir/plot-quota.dat' using 1:(\$3 > 0 ? \$3 : 1/0) axes x1y2 with impulses lw 4 lc rgb '#c0392b' title '429s'
set title "naive (send; on 429 sleep 5 s, retry): $n429 answers 429"
set xlabel 'seconds since the fleet started'
plot '$dir/plot-naive.dat' using 1:2 with steps lw 2 lc rgb '#7d3c98' title 'tokens/s', \
     $limit with lines dt 2 lw 2 lc rgb '#555555' title 'limit ($limit/s)', \
     '$dir/plot-naive.dat' using 1:(\$3 > 0 ? \$3 : 1/0) axes x1y2 with impulses lw 4 lc rgb '#c0392b' title '429s'
unset multiplot
EOF
exit 0
