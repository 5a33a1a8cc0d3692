#!/usr/bin/env bash
# Run every fuzz harness in fuzz/ for SECONDS each (default 20) with atheris/libFuzzer, on a
# scratch copy of its seed corpus (fuzz/corpus/<name>), and fail on the first crash. The
# harnesses are differential where a kernel has a twin (fuzz/common.py). For the sanitizer
# build, install with DICOMACCEL_SANITIZE=1 first and run with LD_PRELOAD set to libasan.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
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
done
exit $status
