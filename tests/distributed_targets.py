"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by test_trainers_distributed.py.

``python distributed_targets.py OUT_DIR MODE`` with MODE ``ddp`` or ``fsdp2``: every update rule runs
a few steps on a toy regression split by domain, data-parallel over two ranks (rank 1 holds no row of
domain ``b``), and rank 0 also runs the same rules in one process on the whole global batch. Each
rank writes its final parameters per rule to ``OUT_DIR/rank<r>.pt``; rank 0 adds ``single.pt``.
"""
from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.grpo import Aggregate  # noqa: E402
from trainers.updates import DataParallel, DomainBatch, make_rule  # noqa: E402

MicroBatch = tuple[torch.Tensor, torch.Tensor]
RULES = {"cgpo": {"alpha": 1.2, "max_grad_norm": 0.05}, "cgpo_fix": {"alpha": 0.8}, "joint": {"max_grad_norm": 0.05},
         "famo": {}, "pcgrad": {}}
STEPS = 3


class Regression:
    """Sum of squared errors per row: units and samples are rows."""

    def __init__(self, data_parallel: DataParallel | None = None) -> None:
        self.data_parallel = data_parallel

    def units(self, mb: MicroBatch) -> float:
        return float(mb[0].shape[0])

    def samples(self, mb: MicroBatch) -> int:
        return int(mb[0].shape[0])

    def filler(self) -> MicroBatch:
        return torch.zeros(1, 4), torch.zeros(1)

    def __call__(self, model: torch.nn.Module, mb: MicroBatch) -> tuple[Aggregate, dict[str, float]]:
        x, y = mb
        return Aggregate(((model(x).squeeze(-1) - y) ** 2).sum(), float(x.shape[0])), {}


def global_data(step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(100 + step)
    sizes = {"a": 6, "b": 3, "c": 2}
    out = {}
    for name, n in sizes.items():
        x = torch.randn(n, 4, generator=gen)
        out[name] = (x, x.sum(-1) * (1.0 if name != "b" else -1.0) + torch.randn(n, generator=gen))
    return out


def split(data: dict[str, tuple[torch.Tensor, torch.Tensor]], rows: dict[str, slice],
          size: int = 2) -> list[DomainBatch]:
    """Domain batches over ``rows`` of each domain, micro-batches of ``size`` rows (all names, sorted)."""
    batches = []
    for name in sorted(data):
        x, y = data[name][0][rows[name]], data[name][1][rows[name]]
        mbs = [(x[i:i + size], y[i:i + size]) for i in range(0, x.shape[0], size)]
        rewards = -(y if y.numel() else torch.zeros(1))
        batches.append(DomainBatch(name, mbs, mean_reward=float(rewards.mean().clamp(-1, 1)) if y.numel() else None))
    return batches


RANK_ROWS = [{"a": slice(0, 4), "b": slice(0, 3), "c": slice(0, 1)},
             {"a": slice(4, 6), "b": slice(0, 0), "c": slice(1, 2)}]  # rank 1: no row of domain b
ALL_ROWS = {"a": slice(0, 6), "b": slice(0, 3), "c": slice(0, 2)}


def famo_means(data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """FAMO's per-domain mean reward, from the global batch (an engine reduces it over ranks)."""
    return {name: float((-y).mean().clamp(-1, 1)) for name, (_, y) in data.items()}


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def run(rule_name: str, model: torch.nn.Module, objective: Regression, rows: dict[str, slice]) -> None:
    rule = make_rule(rule_name, **RULES[rule_name])
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    for step in range(STEPS):
        data = global_data(step)
        batches = split(data, rows)
        means = famo_means(data)
        for b in batches:
            b.mean_reward = means[b.name]
        rule.observe(step, batches)
        rule.update(model, optimizer, batches, objective, step=step)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if callable(getattr(p, "full_tensor", None)) else p  # FSDP2: gather the shards
        out[name.removeprefix("module.")] = full.detach().clone()
    return out


def main(out_dir: str, mode: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results: dict[str, dict[str, torch.Tensor]] = {}
    single: dict[str, dict[str, torch.Tensor]] = {}
    for rule_name in RULES:
        if mode == "fsdp2" and rule_name == "pcgrad":
            continue
        model = base_model()
        no_sync: Any
        if mode == "ddp":
            wrapped: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model)

            def no_sync(m: torch.nn.Module) -> AbstractContextManager[Any]:
                return m.no_sync()  # type: ignore[operator]
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (dist.get_world_size(),))
            wrapped = fully_shard(model, mesh=mesh)
            no_sync = None
        run(rule_name, wrapped, Regression(DataParallel(no_sync=no_sync)), RANK_ROWS[rank])
        results[rule_name] = full_state(wrapped)
        if rank == 0:
            alone = base_model()
            run(rule_name, alone, Regression(), ALL_ROWS)
            single[rule_name] = full_state(alone)
    dist.barrier()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == 0:
        torch.save(single, os.path.join(out_dir, "single.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
