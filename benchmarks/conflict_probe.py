"""Do the training domains conflict? Inter-domain gradient cosines measured during a real run.

Runs ``trainers.run``'s engine with its update rule wrapped: before each mini-batch update, every
domain's own gradient (its loss ``L_k`` alone, unscaled) is taken at the current weights, and the
pairwise cosines are logged in ``metrics.jsonl`` under ``update._all`` as ``cos:<a>|<b>`` (whole
model) and ``cos:<a>|<b>:<group>`` for coarse parameter groups (embedding, attention, mlp, norm).
``cos:<a>|<b>:running`` compares running means of the gradients (decay 0.9 per mini-batch): one
mini-batch's gradient is dominated by its particular prompts, the running mean keeps what persists.
``self:<a>`` is the noise floor: the cosine between the gradients of two halves of the same domain's
responses that share no prompt; an inter-domain cosine means something only next to it.
The wrapped rule then updates as usual (the probe costs two extra backward passes per domain).

    python benchmarks/conflict_probe.py --config trainers/configs/tiny_cgpo.toml --set run.steps=30 \\
        --set run.out_dir=runs/probe_tiny
    python benchmarks/conflict_probe.py --summarize runs/probe_tiny/metrics.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.config import load_config  # noqa: E402
from trainers.updates import DomainBatch, Objective, UpdateResult, UpdateRule, backward_domain  # noqa: E402

GROUPS = (("embedding", ("embed_tokens", "lm_head")), ("attention", ("self_attn",)), ("mlp", ("mlp",)),
          ("norm", ("norm",)))


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def domain_gradients(model: torch.nn.Module, batches: Sequence[DomainBatch],
                     objective: Objective) -> dict[str, dict[str, torch.Tensor]]:
    """Each domain's gradient of its own loss, flattened per parameter group (``"all"`` too)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for b in batches:
        model.zero_grad(set_to_none=True)
        backward_domain(model, b, objective, 1.0)
        flat: dict[str, list[torch.Tensor]] = {}
        for n, p in named:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            flat.setdefault(group_of(n), []).append(g.detach().reshape(-1).double())
        parts = {k: torch.cat(v) for k, v in flat.items()}
        parts["all"] = torch.cat(list(parts.values()))
        out[b.name] = parts
    model.zero_grad(set_to_none=True)
    return out


def split_halves(batch: DomainBatch) -> tuple[DomainBatch, DomainBatch]:
    """The domain's responses split by prompt into two halves (alternate prompts): two independent
    samples of its gradient that share no prompt."""
    even, odd = [], []
    for mb in batch.micro_batches:
        prompt_len = mb.input_ids.shape[1] - mb.response_mask.shape[1]
        keys = [tuple(mb.input_ids[i, :prompt_len].tolist()) for i in range(len(mb))]
        order = {k: j for j, k in enumerate(dict.fromkeys(keys))}
        rows = ([i for i, k in enumerate(keys) if order[k] % 2 == 0], [i for i, k in enumerate(keys) if order[k] % 2])
        if rows[0] and rows[1]:
            even.append(mb.select(rows[0]))
            odd.append(mb.select(rows[1]))
    return DomainBatch(f"{batch.name}/even", even), DomainBatch(f"{batch.name}/odd", odd)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else math.nan


@dataclass
class ProbedRule:
    """Any update rule, with the domains' gradient cosines measured before each of its updates."""

    inner: UpdateRule
    name: str = "probed"
    decay: float = 0.9
    _running: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        self.inner.observe(step, batches)

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        grads = domain_gradients(model, batches, objective)
        cosines: dict[str, float] = {}
        for a, b in itertools.combinations(sorted(grads), 2):
            for group in grads[a]:
                suffix = "" if group == "all" else f":{group}"
                cosines[f"cos:{a}|{b}{suffix}"] = cosine(grads[a][group], grads[b][group])
        for name, g in grads.items():  # running means: what persists over mini-batches, not one batch's noise
            old = self._running.get(name)
            self._running[name] = g["all"] if old is None else self.decay * old + (1 - self.decay) * g["all"]
        for a, b in itertools.combinations(sorted(self._running), 2):
            cosines[f"cos:{a}|{b}:running"] = cosine(self._running[a], self._running[b])
        for b in batches:  # the noise floor: the same domain's gradient from two disjoint halves of its responses
            halves = domain_gradients(model, split_halves(b), objective)
            cosines[f"self:{b.name}"] = cosine(*(h["all"] for h in halves.values()))
        result = self.inner.update(model, optimizer, batches, objective, step=step, scheduler=scheduler)
        result.extra.update(cosines)
        return result

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)


def summarize(path: str | Path, window: int = 10) -> dict[str, dict[str, float]]:
    """Per cosine key: mean over the first and the last ``window`` steps, and the share of negatives."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    series: dict[str, list[float]] = {}
    for r in records:
        for key, value in ((r.get("update") or {}).get("_all") or {}).items():
            if key.startswith(("cos:", "self:")):
                series.setdefault(key, []).append(float(value))
    return {key: {"first": statistics.fmean(v[:window]), "last": statistics.fmean(v[-window:]),
                  "all": statistics.fmean(v), "negative_share": sum(x < 0 for x in v) / len(v), "steps": len(v)}
            for key, v in series.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--summarize", metavar="METRICS_JSONL")
    args = ap.parse_args(argv)
    if args.summarize:
        for key, s in sorted(summarize(args.summarize).items()):
            print(f"{key:40s} first10 {s['first']:+.3f}  last10 {s['last']:+.3f}  all {s['all']:+.3f}  "
                  f"negative {s['negative_share']:.2f} ({s['steps']} steps)")
        return 0
    if not args.config:
        ap.error("--config or --summarize is required")
    from trainers.engine import LocalEngine

    engine = LocalEngine(load_config(args.config, args.set))
    engine.rule = ProbedRule(engine.rule)
    try:
        engine.train()
    finally:
        engine.close()
    for key, s in sorted(summarize(engine.log.path).items()):
        print(f"{key:40s} first10 {s['first']:+.3f}  last10 {s['last']:+.3f}  negative {s['negative_share']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
