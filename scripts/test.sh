#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (as root), then run it:
# the whole suite with the compiled kernels required, then the whole suite again on the
# pure-Python twins (servers the tests start inherit the switch). This is the README's test
# command; .ci/run calls it and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's path, not PATH: pynetdicom installs Python apps of the same names (getscu, storescu).
# dicom3tools' dciodvfy is the outside validator the IOD checks are compared with.
# PostgreSQL's initdb and pg_ctl start the throwaway cluster of the PostgreSQL index tests.
# gcc (with its ASan/UBSan runtimes) and the Python headers build the kernels, the sanitized
# kernels of the fuzz replay and the benchmark floor servers; SQLite's header the design floor.
packages="dcmtk dicom3tools postgresql gcc libc6-dev libsqlite3-dev"
python_h="$(python3 -c 'import os, sysconfig; print(os.path.join(sysconfig.get_paths()["include"], "Python.h"))')"
[ -f "$python_h" ] || packages="$packages python3-dev"
if [ ! -x /usr/bin/getscu ] || [ ! -x /usr/bin/echoscu ] || [ ! -x /usr/bin/dciodvfy ] \
        || ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || ! command -v gcc >/dev/null \
        || [ ! -f "$(gcc -print-file-name=libasan.so 2>/dev/null)" ] || [ ! -f "$python_h" ] \
        || [ ! -f /usr/include/sqlite3.h ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages
    else
        echo "warning: one of $packages is missing and we are not root; their tests will skip or fail" >&2
    fi
fi

python3 -m pip install -q --upgrade pip
python3 -m pip install -q ".[test]"

# Run from a directory where ./src is not importable, so the installed package (with its
# compiled extensions) is what the tests exercise.
export PYTHONDONTWRITEBYTECODE=1
DICOMACCEL_REQUIRE_EXTENSIONS=1 python3 -m pytest -p no:cacheprovider tests benchmarks/tests "$@"
# The pure-Python twins do not touch the index: this run leaves out the tests' PostgreSQL
# twins (tests/conftest.py), which the first run made, and the modules whose code never
# reaches a kernel (configuration, TLS, operations, the PostgreSQL index, Storage Commitment,
# the benchmark runner, the oldest-pynetdicom and 1 GiB memory checks, worker CPU placement):
# ~2 minutes less.
DICOMACCEL_NO_EXTENSIONS=1 DICOMACCEL_TEST_INDEXES=sqlite python3 -m pytest -p no:cacheprovider tests \
    --ignore=tests/test_config.py --ignore=tests/test_cli.py --ignore=tests/test_tls.py \
    --ignore=tests/test_access_and_ops.py --ignore=tests/test_postgres_index.py \
    --ignore=tests/test_storage_commitment.py --ignore=tests/test_benchmark_runner.py \
    --ignore=tests/test_integrations_pynetdicom_oldest.py --ignore=tests/test_integrations_pynetdicom_rss.py \
    --ignore=tests/test_cpu_affinity.py "$@"
# Every fuzz harness (fuzz/, differential against the twins) for 20 s: 0 crashes; then what
# each kept, replayed through an AddressSanitizer + UBSan build of the kernels.
bash scripts/fuzz.sh 20 --sanitize
