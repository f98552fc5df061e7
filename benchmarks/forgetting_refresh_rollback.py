"""Forgetting of the first domain after sequential training, and recovery by refresh or rollback.

On the tiny CPU policy (``trainers/configs/tiny_cgpo.toml``), per seed: one run trains the domains
one after another (Omni-Thinker phases in the order arith -> max -> prog, ``--phase-steps`` each,
plain GRPO: ``update.rule = joint``) and ends with a ``--refresh-steps`` refresh phase on arith;
``run.keep_checkpoints`` keeps the weights after arith (*before*), after prog (*after*) and after the
refresh. Then, from *before*/*after* and the initial policy (*base*), the rollback tool resets the
top fraction of MLP neurons (and, with ``--scopes both``, attention heads) by each criterion.
Every checkpoint is evaluated on the same held-out prompts with the same sampling seed (common
random numbers: differences between conditions are not sampling noise of the evaluation order).

Recovery = (arith reward of the condition - after) / (before - after), from the means over seeds.

    python benchmarks/forgetting_refresh_rollback.py --seeds 1 2 3 [--phase-steps 15] [--refresh-steps 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save  # noqa: E402
from trainers import rollback  # noqa: E402
from trainers.config import load_config  # noqa: E402
from trainers.engine import LocalEngine  # noqa: E402

from mdreward import Scorer  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "tiny_cgpo.toml"
DOMAINS = ["arith", "max", "prog"]  # evaluated in every condition


def run_config(args: argparse.Namespace, seed: int, out_dir: Path):
    order, p, r = args.order, args.phase_steps, args.refresh_steps
    total = len(order) * p + r
    overrides = [f"model.path={args.policy}", f"run.seed={seed}", f"run.out_dir={out_dir}", f"run.steps={total}",
                 f"data.tasks={json.dumps(sorted(set(DOMAINS) | set(order)))}",
                 "data.curriculum=omni_thinker", f"data.curriculum_order={json.dumps(order)}",
                 f"data.refresh_domain={order[0]}", f"data.refresh_steps={r}", "update.rule=joint",
                 f"run.keep_checkpoints={json.dumps([p, len(order) * p, total])}", "run.checkpoint_every=0",
                 "run.eval_every=0", "run.plot_every=0", "run.tensorboard=false",
                 f"data.eval_samples={args.eval_samples}", *args.set]
    return load_config(CONFIG, overrides), {"before": p, "after": len(order) * p, "refresh": total}


def trained_with(cfg: Any, paths: Any) -> bool:
    """Every kept checkpoint exists and was trained with ``cfg`` (held-out sampling aside): a checkpoint
    left by another --order, --phase-steps or --set must not be reused."""
    def training(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "data": {k: v for k, v in config["data"].items() if k != "eval_samples"}}

    want = training(cfg.to_dict())
    return all(p.exists() and training(torch.load(p, map_location="cpu", weights_only=False)["config"]) == want
               for p in paths)


def evaluate(engine: LocalEngine, state: dict[str, torch.Tensor], seed: int) -> dict[str, dict[str, float]]:
    engine.model.load_state_dict(state)
    torch.manual_seed(10_000 + seed)  # same sampling stream for every condition of this seed
    return {d: {"reward": m["reward"], "correct_rate": m["correct_rate"]} for d, m in engine.evaluate().items()}


def one_seed(args: argparse.Namespace, seed: int, scorer: Scorer) -> dict[str, Any]:
    """Train (unless the checkpoints exist) and evaluate every condition (unless evaluated with these args)."""
    out = Path(args.out) / f"seed{seed}"
    cfg, steps = run_config(args, seed, out)
    cache = out / f"{args.name}.json"
    key = {k: v for k, v in vars(args).items() if k not in ("seeds", "plot", "name")}
    if cache.exists() and json.loads(cache.read_text())["args"] == key:
        return json.loads(cache.read_text())["seed"]
    paths = {name: out / f"checkpoint-{step}.pt" for name, step in steps.items()}
    started = time.perf_counter()
    if not trained_with(cfg, paths.values()):
        engine = LocalEngine(cfg, scorer=scorer)
        engine.train()
        engine.close()
    train_s = time.perf_counter() - started
    cfg.run.out_dir = str(out / "eval")  # a separate log: evaluating must not truncate the run's metrics
    engine = LocalEngine(cfg, scorer=scorer)
    states = {name: rollback.load_state(path)[0] for name, path in paths.items()}
    base, head = rollback.load_state(args.policy)
    states = {"base": base, **states}
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for name in ("base", "before", "after", "refresh"):
        results[name] = evaluate(engine, states[name], seed)
    for scope in args.scopes:
        groups = rollback.find_groups(states["after"], head, scope)
        for criterion in args.criteria:
            for fraction in args.fractions:
                pick = rollback.select(groups, before=states["before"], after=states["after"], base=base,
                                       fraction=fraction, criterion=criterion, seed=seed)
                rolled = rollback.apply_rollback(groups, pick, before=states["before"], after=states["after"])
                results[f"rollback {scope} {criterion} {fraction:g}"] = evaluate(engine, rolled, seed)
    engine.close()
    eval_s = time.perf_counter() - started
    print(f"[seed {seed}] train {train_s:.0f}s, {len(results)} evals {eval_s:.0f}s", flush=True)
    record = {"train_s": train_s, "eval_s": eval_s, "results": results}
    cache.write_text(json.dumps({"args": key, "seed": record}))
    return record


def summarize(per_seed: dict[int, dict[str, Any]], first: str) -> tuple[list[list[str]], dict[str, Any]]:
    conditions = list(next(iter(per_seed.values()))["results"])

    def values(cond: str, domain: str) -> list[float]:
        return [s["results"][cond][domain]["reward"] for s in per_seed.values()]

    mean = {c: {d: statistics.fmean(values(c, d)) for d in DOMAINS} for c in conditions}
    lost = mean["before"][first] - mean["after"][first]
    rows, table = [], {}
    for c in conditions:
        spread = {d: statistics.stdev(values(c, d)) if len(per_seed) > 1 else 0.0 for d in DOMAINS}
        recovery = (mean[c][first] - mean["after"][first]) / lost if lost else float("nan")
        avg = statistics.fmean(mean[c].values())
        table[c] = {"mean": mean[c], "sd": spread, "recovery": recovery, "average": avg}
        rows.append([c] + [f"{mean[c][d]:+.3f} ± {spread[d]:.3f}" for d in DOMAINS]
                    + [f"{avg:+.3f}", f"{100 * recovery:+.0f}%" if c not in ("base", "before") else ""])
    return rows, table


def plot(table: dict[str, Any], first: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    curves: dict[str, list[tuple[float, float]]] = {}
    for cond, row in table.items():
        if cond.startswith("rollback "):
            _, scope, criterion, fraction = cond.split()
            curves.setdefault(f"{criterion} ({scope})", []).append((100 * float(fraction), row["mean"][first]))
    for label, points in curves.items():
        ax.plot(*zip(*sorted(points)), marker="o", label=f"rollback: {label}")
    for cond, style in (("before", "--"), ("after", ":"), ("refresh", "-.")):
        ax.axhline(table[cond]["mean"][first], linestyle=style, color="gray", label=cond)
    ax.set_xscale("log")
    ax.set_xlabel("components rolled back (%)")
    ax.set_ylabel(f"held-out {first} reward (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--order", type=lambda s: s.split(","), default=["arith", "max", "prog"],
                    help="training order; the first domain is the one forgotten and refreshed")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override")
    ap.add_argument("--phase-steps", type=int, default=15)
    ap.add_argument("--refresh-steps", type=int, default=10)
    ap.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.01, 0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--criteria", type=lambda s: s.split(","), default=["conflict", "magnitude", "random"])
    ap.add_argument("--scopes", type=lambda s: s.split(","), default=["mlp"])
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--policy", default="runs/tiny-policy", help="the tiny policy (built on first use)")
    ap.add_argument("--out", default="runs/forgetting")
    ap.add_argument("--name", default="forgetting_refresh_rollback", help="results file benchmarks/results/NAME.json")
    ap.add_argument("--plot", default=None, help="PNG of arith reward per rollback fraction")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with Scorer() as scorer:
        per_seed = {seed: one_seed(args, seed, scorer) for seed in args.seeds}
    first = args.order[0]
    rows, table = summarize(per_seed, first)
    print(markdown_table(["condition"] + [f"{d} reward" for d in DOMAINS] + ["average", f"{first} recovery"], rows))
    path = save(args.name, {"args": {k: v for k, v in vars(args).items()}, "summary": table,
                                                 "per_seed": per_seed})
    print(f"results: {path}")
    if args.plot:
        plot(table, first, Path(args.plot))
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
