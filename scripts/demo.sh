#!/usr/bin/env bash
# The README's main command: install mdreward, then score the built-in mixed-domain example.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e .
out="${1:-scored.jsonl}"
mdreward score --example -o "$out" --overwrite
