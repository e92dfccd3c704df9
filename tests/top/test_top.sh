#!/usr/bin/env bash
# test_top.sh - `quotactl top` as an operator meets it: in a real terminal
# (a tmux server of its own, driven with send-keys and read with
# capture-pane) against a segment under load from two top-load processes:
# every quota and limit with its bar and rates, refusals, in flight at max,
# the keys on screen, colours (and none with NO_COLOR), the clients pane
# toggling, the sort key, a resize redrawing at the new width, q exiting 0;
# then the snapshot printed without a terminal, its options and errors.
# Everything waits by polling for a condition with a deadline, never by a
# fixed sleep; every process, the tmux server and the segment are removed on
# any exit.
# Usage: test_top.sh QUOTAD QUOTACTL TOP_LOAD CONFIG TMUX (TMUX "" if none)
set -u
quotad=$1 quotactl=$2 load=$3 config=$4 tmux=$5
seg="qtest-top-$$"
tmp=$(mktemp -d)
sock=$tmp/quotad.sock
tsock=$tmp/tmux.sock
pids=()
cleanup() {
  [ -n "$tmux" ] && "$tmux" -S "$tsock" kill-server 2>/dev/null
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null
    wait "${pids[i]}" 2>/dev/null
  done
  rm -f "/dev/shm/$seg"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail=0 pass=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); else echo "FAIL: $name"; fail=$((fail + 1)); fi
}
# until_ok COMMAND...: poll COMMAND every 50 ms until it succeeds, for at
# most 15 s (a deadline for a loaded machine, not a timing assertion).
until_ok() {
  local end=$((SECONDS + 15))
  while ! "$@"; do
    [ $SECONDS -ge $end ] && return 1
    sleep 0.05
  done
}
has_line() { [ -s "$1" ] && grep -q "$2" "$1"; }

# ---- quotad and the load ------------------------------------------------

"$quotad" -c "$config" --segment "$seg" --socket "$sock" --remove-on-exit \
  --ready-fd 3 3>"$tmp/ready" 2>"$tmp/quotad.err" &
pids+=($!)
until_ok has_line "$tmp/ready" ready || { echo "quotad did not start"; cat "$tmp/quotad.err"; exit 1; }
# chat-a: ~1,000 attempts/s against 600 RPM / 60,000 TPM (refusals by tpm);
# embed-b: 4 requests held open against max_inflight 4 (refusals by in-flight).
"$load" "$seg" chat-a 0 >"$tmp/load1" &
load1=$!
pids+=($load1)
"$load" "$seg" embed-b 4 >"$tmp/load2" &
load2=$!
pids+=($load2)
until_ok has_line "$tmp/load1" ready || { echo "top-load did not start"; exit 1; }
until_ok has_line "$tmp/load2" ready || { echo "top-load did not start"; exit 1; }

top=("$quotactl" --segment "$seg" --socket "$sock" top)

# ---- without a terminal: one snapshot ------------------------------------

"${top[@]}" -d 0.2 >"$tmp/snap" 2>"$tmp/snap.err"; st=$?
check "snapshot exits 0" [ "$st" -eq 0 ]
check "snapshot says quotad is up" grep -q "quotad up: pid" "$tmp/snap"
check "snapshot shows chat-a" grep -q "^chat-a " "$tmp/snap"
check "snapshot shows embed-b" grep -q "^embed-b " "$tmp/snap"
# A limit row: kind, bar, share, used/capacity, admitted /s and /min, share
# of the limit, refused/s (numbers, not "-": two samples were taken).
row='\[[| ]*\] +[0-9]+% +[0-9.]+[kMG]?/[0-9.]+[kMG]? +[0-9.]+[kMG]? +[0-9.]+[kMG]? +[0-9]+% +[0-9.]+[kMG]?$'
check "snapshot: rpm row with bar and rates" grep -Eq "^  rpm +$row" "$tmp/snap"
check "snapshot: tpm row with bar and rates" grep -Eq "^  tpm +$row" "$tmp/snap"
check "snapshot: in flight at max 4/4" grep -Eq '^  in-fl +\[\|+\] +100% +4/4' "$tmp/snap"
check "snapshot: spend against the day budget" grep -q 'spend today \$[0-9.]* of \$100.00' "$tmp/snap"
check "snapshot fits 80 columns" [ "$(awk '{ if (length > m) m = length } END { print m }' "$tmp/snap")" -le 80 ]
check "snapshot has no escape sequences" bash -c "! grep -q $'\\033' '$tmp/snap'"
COLUMNS=132 "${top[@]}" -d 0.2 >"$tmp/snap132"
check "snapshot follows \$COLUMNS" [ "$(awk '{ if (length > m) m = length } END { print m }' "$tmp/snap132")" -gt 100 ]
"${top[@]}" -d 0.2 -c >"$tmp/snapc"
check "snapshot -c shows the clients pane" grep -Eq '^ PID +COMMAND +STATE +HELD +ADMITTED' "$tmp/snapc"
check "clients pane lists the first load process" grep -Eq "^ $load1 +top-load +live +0 " "$tmp/snapc"
check "clients pane lists the second, holding 4" grep -Eq "^ $load2 +top-load +live +4 .* embed-b$" "$tmp/snapc"
"$quotactl" --segment "$seg" --socket "$tmp/nothing.sock" top -d 0.1 >"$tmp/snapdown"; st=$?
check "quotad unreachable: still a snapshot" [ "$st" -eq 0 ]
check "quotad unreachable: said so" grep -q "quotad not answering" "$tmp/snapdown"
check "quotad unreachable: quotas still shown" grep -q "^chat-a " "$tmp/snapdown"
check "top --help exits 0" "${top[@]}" --help >"$tmp/help"
check "top --help names the keys" grep -q "q quit" "$tmp/help"
"${top[@]}" -d 0 >/dev/null 2>&1; st=$?
check "top -d 0 is a usage error" [ "$st" -eq 2 ]
"${top[@]}" --bogus >/dev/null 2>&1; st=$?
check "top --bogus is a usage error" [ "$st" -eq 2 ]
"$quotactl" --segment "$seg-none" --socket "$sock" top -d 0.1 >/dev/null 2>"$tmp/err"; st=$?
check "top on a missing segment exits 1" [ "$st" -eq 1 ]
check "and names the segment" grep -q "/$seg-none" "$tmp/err"

