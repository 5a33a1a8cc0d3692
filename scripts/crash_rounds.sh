#!/usr/bin/env bash
# The SIGKILL-during-ingest test (tests/test_stow.py) with 20 rounds per worker count instead
# of the suite's 5: every acknowledged instance readable and byte-identical, no indexed
# instance incomplete, tmp/ clean, after every restart.
set -euo pipefail
cd "$(dirname "$0")/.."
DICOMACCEL_CRASH_ROUNDS="${1:-20}" python3 -m pytest -p no:cacheprovider -q tests/test_stow.py -k crash_during_uploads
