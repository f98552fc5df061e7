"""Do the training domains conflict? Inter-domain gradient cosines measured during a real run.

Runs ``trainers.run``'s engine with its update rule wrapped: before each mini-batch update,
``trainers.conflict.measure_conflicts`` (grouping ``"type"``, noise floor on) takes every domain's
gradient at the current weights and logs in ``metrics.jsonl`` under ``update._all`` the pairwise
cosines ``conflict/model/cos/<a>_vs_<b>`` (whole model) and ``conflict/module/<m>/cos/<a>_vs_<b>``
per parameter type (embed, attn, mlp, norm, lm_head, other). ``conflict/model/running_cos/<a>_vs_<b>``
compares running means of the gradients (``RunningCosines``, decay 0.9 per mini-batch): one
mini-batch's gradient is dominated by its particular prompts, the running mean keeps what persists.
``conflict/model/half_cos/<a>`` is the noise floor: the cosine between the gradients of two halves
of the same domain's responses that share no prompt; an inter-domain cosine means something only next
to it. The wrapped rule then updates as usual (the probe costs one extra backward pass per domain).

    python benchmarks/conflict_probe.py --config trainers/configs/tiny_cgpo.toml --set run.steps=30 \\
        --set run.out_dir=runs/probe_tiny
    python benchmarks/conflict_probe.py --summarize runs/probe_tiny/metrics.jsonl
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.config import load_config  # noqa: E402
from trainers.conflict import RunningCosines, measure_conflicts  # noqa: E402
from trainers.updates import DomainBatch, UpdateResult, UpdateRule  # noqa: E402


@dataclass
class ProbedRule:
    """Any update rule, with the domains' gradient cosines measured before each of its updates."""

    inner: UpdateRule
    name: str = "probed"
    running: RunningCosines = field(default_factory=lambda: RunningCosines(0.9))

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        self.inner.observe(step, batches)

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        cosines = measure_conflicts(model, optimizer, batches, objective, grouping="type", noise_floor=True,
                                    running=self.running)
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
            if (key.startswith("conflict/") and "cos/" in key) or key.startswith(("cos:", "self:")):  # old runs too
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
            print(f"{key:56s} first10 {s['first']:+.3f}  last10 {s['last']:+.3f}  all {s['all']:+.3f}  "
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
        print(f"{key:56s} first10 {s['first']:+.3f}  last10 {s['last']:+.3f}  negative {s['negative_share']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
