"""TRL runs for test_trl_cgpo.py: ``python trl_targets.py OUT_DIR single``, or
``torchrun --nproc_per_node 2 trl_targets.py OUT_DIR ddp`` (gloo on CPU). No FSDP2 here: accelerate
1.15 turns FSDP on only for accelerator devices (a CPU run stays MULTI_CPU, i.e. DDP).

A tiny Qwen2 built offline, a math + keyword dataset scored by mdreward's TRL reward functions, and
a fixed ``rollout_func`` (TRL's own hook): every prompt and completion has a fixed token length and
the completions alternate right/wrong, so every run sees the very same rows whatever the number of
processes (TRL pads each rank's batch to its own longest row, and a different left padding moves
the position ids). Rows are not shuffled across prompts: with two ranks rank 0 gets prompts 0-3 of
each generation batch and rank 1 prompts 4-7, all math, so rank 1 holds no keyword row.
Each rule's final parameters go to ``OUT_DIR/<mode>-rank<r>.pt`` with the per-step logs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from integration_helpers import KEYWORD, registry_with, tiny_qwen2, tiny_tokenizer  # noqa: E402

PROMPT_TOKENS, COMPLETION_TOKENS = 10, 8
STEPS = 3
MATH = [(1, 2), (3, 4), (5, 6), (2, 2)]


def rows() -> list[dict[str, Any]]:
    """8 prompts per generation batch: 0-3 alternate math / keyword, 4-7 are math."""
    out = []
    for block in range(STEPS):
        for i in range(8):
            a, b = MATH[(i + block) % 4]
            if i < 4 and i % 2:
                word = "xyzq"[(i + block) % 4]
                out.append({"prompt": f"Say a word with {word}.", "domain": "keyword", "reference": word})
            else:
                out.append({"prompt": f"What is {a} + {b}?", "domain": "math", "reference": str(a + b)})
    return out


def build_tokenizer() -> Any:
    corpus = [r["prompt"] for r in rows()] + ["\\boxed{0} \\boxed{3} \\boxed{7} \\boxed{11} \\boxed{4}",
                                               "x y z q . word with"]
    return tiny_tokenizer(corpus)


def fixed_length(ids: list[int], n: int, filler: int, left: bool) -> list[int]:
    ids = ids[-n:] if left else ids[:n]
    pad = [filler] * (n - len(ids))
    return pad + ids if left else ids + pad


def make_rollout(tokenizer: Any, table: dict[str, dict[str, Any]]):  # type: ignore[no-untyped-def]
    """TRL ``rollout_func``: the i-th completion of a prompt is right when i is even, wrong otherwise."""
    dot = tokenizer.encode(".")[0]

    def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
        prompt_ids, completion_ids = [], []
        for i, prompt in enumerate(prompts):
            row = table[prompt]
            right = i % 2 == 0
            if row["domain"] == "math":
                text = f"\\boxed{{{row['reference'] if right else '0'}}}"
            else:
                text = f"word {row['reference'] if right else '.'}"
            prompt_ids.append(fixed_length(tokenizer.encode(prompt), PROMPT_TOKENS, dot, left=True))
            body = fixed_length(tokenizer.encode(text), COMPLETION_TOKENS - 1, dot, left=False)
            completion_ids.append(body + [tokenizer.eos_token_id])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def train(out: Path, mode: str, rule: str | None, world: int) -> dict[str, Any]:
    import mdreward
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from mdreward.integrations.trl import reward_functions
    from trainers.trl_engine import CGPOTrainer

    data = rows()
    tokenizer = build_tokenizer()
    model = tiny_qwen2(tokenizer, seed=0)
    per_device = 8 // world
    args = GRPOConfig(output_dir=str(out / f"run-{mode}-{rule}"), per_device_train_batch_size=per_device,
                      gradient_accumulation_steps=2, steps_per_generation=2, num_generations=2,
                      max_completion_length=COMPLETION_TOKENS, max_steps=STEPS, logging_steps=1, learning_rate=3e-3,
                      beta=0.0, report_to="none", use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True,
                      seed=0, shuffle_dataset=False, lr_scheduler_type="linear", max_grad_norm=1.0)
    config = mdreward.ScoringConfig(format_rules=mdreward.FormatRules(require_think=False))
    scorer = mdreward.Scorer(config, registry=registry_with(KEYWORD))
    try:
        common = dict(model=model, reward_funcs=reward_functions(scorer, ["math", "keyword"]), args=args,
                      train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                      rollout_func=make_rollout(tokenizer, {r["prompt"]: r for r in data}))
        trainer: Any = GRPOTrainer(**common) if rule is None else CGPOTrainer(rule=rule, **common)
        seen: list[list[str]] = []
        stored_logps: list[bool] = []
        if rule is not None:
            original = trainer._update

            def recording_update(m: torch.nn.Module) -> torch.Tensor:
                seen.append([d for mb in trainer._window for d in mb["domain"]])
                stored_logps.append(all(mb.get("old_per_token_logps") is not None for mb in trainer._window))
                return original(m)

            trainer._update = recording_update
        trainer.train()
        params = {}
        sharded = any(callable(getattr(p, "full_tensor", None)) for p in trainer.model.parameters())
        for name, p in trainer.model.named_parameters():
            full = p.full_tensor() if callable(getattr(p, "full_tensor", None)) else p
            params[name] = full.detach().clone()
        saved = None
        if rule is not None:
            trainer.save_model(str(out / f"saved-{mode}-{rule}"))
            saved = str(out / f"saved-{mode}-{rule}")
    finally:
        scorer.close()
    return {"params": params, "logs": trainer.state.log_history, "domains_seen": seen, "saved": saved,
            "stored_logps": stored_logps,
            "sharded": sharded, "distributed_type": str(trainer.accelerator.distributed_type)}


def main(out_dir: str, mode: str) -> None:
    out = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    rules: list[str | None] = ["cgpo", "joint"] + ([None] if mode == "single" else [])
    results = {str(rule): train(out, mode, rule, world) for rule in rules}
    torch.save(results, out / f"{mode}-rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
