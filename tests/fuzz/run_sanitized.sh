#!/usr/bin/env bash
# Build safeload._vmfast with AddressSanitizer + UndefinedBehaviorSanitizer into
# a scratch copy of src/ and run the differential, property and oracle fuzz
# suites against it (not part of the default suite: it takes minutes).
#
#   tests/fuzz/run_sanitized.sh                 # default example counts
#   SAFELOAD_FUZZ_EXAMPLES=3000 tests/fuzz/run_sanitized.sh
#
# Any sanitizer report aborts the run (halt_on_error) and fails it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp -r "$root/src" "$scratch/src"
include="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
suffix="$(python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
rm -f "$scratch"/src/safeload/_vmfast*.so
gcc -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
    -fno-sanitize-recover=undefined -I"$include" \
    "$root/src/safeload/_vmfast.c" -o "$scratch/src/safeload/_vmfast$suffix"
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
cd "$root"
PYTHONPATH="$scratch/src" LD_PRELOAD="$preload" \
    ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    python -c 'import safeload.unpickler as u, sys; f = u.FAST_RUN; sys.exit(f is None or not f.__module__)' \
    || { echo "the sanitized build did not load" >&2; exit 1; }
PYTHONPATH="$scratch/src" LD_PRELOAD="$preload" \
    ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    python -m pytest -q -p no:cacheprovider tests/fuzz/test_fast_vm.py \
    tests/fuzz/test_fuzz_properties.py tests/fuzz/test_fuzz_oracle.py "$@"
