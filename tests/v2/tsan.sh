#!/usr/bin/env bash
# tsan.sh SRCDIR BUILDDIR - the threaded tests of core v2 under
# ThreadSanitizer: configure BUILDDIR with -Db_sanitize=thread (the library,
# the test and its helpers instrumented), build only test_v2_threads and run
# it. Exits 77 (skipped) when this compiler or kernel cannot run TSan.
set -euo pipefail
src=$(cd "${1:?usage: tsan.sh SRCDIR BUILDDIR}" && pwd)
build=${2:?usage: tsan.sh SRCDIR BUILDDIR}
cc=${CC:-cc}

# Can we build and run a TSan program at all? Some kernels (high mmap
# entropy) need ASLR off for it: then run through setarch -R.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <pthread.h>\nstatic void *f(void *a) { return a; }\nint main(void) { pthread_t t; pthread_create(&t, 0, f, 0); return pthread_join(t, 0); }\n' >"$probe/p.c"
if ! "$cc" -fsanitize=thread -pthread -o "$probe/p" "$probe/p.c" 2>"$probe/err"; then
  echo "tsan.sh: $cc cannot build with -fsanitize=thread: skipped"; cat "$probe/err"; exit 77
fi
run=()
if ! "$probe/p" >/dev/null 2>&1; then
  if command -v setarch >/dev/null && setarch "$(uname -m)" -R "$probe/p" >/dev/null 2>&1; then
    run=(setarch "$(uname -m)" -R)
  else
    echo "tsan.sh: TSan programs do not run here: skipped"; exit 77
  fi
fi

opts=(-Db_sanitize=thread -Db_lundef=false -Dbuildtype=debugoptimized -Dwerror=true)
if [ -f "$build/build.ninja" ]; then
  meson setup --reconfigure "$build" "$src" "${opts[@]}" >/dev/null
else
  meson setup "$build" "$src" "${opts[@]}" >/dev/null
fi
ninja -C "$build" tests/v2/test_v2_threads_standalone
# halt_on_error: the first race fails the run; exitcode 66 tells it apart.
export TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
export V2_THREADS_MS=${V2_THREADS_MS:-1500}
"${run[@]}" "$build/tests/v2/test_v2_threads_standalone"
