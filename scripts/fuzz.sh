#!/usr/bin/env bash
# Run every fuzz harness in fuzz/ for SECONDS each (default 20) with atheris/libFuzzer, on a
# scratch copy of its seed corpus (fuzz/corpus/<name>), and fail on the first crash. The
# harnesses are differential where a kernel has a twin (fuzz/common.py).
#
# --sanitize: then replay every input each run kept (its grown corpus) through a copy of the
# kernels built with AddressSanitizer and UBSan (setup.py DICOMACCEL_SANITIZE=1), gcc's
# runtimes preloaded. The replay, not the fuzzing itself, runs sanitized: with gcc's libasan
# preloaded libFuzzer loses its coverage feedback, so the guided run finds the inputs and the
# sanitized run checks every memory access they make.
#
# usage: scripts/fuzz.sh [SECONDS] [--sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
sanitize="${2:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0

san_env=()
if [ "$sanitize" = "--sanitize" ]; then
    echo "== building the kernels with AddressSanitizer and UBSan"
    mkdir -p "$work/san"
    cp -r setup.py pyproject.toml ext src "$work/san/"
    rm -f "$work/san/src/dicomaccel/"*.so
    (cd "$work/san" && DICOMACCEL_SANITIZE=1 python3 setup.py -q build_ext --inplace >"$work/san.log" 2>&1) \
        || { tail -40 "$work/san.log" >&2; exit 1; }
    san_env=(env "LD_PRELOAD=$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
             "ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:handle_segv=0"
             "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"
             "PYTHONPATH=$work/san/src" DICOMACCEL_REQUIRE_EXTENSIONS=1)
fi

for harness in fuzz/fuzz_*.py; do
    name="$(basename "$harness" .py)"; name="${name#fuzz_}"
    mkdir -p "$work/$name" "$work/$name-crashes"
    cp -r "fuzz/corpus/$name/." "$work/$name/" 2>/dev/null || true
    echo "== $name: ${seconds} s"
    if ! (cd fuzz && python3 "fuzz_$name.py" -max_total_time="$seconds" -rss_limit_mb=4096 \
            -artifact_prefix="$work/$name-crashes/" "$work/$name" 2>"$work/$name.log"); then
        grep -a -v "^#" "$work/$name.log" | tail -40 >&2
        for crash in "$work/$name-crashes"/*; do
            echo "fuzz: $name failed on this input (base64): $(base64 -w0 "$crash")" >&2
        done
        status=1
    fi
    grep -a -E "^Done [0-9]+ runs" "$work/$name.log" | tail -1 || true
    if [ ${#san_env[@]} -gt 0 ]; then
        if ! (cd fuzz && "${san_env[@]}" python3 "fuzz_$name.py" -runs=0 -rss_limit_mb=4096 \
                "$work/$name" 2>"$work/$name-san.log"); then
            grep -a -v "^INFO" "$work/$name-san.log" | tail -60 >&2
            echo "fuzz: $name failed under AddressSanitizer/UBSan (log above)" >&2
            status=1
        else
            echo "   sanitized replay: $(grep -a -E '^Done [0-9]+ runs' "$work/$name-san.log" | tail -1)"
        fi
    fi
done
exit $status
