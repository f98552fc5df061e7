"""Update-phase cost of CGPO against joint learning inside TRL's GRPOTrainer (CGPOTrainer), 2 CPU processes.

One ``torchrun --nproc_per_node 2`` run (gloo, DDP) trains a Qwen2 built here (``--hidden``,
``--layers``) with each rule in turn, interleaved (joint, cgpo, joint, cgpo, ... for ``--rounds``),
``--steps`` optimizer steps each, fresh weights every time; rollouts are fixed random tokens from
TRL's ``rollout_func`` hook (no generation cost), 3 domains of unequal size. Reported per rule, on
rank 0, the first step of each run left out as warm-up:

- update time: ``CGPOTrainer``'s ``update/time_s`` (the rule's ``update()``: per-domain forward,
  backward, optimizer steps, CGPO's snapshot and interpolation), median, and its ratio to joint's;
- extra memory (a second torchrun run, the same interleaving, glibc told to unmap large frees so RSS
  follows live tensors): peak RSS during ``update()`` (polled every millisecond) minus the RSS just
  before it, max over steps; CGPO's excess over joint in units of one fp32 parameter copy;
- step time: TRL's ``step_time`` (rollout, scoring, the stored log-probs forward, the update), with a
  plain ``GRPOTrainer`` run as reference;
- the work CGPO adds to joint, timed alone in this process (one thread, medians of 15): K-1 extra
  fused AdamW steps and gradient clips, the phi_0 snapshot to CPU and the interpolation, as a fraction
  of joint's update time. On a shared machine this is the steadier figure: the interleaved update
  times scatter by tens of percent with the load.

    python benchmarks/bench_trl_update.py [--steps 5] [--rounds 2] [--hidden 256] [--layers 4]

The script relaunches itself under torchrun; results go to benchmarks/results/trl_update.json with
``uptime`` before and after (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

DOMAINS = ["a"] * 4 + ["b"] * 3 + ["c"]  # per 8 prompts: shares 1/2, 3/8, 1/8
PROMPT_TOKENS, COMPLETION_TOKENS, VOCAB = 16, 64, 512


def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
    """Fixed random tokens per (prompt, position): the same rows for every rule."""
    prompt_ids, completion_ids = [], []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(hash((prompt, i % trainer.num_generations)) % (2**31))
        prompt_ids.append(torch.randint(3, VOCAB, (PROMPT_TOKENS,), generator=gen).tolist())
        completion_ids.append(torch.randint(3, VOCAB, (COMPLETION_TOKENS,), generator=gen).tolist())
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def parity_reward(completion_ids: list[list[int]], **_: Any) -> list[float]:
    return [float(sum(ids) % 2) for ids in completion_ids]


def tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def model(hidden: int, layers: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=1, pad_token_id=0)
    return Qwen2ForCausalLM(config)


def run(rule: str | None, opts: argparse.Namespace, out: Path) -> dict[str, Any]:
    from bench_trainers import PeakRSS
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trainers.trl_engine import CGPOTrainer

    rows = [{"prompt": f"p{i}", "domain": DOMAINS[i % 8]} for i in range(8 * 2 * (opts.steps + 1))]
    args = GRPOConfig(output_dir=str(out / f"run-{rule}"), per_device_train_batch_size=8,
                      gradient_accumulation_steps=2, steps_per_generation=2, num_generations=2,
                      max_completion_length=COMPLETION_TOKENS, max_steps=opts.steps, logging_steps=1,
                      learning_rate=1e-5, beta=0.0, report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                      disable_tqdm=True, seed=0, shuffle_dataset=False, max_grad_norm=1.0)
    common = dict(model=model(opts.hidden, opts.layers), reward_funcs=[parity_reward], args=args,
                  train_dataset=Dataset.from_list(rows), processing_class=tokenizer(), rollout_func=rollout)
    extra_bytes: list[int] = []
    if rule is None:
        trainer: Any = GRPOTrainer(**common)
    else:
        trainer = CGPOTrainer(rule=rule, **common)
    if rule is not None and opts.phase == "memory":
        update = trainer._update

        def measured(m: torch.nn.Module) -> torch.Tensor:
            with PeakRSS() as peak:
                before = peak.peak
                loss = update(m)
            extra_bytes.append(peak.peak - before)
            return loss

        trainer._update = measured
    trainer.train()
    logs = [e for e in trainer.state.log_history if "step_time" in e][1:]  # first step: warm-up
    params = sum(p.numel() for p in trainer.model.parameters())
    return {"update_s": [e["update/time_s"] for e in logs if "update/time_s" in e],
            "step_s": [e["step_time"] for e in logs], "extra_bytes": extra_bytes[1:], "param_bytes": 4 * params}


def worker(opts: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    out = Path(opts.out)
    results: dict[str, list[dict[str, Any]]] = {"joint": [], "cgpo": [], "trl": []}
    for _ in range(opts.rounds):
        for rule in ("joint", "cgpo"):
            results[rule].append(run(rule, opts, out))
    if opts.phase == "time":
        results["trl"].append(run(None, opts, out))
    if int(os.environ.get("RANK", "0")) == 0:
        (out / f"{opts.phase}.json").write_text(json.dumps(results))


def cgpo_extra_work_s(opts: argparse.Namespace, domains: int) -> dict[str, float]:
    """Median seconds of what CGPO does beyond joint, on this model's parameters (one thread)."""
    import time

    torch.set_num_threads(1)
    params = list(model(opts.hidden, opts.layers).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    optimizer.step()
    phi0 = [p.detach().clone() for p in params]

    def median(fn: Any) -> float:
        times = []
        for _ in range(15):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    parts = {"adamw_step_s": median(optimizer.step),
             "clip_s": median(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0)),
             "snapshot_s": median(lambda: [p.detach().to("cpu", copy=True) for p in params]),
             "interpolate_s": median(lambda: [p.data.lerp_(q, -0.2) for p, q in zip(params, phi0)])}
    parts["total_s"] = ((domains - 1) * (parts["adamw_step_s"] + parts["clip_s"]) + parts["snapshot_s"]
                        + parts["interpolate_s"])
    return parts


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def summary(timed: dict[str, list[dict[str, Any]]], memory: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def pooled(rule: str, key: str) -> list[float]:
        return [v for r in (memory if key == "extra_bytes" else timed)[rule] for v in r[key]]

    results = timed
    param_bytes = results["joint"][0]["param_bytes"]
    out: dict[str, Any] = {"param_bytes": param_bytes, "rules": {}}
    for rule in ("joint", "cgpo", "trl"):
        entry = {"step_s_median": statistics.median(pooled(rule, "step_s"))}
        if rule != "trl":
            entry["update_s_median"] = statistics.median(pooled(rule, "update_s"))
            entry["update_extra_mib_max"] = max(pooled(rule, "extra_bytes")) / 2**20
        out["rules"][rule] = entry
    joint, cgpo = out["rules"]["joint"], out["rules"]["cgpo"]
    out["cgpo_update_time_ratio"] = cgpo["update_s_median"] / joint["update_s_median"]
    out["cgpo_step_time_ratio"] = cgpo["step_s_median"] / joint["step_s_median"]
    out["joint_step_time_ratio_vs_trl"] = joint["step_s_median"] / out["rules"]["trl"]["step_s_median"]
    excess = (cgpo["update_extra_mib_max"] - joint["update_extra_mib_max"]) * 2**20
    out["cgpo_extra_memory_param_copies"] = excess / param_bytes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase", default="time", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if "RANK" in os.environ:
        worker(opts)
        return
    from common import save

    with tempfile.TemporaryDirectory() as tmp:
        before = uptime()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONPATH": str(HERE.parent)}
        malloc = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        for phase, extra in (("time", {}), ("memory", malloc)):
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            __file__, "--out", tmp, "--phase", phase, *sys.argv[1:]], env={**env, **extra}, check=True)
        timed, memory = (json.loads((Path(tmp) / f"{p}.json").read_text()) for p in ("time", "memory"))
        results = {"time": timed, "memory": memory}
    summary_ = summary(timed, memory)
    extra = cgpo_extra_work_s(opts, len(set(DOMAINS)))
    summary_["cgpo_extra_work"] = extra
    joint_update = summary_["rules"]["joint"]["update_s_median"]
    summary_["cgpo_extra_work_fraction_of_joint_update"] = extra["total_s"] / joint_update
    payload = {"command": "python benchmarks/bench_trl_update.py " + " ".join(sys.argv[1:]), "uptime_before": before,
               "uptime_after": uptime(), "options": vars(opts) | {"out": None, "phase": None},
               **summary_, "raw": results}
    path = save("trl_update", payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "raw"}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
