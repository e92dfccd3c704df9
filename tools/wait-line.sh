# shellcheck shell=bash
# wait-line.sh - sourced by the demo, the benches and the tests (tests/harness.sh).
# wait_line FILE PID: poll (bounded: 10 s) until FILE has a first line while
# process PID lives; print that line. A readiness check on a line the other
# process writes (its port, "ready"), not a sleep that guesses a delay.
wait_line() {
	local i line
	for ((i = 0; i < 200; i++)); do
		if [ -s "$1" ] && IFS= read -r line <"$1" && [ -n "$line" ]; then
			printf '%s\n' "$line"
			return 0
		fi
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
