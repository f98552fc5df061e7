#!/usr/bin/env bash
# Static checks run by the test command: ruff (bugs, not taste) and mypy over the typed package.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m ruff check mdreward trainers tests benchmarks scripts plugins
python -m mypy
python -m mypy plugins/mdreward-logic/mdreward_logic plugins/mdreward-table/mdreward_table
