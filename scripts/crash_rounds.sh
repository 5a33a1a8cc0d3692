#!/usr/bin/env bash
# The SIGKILL-during-ingest tests (tests/test_stow.py over STOW-RS, tests/test_cstore.py over
# C-STORE) with 20 rounds instead of the suite's 5 and 3: every acknowledged instance readable
# and byte-identical, no indexed instance incomplete, tmp/ clean, after every restart.
set -euo pipefail
cd "$(dirname "$0")/.."
DICOMACCEL_CRASH_ROUNDS="${1:-20}" python3 -m pytest -p no:cacheprovider -q \
    tests/test_stow.py tests/test_cstore.py -k "crash_during_uploads or crash_during_c_store"
