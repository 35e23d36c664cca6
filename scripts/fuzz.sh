#!/usr/bin/env bash
# Fuzz every entry point of the C kernels (vpncloud/fastpath/_kernels.c) with atheris under ASan and
# UBSan (issue 21). Not part of CI: a long run is minutes to hours.
#
#   scripts/fuzz.sh [RUNS] [TARGET...]     RUNS inputs per target (default 1000000)
#
# Builds the extension with clang -fsanitize=address,undefined,fuzzer-no-link into $FUZZ_DIR (not
# into the source tree: the installed build stays the optimised one), preloads atheris' ASan runtime
# with libFuzzer linked in (atheris' native_extension_fuzzing.md) and runs the targets one after the
# other. Prints, per target, the inputs run and the findings (crash files in $FUZZ_DIR/TARGET/).
# Needs: clang (apt-get install clang), libssl-dev, atheris (in the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1000000}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(aead seal open seal_rows open_train tcp_rows coalesce_rows ed25519 ed25519_verify x25519)
PY=${PYTHON:-.venv/bin/python}
FUZZ_DIR=${FUZZ_DIR:-/tmp/vpncloud-fuzz}
mkdir -p "$FUZZ_DIR"

SO="$FUZZ_DIR/_kernels$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
# -fno-sanitize-recover: undefined behaviour stops the run like a memory error does
clang -shared -fPIC -g -O1 -fno-omit-frame-pointer \
    -fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined \
    -I"$INCLUDE" vpncloud/fastpath/_kernels.c -lcrypto -o "$SO"

RUNTIME="$("$PY" -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so"
# CPython itself is not instrumented: its allocations look like leaks to LeakSanitizer
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

status=0
for target in "${TARGETS[@]}"; do
    work="$FUZZ_DIR/$target"
    mkdir -p "$work/corpus"
    log="$work/log.txt"
    set +e
    LD_PRELOAD="$RUNTIME" "$PY" fuzz/kernels.py "$target" "$SO" \
        -runs="$RUNS" -max_len=4096 -artifact_prefix="$work/" -print_final_stats=1 "$work/corpus" \
        >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    findings=$(find "$work" -maxdepth 1 -name 'crash-*' -o -maxdepth 1 -name 'leak-*' \
        -o -maxdepth 1 -name 'timeout-*' -o -maxdepth 1 -name 'oom-*' | wc -l)
    echo "$target: ${runs:-?} inputs run, $findings findings, exit $rc (log $log)"
    [ "$rc" -eq 0 ] && [ "$findings" -eq 0 ] || status=1
done
exit $status
