# shellcheck shell=bash
# npm-install.sh - sourced by the tests that need npm packages.
# npm_install DIR PACKAGE...: install the packages once into DIR (in the
# build tree; nothing is vendored). Exits 77 (skipped), with the reason,
# when node/npm are missing or the registry cannot be reached.
npm_install() {
	local dir=$1 p missing=()
	shift
	command -v node >/dev/null && command -v npm >/dev/null ||
		{ echo "SKIP: node and npm are needed"; exit 77; }
	for p in "$@"; do
		[ -f "$dir/node_modules/${p%@*}/package.json" ] || missing+=("$p")
	done
	[ ${#missing[@]} = 0 ] && return 0
	mkdir -p "$dir" || exit 1
	# One installer at a time per folder (tests run in parallel).
	(
		flock 9
		npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "${missing[@]}" \
			>"$dir/npm-install.log" 2>&1
	) 9>"$dir/.lock" || {
		tail -n 5 "$dir/npm-install.log"
		echo "SKIP: npm install ${missing[*]} failed (registry unreachable?)"
		exit 77
	}
}
