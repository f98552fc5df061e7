#!/usr/bin/env bash
# The test command of the README: set up, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-tests.sh
bash scripts/lint.sh
python -m pytest -q -p no:cacheprovider "$@"
