"""Update-phase cost of CGPO and PCGrad against joint learning, on identical batches.

For each model size (the tiny 2-layer Qwen2 of the CPU example, and a ~28M-parameter Qwen2) one
mini-batch of K domains (random tokens, recorded old/ref log-probs, random advantages) is built
once; every rule starts from the same weights and optimizer state and updates on that same
mini-batch. Nothing but the update phase is timed (no generation, no scoring).

Time: rules run interleaved in one process (joint, cgpo, ..., joint, cgpo, ...), ``--rounds``
times, and the median per rule is compared with joint's median (ratio). The machine is shared:
interleaving keeps background load from favouring one rule.
Memory: each rule runs alone in a fresh subprocess (glibc told to unmap large frees, so RSS follows
live tensors); extra memory = peak RSS (polled every millisecond) during two updates minus the RSS
before them, reported against joint's in units of one parameter copy. Also reported: the time of
the work CGPO adds to joint (K-1 extra AdamW steps, the phi_0 snapshot, the interpolation),
measured alone, as a fraction of joint's update time.
On CUDA, peak allocated memory replaces RSS.

    python benchmarks/bench_trainers.py [--rounds 7] [--sizes tiny,30m] [--device cpu] [--unfused]

AdamW is the fused implementation the engine uses (``--unfused``: torch's default, whose per-tensor
loop makes each of CGPO's extra optimizer steps several times dearer on CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save  # noqa: E402
from trainers.grpo import GRPOConfig  # noqa: E402
from trainers.rollout import GRPOObjective, MicroBatch, recorded_logprobs  # noqa: E402
from trainers.updates import DomainBatch, make_rule  # noqa: E402

SIZES = {
    # name: (Qwen2 config kwargs, domains K, sequences per domain, prompt len, response len, micro-batch)
    "tiny": (dict(vocab_size=300, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2), 3, 16, 16, 32, 16),
    "30m": (dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=4), 3, 8, 32, 64, 8),
}
RULES = {
    "joint": dict(name="joint"),
    "cgpo": dict(name="cgpo", alpha=1.2),
    "cgpo_alpha1": dict(name="cgpo", alpha=1.0),
    "pcgrad": dict(name="pcgrad"),
    "mgs": dict(name="mgs"),  # per-layer attn/mlp/norm modules
    "mgs_per_tensor": dict(name="mgs", modules="parameter"),  # the MGS authors' code: one module per tensor
    "capo": dict(name="capo"),
    "capo_cgpo": dict(name="capo", inner="cgpo", inner_options={"alpha": 1.2}),
    "gxpo": dict(name="gxpo"),  # paper defaults (K 5, alpha 0.5); the gate cannot trip within a run's few updates
    "cgpo_gxpo": dict(name="cgpo_gxpo", alpha=1.2),
}
ACCELERATOR_ONLY = {"cgpo_phi0_cpu": dict(name="cgpo", alpha=1.2, phi0_device="cpu")}  # same as cgpo on CPU


def build(size: str, device: str, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg_kwargs, k, n, p_len, r_len, micro = SIZES[size]
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=256, tie_word_embeddings=True, **cfg_kwargs)).to(device)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for d in range(k):
        ids = torch.randint(0, cfg_kwargs["vocab_size"], (n, p_len + r_len), generator=gen)
        attn = torch.ones_like(ids)
        resp_mask = torch.ones(n, r_len, dtype=torch.long)
        for row in range(n):  # ragged responses
            cut = int(torch.randint(r_len // 2, r_len + 1, (1,), generator=gen))
            resp_mask[row, cut:] = 0
            attn[row, p_len + cut:] = 0
        old = recorded_logprobs(model, ids.to(device), attn.to(device), r_len, 1.0).cpu()
        full = MicroBatch(ids, attn, resp_mask, old, old - 0.01, torch.randn(n, generator=gen))
        micro_batches = [full.select(range(i, min(n, i + micro))).to(device) for i in range(0, n, micro)]
        batches.append(DomainBatch(f"domain{d}", micro_batches, mean_reward=0.0))
    return model, batches


FUSED = {"fused": True}  # as the engine builds it (update.fused_optimizer); --unfused for torch's default


def adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-5, **FUSED)


def fresh_optimizer(model, state):
    model.load_state_dict(state["model"])
    opt = adamw(model)
    opt.load_state_dict(state["opt"])
    return opt


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def time_rules(size: str, device: str, rounds: int) -> dict[str, list[float]]:
    model, batches = build(size, device)
    objective = GRPOObjective(GRPOConfig(beta=0.001))
    opt = adamw(model)
    make_rule("joint").update(model, opt, batches, objective, step=0)  # Adam state exists for every rule
    state = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict()}
    rules = {name: make_rule(**spec) for name, spec in rule_specs(device).items()}
    times: dict[str, list[float]] = {name: [] for name in rules}
    names = list(rules)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate: no rule always runs first
            rule = rules[name]
            opt = fresh_optimizer(model, state)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            rule.update(model, opt, batches, objective, step=r)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r > 0:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    return times


def rule_specs(device: str) -> dict[str, dict]:
    return {**RULES, **(ACCELERATOR_ONLY if not device.startswith("cpu") else {})}


def overhead_parts(size: str, device: str, repeats: int = 5) -> dict[str, float]:
    """Median seconds of what CGPO adds to joint: one AdamW step, the phi_0 snapshot, the interpolation."""
    model, _ = build(size, device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-5, **FUSED)
    opt.step()

    def timed(fn) -> float:
        out = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    with torch.no_grad():
        snap = [p.detach().clone() for p in params]
        return {"adamw_step_s": timed(opt.step),
                "snapshot_s": timed(lambda: [p.detach().clone() for p in params]),
                "interpolate_s": timed(lambda: [p.lerp_(q, -0.2) for p, q in zip(params, snap)])}


class PeakRSS:
    """Polls this process's RSS every millisecond while active; ``peak`` is the largest value seen."""

    def __init__(self) -> None:
        import threading

        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_one(size: str, device: str, rule_name: str) -> dict[str, float]:
    """Runs in a fresh subprocess: extra peak memory of 2 updates of one rule."""
    torch.set_num_threads(1)
    model, batches = build(size, device)
    objective = GRPOObjective(GRPOConfig(beta=0.001))
    opt = adamw(model)
    rule = make_rule(**rule_specs(device)[rule_name])
    make_rule("joint").update(model, opt, batches, objective, step=0)  # grads and Adam state exist for every rule
    opt.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for step in range(2):
            rule.update(model, opt, batches, objective, step=step)
        peak = torch.cuda.max_memory_allocated()
    else:
        before = _rss_bytes()
        with PeakRSS() as rss:
            for step in range(2):
                rule.update(model, opt, batches, objective, step=step)
        peak = rss.peak
    return {"extra_bytes": float(peak - before), "param_bytes": float(param_bytes(model))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", default="tiny,30m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--unfused", action="store_true", help="torch's default AdamW instead of the fused one")
    ap.add_argument("--name", default=None, help="results file name (default: trainers or trainers_unfused)")
    ap.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.unfused:
        FUSED.clear()
    torch.set_num_threads(args.threads)
    if args._memory:
        print(json.dumps(memory_one(args._memory[0], args.device, args._memory[1])))
        return
    results = {}
    rows = []
    for size in args.sizes.split(","):
        model, _ = build(size, args.device)
        n_params = sum(p.numel() for p in model.parameters())
        del model
        times = time_rules(size, args.device, args.rounds)
        medians = {name: statistics.median(v) for name, v in times.items()}
        # rules ran in the same rounds: the median of per-round ratios cancels most of the load drift
        paired = {name: statistics.median(t / j for t, j in zip(v, times["joint"])) for name, v in times.items()}
        specs = rule_specs(args.device)
        parts = overhead_parts(size, args.device)
        k = SIZES[size][1]
        mem = {}
        for name in specs:
            # A fixed mmap threshold makes glibc map every large tensor and unmap it on free, so RSS
            # follows live memory instead of keeping freed activations cached in the heap.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--_memory", size, name,
                                  *(["--unfused"] if args.unfused else [])],
                                 capture_output=True, text=True, check=True, env=env)
            mem[name] = json.loads(out.stdout.strip().splitlines()[-1])
        joint_t, joint_m = medians["joint"], mem["joint"]["extra_bytes"]
        pbytes = mem["joint"]["param_bytes"]
        cgpo_added = (k - 1) * parts["adamw_step_s"] + parts["snapshot_s"] + parts["interpolate_s"]
        results[size] = {"params": n_params, "param_bytes": pbytes, "times_s": times, "median_s": medians,
                         "time_ratio_vs_joint": {n: medians[n] / joint_t for n in specs},
                         "paired_time_ratio_vs_joint": paired,
                         "extra_memory_bytes": {n: mem[n]["extra_bytes"] for n in specs},
                         "extra_memory_vs_joint_in_param_copies": {n: (mem[n]["extra_bytes"] - joint_m) / pbytes
                                                                   for n in specs},
                         "cgpo_added_work_s": {**parts, "k_minus_1_steps_plus_snapshot_plus_lerp": cgpo_added,
                                               "fraction_of_joint_update": cgpo_added / joint_t}}
        print(f"[bench] {size}: CGPO adds {1000 * cgpo_added:.1f} ms of work "
              f"({100 * cgpo_added / joint_t:.1f}% of joint's {1000 * joint_t:.0f} ms): {parts}", flush=True)
        for name in specs:
            rows.append([size, f"{n_params / 1e6:.2f}M", name, f"{1000 * medians[name]:.1f}",
                         f"{medians[name] / joint_t:.3f}", f"{paired[name]:.3f}",
                         f"{mem[name]['extra_bytes'] / 1e6:.1f}",
                         f"{(mem[name]['extra_bytes'] - joint_m) / pbytes:+.2f}"])
        print(f"[bench] {size} done", flush=True)
    table = markdown_table(["model", "params", "rule", "update ms (median)", "median / joint median",
                            "median of per-round ratios", "peak extra MB", "extra vs joint (param copies)"], rows)
    print(table)
    path = save(args.name or "trainers" + ("_unfused" if args.unfused else ""),
                {"device": args.device, "threads": args.threads, "rounds": args.rounds, "fused_adamw": not args.unfused,
                             "load_avg": os.getloadavg(), "results": results, "table": table})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
