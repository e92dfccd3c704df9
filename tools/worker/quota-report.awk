# SPDX-License-Identifier: MIT
#
# quota-report.awk - sums up quota-worker(1) CSV logs (any number of files,
# header lines included) into key=value lines that tools/demo.sh and the
# tests read. POSIX awk (mawk is enough).
#
# Variables (-v): rpm, tpm (the limits), pin, pout (USD per million input and
# output tokens), warmup and duration (seconds). The measured interval is
# [t0 + warmup, t0 + duration), t0 the earliest start_ns in the logs: it leaves
# out the first burst that a full bucket allows, so utilisation is what the
# steady state gets out of the limit. A bucket of a whole minute can hold
# more than an interval's rate, so a fleet that saves tokens up while it
# sleeps can spend above 100 % of the rate over a short interval; slice
# (seconds, default 2.5) cuts the interval into slices whose min and max
# utilisation show how steady the use is.
#
# Output:
#   served, n429, abandoned, failed    counts over the whole run
#   window_s                           length of the measured interval
#   window_requests, window_tokens     served requests sent in the interval,
#                                      and their prompt + completion tokens
#   rpm_util, tpm_util                 % of the limit's rate over the interval
#   binding, binding_util              the limit used most, and its %
#   rpm_slice_min, rpm_slice_max,      the least and most used slice of the
#   tpm_slice_min, tpm_slice_max       interval, % of the limit's rate
#   spend_usd                          what the served requests cost
#   wait_p50_ms, wait_p99_ms           waited_ns of served requests (time from
#                                      wanting to send to the successful send)
#   ss_wait_p50_ms, ss_wait_p99_ms     the same for the requests started in the
#                                      measured interval ("steady state"); one
#                                      abandoned at the end of the run counts
#                                      with the time it had waited (end - start)

BEGIN { FS = ","; n = 0; t0 = -1 }

$1 == "worker" { next }          # a header line
NF < 15 { next }                 # a truncated line (a killed worker)

{
	start = $4 + 0; sent = $5 + 0; status = $7 + 0
	if (t0 < 0 || start < t0) t0 = start
	n429 += $9
	if (status == 200 || status == 0) {
		nr++; r_start[nr] = start
		r_wait[nr] = (status == 200 ? $13 : $6 - $4) / 1000000
	}
	if (status == 200) {
		served++
		rec_sent[served] = sent
		rec_tok[served] = $10 + $11
		spend += ($10 * pin + $11 * pout) / 1000000
		wait[++n] = $13 / 1000000
	} else if (status == 0) {
		abandoned++
	} else {
		failed++
	}
}

# Sort a[1..len] ascending (quicksort; awk has no sort of its own).
function qsort(a, lo, hi,    i, last, tmp) {
	if (lo >= hi) return
	tmp = a[lo]; a[lo] = a[int((lo + hi) / 2)]; a[int((lo + hi) / 2)] = tmp
	last = lo
	for (i = lo + 1; i <= hi; i++)
		if (a[i] < a[lo]) { last++; tmp = a[last]; a[last] = a[i]; a[i] = tmp }
	tmp = a[lo]; a[lo] = a[last]; a[last] = tmp
	qsort(a, lo, last - 1)
	qsort(a, last + 1, hi)
}

# The p-th percentile (nearest rank) of the sorted a[1..len].
function pct(a, len, p,    k) {
	if (len == 0) return 0
	k = int(p * len / 100 + 0.999999)
	if (k < 1) k = 1
	if (k > len) k = len
	return a[k]
}

END {
	ws = t0 + warmup * 1e9; we = t0 + duration * 1e9
	for (i = 1; i <= served; i++)
		if (rec_sent[i] >= ws && rec_sent[i] < we) { wreq++; wtok += rec_tok[i] }
	w = duration - warmup
	if (slice <= 0) slice = 2.5
	ns = int(w / slice + 1e-9)
	for (i = 1; i <= served; i++) {
		if (rec_sent[i] < ws) continue
		k = int((rec_sent[i] - ws) / (slice * 1e9))
		if (k < ns) { sreq[k]++; stok[k] += rec_tok[i] }
	}
	rmin = tmin = -1; rmax = tmax = 0
	for (k = 0; k < ns; k++) {
		ru = rpm > 0 ? 100 * sreq[k] / (rpm * slice / 60) : 0
		tu = tpm > 0 ? 100 * stok[k] / (tpm * slice / 60) : 0
		if (rmin < 0 || ru < rmin) rmin = ru
		if (tmin < 0 || tu < tmin) tmin = tu
		if (ru > rmax) rmax = ru
		if (tu > tmax) tmax = tu
	}
	if (rmin < 0) rmin = tmin = 0
	rpm_util = (rpm > 0 && w > 0) ? 100 * wreq / (rpm * w / 60) : 0
	tpm_util = (tpm > 0 && w > 0) ? 100 * wtok / (tpm * w / 60) : 0
	for (i = 1; i <= nr; i++)
		if (r_start[i] >= ws && r_start[i] < we) ssw[++nss] = r_wait[i]
	qsort(wait, 1, n)
	qsort(ssw, 1, nss)
	printf "served=%d\nn429=%d\nabandoned=%d\nfailed=%d\n", served, n429, abandoned, failed
	printf "window_s=%.1f\nwindow_requests=%d\nwindow_tokens=%d\n", w, wreq, wtok
	printf "rpm_util=%.1f\ntpm_util=%.1f\n", rpm_util, tpm_util
	if (tpm_util >= rpm_util) printf "binding=tpm\nbinding_util=%.1f\n", tpm_util
	else printf "binding=rpm\nbinding_util=%.1f\n", rpm_util
	printf "rpm_slice_min=%.0f\nrpm_slice_max=%.0f\n", rmin, rmax
	printf "tpm_slice_min=%.0f\ntpm_slice_max=%.0f\n", tmin, tmax
	printf "spend_usd=%.4f\n", spend
	printf "wait_p50_ms=%.0f\nwait_p99_ms=%.0f\n", pct(wait, n, 50), pct(wait, n, 99)
	printf "ss_wait_p50_ms=%.0f\nss_wait_p99_ms=%.0f\n", pct(ssw, nss, 50), pct(ssw, nss, 99)
}