if [ -z "$tmux" ]; then
  echo "tmux not found: the terminal part is skipped ($pass passed, $fail failed)"
  [ $fail -eq 0 ] && exit 77
  exit 1
fi

# ---- in a terminal ----------------------------------------------------------

tm() { "$tmux" -S "$tsock" "$@"; }
# start NAME ENV...: run top in a new 80x24 session; its status goes to $tmp/NAME.exit.
start() {
  local name=$1; shift
  tm -f /dev/null new-session -d -s "$name" -x 80 -y 24 \
    "env $* ${top[*]} -d 0.3; echo \$? >$tmp/$name.exit" || return 1
}
screen_of() { tm capture-pane -p -t "$1" >"$tmp/screen" 2>/dev/null; }
# shows NAME ERE: the screen of session NAME has a line matching ERE.
shows() { screen_of "$1" && grep -Eq "$2" "$tmp/screen"; }
lacks() { screen_of "$1" && ! grep -Eq "$2" "$tmp/screen"; }
colours() { tm capture-pane -e -p -t "$1" | grep -Eq $'\033\\[(3[1-7]|9[1-7])m|\033\\[[0-9;]*;3[1-7]m'; }
bar_width() { # the width of the tpm bar on NAME's screen
  screen_of "$1" && sed -n 's/^  tpm *\(\[[| ]*\]\).*/\1/p' "$tmp/screen" | awk '{ print length; exit }'
}
wide_bar() { local w; w=$(bar_width "$1"); [ -n "$w" ] && [ "$w" -gt 40 ]; }

check "top starts in tmux" start tty -u NO_COLOR
check "screen: chat-a" until_ok shows tty '^chat-a '
check "screen: embed-b" until_ok shows tty '^embed-b '
check "screen: rpm row with bar and rates" until_ok shows tty "^  rpm +$row"
check "screen: tpm row with bar and rates" until_ok shows tty "^  tpm +$row"
check "screen: tpm refusals counted" until_ok shows tty '^  tpm +\[.* [1-9][0-9.]*[kM]?$'
check "screen: in flight 4/4 with its refusals" until_ok shows tty '^  in-fl +\[\|+\] +100% +4/4 +[1-9]'
check "screen: quit and sort keys shown" shows tty ' q quit .* s sort: name'
check "screen: colours on a terminal that has them" colours tty
check "screen: 80 columns, bar of 20" [ "$(bar_width tty)" = 20 ]
tm send-keys -t tty c
check "c shows the clients pane" until_ok shows tty '^ PID +COMMAND +STATE +HELD'
check "clients pane lists the load processes" until_ok shows tty "^ $load2 +top-load +live +4 "
check "clients pane: the keys line says c hides it" shows tty ' c clients off'
tm send-keys -t tty c
check "c again hides it" until_ok lacks tty 'PID +COMMAND'
tm send-keys -t tty s
check "s changes the sort order" until_ok shows tty 'sort: use'
tm resize-window -t tty -x 120 -y 30
check "a resize redraws at the new width" until_ok wide_bar tty
check "the keys line moves to the new bottom row" until_ok bash -c \
  "'$tmux' -S '$tsock' capture-pane -p -t tty | sed -n 30p | grep -q 'q quit'"
# The second session starts before the first ends: a tmux server with no
# session left exits, and a client that reaches it meanwhile fails ("server
# exited unexpectedly", seen in CI). (The first session is not called "top":
# tmux reads -t top as the top pane of the current session.)
check "top starts with NO_COLOR=1" start plain NO_COLOR=1
tm send-keys -t tty q
check "q exits" until_ok test -s "$tmp/tty.exit"
check "with status 0" [ "$(cat "$tmp/tty.exit" 2>/dev/null)" = 0 ]

check "NO_COLOR: the screen is drawn" until_ok shows plain "^  tpm +$row"
check "NO_COLOR: no colours" bash -c "! '$tmux' -S '$tsock' capture-pane -e -p -t plain | grep -Eq \$'\\033\\\\[[0-9;]*3[1-7]m'"
tm send-keys -t plain q
check "NO_COLOR: q exits 0" until_ok bash -c "[ \"\$(cat '$tmp/plain.exit' 2>/dev/null)\" = 0 ]"

echo "top: $pass passed, $fail failed"
[ $fail -eq 0 ]
