"""Rule x seed comparisons: run (or reuse) every run, then a markdown table and a plot.

``python -m trainers.run --compare-rules joint,cgpo,pcgrad --seeds 1,2,3 --config CFG --out DIR``
runs each (rule, seed) as its own ``python -m trainers.run`` process under ``DIR/<label>/seed<N>``
(log in ``run.log`` there), reuses a finished run whose resolved config is unchanged, resumes an
unfinished one from its checkpoint, and writes ``DIR/comparison.md``, ``comparison.json`` and
``comparison.png``. A seed's score per domain is the mean held-out reward of its last ``last_evals``
evaluations; the table gives the mean over seeds and the sample standard deviation across seeds.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .config import TrainConfig, load_config
from .metrics import read_metrics

RUN_CONFIG = "run_config.json"
AVERAGE = "average"


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: a label and the config overrides that make it (``--set`` syntax)."""

    label: str
    overrides: tuple[str, ...]


def known_rules() -> list[str]:
    """Every rule the engine can build: ``updates.RULES`` (rules merged later appear here) and ``cgpo_fix``."""
    from .updates import RULES

    return sorted(set(RULES) | {"cgpo_fix"})


def parse_variants(rules: str | None, variants: Sequence[str] = ()) -> list[Variant]:
    """``rules``: ``joint,cgpo,...`` or ``all``; ``variants``: ``LABEL:section.field=value,...`` each."""
    known = known_rules()
    out: list[Variant] = []
    names = known if rules == "all" else [r.strip() for r in (rules or "").split(",") if r.strip()]
    for name in names:
        if name not in known:
            raise ValueError(f"unknown update rule {name!r} in --compare-rules; known: {known}")
        out.append(Variant(name, (f"update.rule={name}",)))
    for spec in variants:
        label, sep, rest = spec.partition(":")
        if not sep or not label or not rest:
            raise ValueError(f"--variant {spec!r} must look like LABEL:section.field=value[,section.field=value]")
        out.append(Variant(label, tuple(item.strip() for item in rest.split(",") if item.strip())))
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels in the comparison: {labels}")
    if not out:
        raise ValueError("nothing to compare: give --compare-rules and/or --variant")
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must name distinct seeds, got {text!r}")
    return seeds


@dataclass
class PlannedRun:
    variant: Variant
    seed: int
    out_dir: Path
    overrides: list[str]
    config: TrainConfig

    @property
    def name(self) -> str:
        return f"{self.variant.label} seed {self.seed}"


def plan(config: str | Path, variants: Sequence[Variant], seeds: Sequence[int], out: str | Path,
         common: Sequence[str] = ()) -> list[PlannedRun]:
    """Every (variant, seed) run with its resolved config (a bad override fails here, before any run)."""
    runs = []
    for v in variants:
        for seed in seeds:
            out_dir = Path(out) / v.label / f"seed{seed}"
            overrides = [*common, *v.overrides, f"run.seed={seed}", f"run.out_dir={out_dir}"]
            try:
                cfg = load_config(config, overrides)
            except ValueError as exc:
                raise ValueError(f"{v.label} seed {seed}: {exc}") from None
            runs.append(PlannedRun(v, seed, out_dir, overrides, cfg))
    return runs


def run_state(run: PlannedRun) -> str:
    """``done`` (finished with this config), ``resume`` (checkpoint, same config) or ``fresh``."""
    saved = run.out_dir / RUN_CONFIG
    if not saved.exists() or json.loads(saved.read_text(encoding="utf-8")) != run.config.to_dict():
        return "fresh"
    metrics = run.out_dir / "metrics.jsonl"
    if metrics.exists():
        records = read_metrics(metrics)
        if any(r["step"] == run.config.run.steps - 1 and "eval" in r for r in records):
            return "done"
    return "resume" if (run.out_dir / "checkpoint.pt").exists() else "fresh"


def execute(run: PlannedRun, config: str | Path, resume: bool) -> float:
    """One run in its own process (its output in ``run.log``); returns its wall time in seconds."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for stale in ("metrics.jsonl", "checkpoint.pt"):
            (run.out_dir / stale).unlink(missing_ok=True)
    (run.out_dir / RUN_CONFIG).write_text(json.dumps(run.config.to_dict(), indent=2), encoding="utf-8")
    cmd = [sys.executable, "-m", "trainers.run", "--config", str(config)]
    for item in run.overrides:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    started = time.perf_counter()
    with open(run.out_dir / "run.log", "a", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
    if proc.returncode != 0:
        tail = (run.out_dir / "run.log").read_text(encoding="utf-8").splitlines()[-15:]
        raise RuntimeError(f"{run.name} failed (exit {proc.returncode}); last lines of "
                           f"{run.out_dir / 'run.log'}:\n" + "\n".join(tail))
    return time.perf_counter() - started


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package's root first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def ensure_tiny_policy(cfg: TrainConfig) -> None:
    """Build a tiny policy once, before any run, so every rule and seed starts from the same weights."""
    if cfg.model.kind != "tiny":
        return
    from .tiny import ensure_tiny_policy

    ensure_tiny_policy(cfg.model.path, tasks=cfg.model.tiny_tasks, sft_steps=cfg.model.tiny_sft_steps,
                       seed=cfg.run.seed, who="compare")


def run_all(runs: Sequence[PlannedRun], config: str | Path, *, jobs: int = 1,
            say: Callable[[str], None] = print) -> dict[str, float]:
    """Run what is not finished (``jobs`` at a time), printing progress and an ETA; wall time per run."""
    states = {r.name: run_state(r) for r in runs}
    todo = [r for r in runs if states[r.name] != "done"]
    say(f"[compare] {len(runs)} runs: {len(runs) - len(todo)} finished already, {len(todo)} to run "
        f"({jobs} at a time); logs in <out>/<label>/seed<N>/run.log")
    walls: dict[str, float] = {}
    if not todo:
        return walls
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        pending: dict[Future[float], PlannedRun] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < max(1, jobs):
                r = queue.pop(0)
                say(f"[compare] start {r.name} ({states[r.name]}) -> {r.out_dir}")
                pending[pool.submit(execute, r, config, states[r.name] == "resume")] = r
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                r = pending.pop(fut)
                walls[r.name] = fut.result()
                finished = len(walls)
                elapsed = time.perf_counter() - started
                eta = elapsed / finished * (len(todo) - finished)
                say(f"[compare] {finished}/{len(todo)} done: {r.name} in {walls[r.name]:.0f} s; "
                    f"elapsed {elapsed / 60:.1f} min, about {eta / 60:.1f} min left")
    return walls


# ---- aggregation -------------------------------------------------------------------------------
def final_scores(records: Sequence[Mapping[str, Any]], last_evals: int = 2,
                 metric: str = "reward") -> dict[str, float]:
    """Per domain: the mean of ``metric`` over the last ``last_evals`` held-out evaluations; plus the average."""
    evals = [r["eval"] for r in records if r.get("eval")]
    if not evals:
        raise ValueError("the run has no held-out evaluation (run.eval_every = 0?)")
    tail = evals[-last_evals:]
    domains = sorted({d for e in tail for d in e})
    out = {}
    if not any(metric in e[d] for e in tail for d in e):
        raise ValueError(f"the run's held-out evaluations have no metric {metric!r}")
    for d in domains:
        values = [e[d][metric] for e in tail if d in e and metric in e[d] and not math.isnan(e[d][metric])]
        out[d] = statistics.fmean(values) if values else math.nan
    out[AVERAGE] = statistics.fmean(out[d] for d in domains)
    return out


def step_seconds(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean wall time per training step, and of its update phase (held-out evals not included)."""
    times = [r["time"] for r in records if r.get("time")]
    if not times:
        return {"step_s": math.nan, "update_s": math.nan}
    return {"step_s": statistics.fmean(t["step_s"] for t in times),
            "update_s": statistics.fmean(t["update_s"] for t in times)}


def _mean_spread(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Summary:
    """Per label: per-seed scores and the mean and spread over seeds."""

    per_seed: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    timing: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    last_evals: int = 2
    metric: str = "reward"

    def domains(self) -> list[str]:
        names = {d for seeds in self.per_seed.values() for s in seeds.values() for d in s if d != AVERAGE}
        return [*sorted(names), AVERAGE]

    def stat(self, label: str, key: str) -> tuple[float, float]:
        return _mean_spread([s.get(key, math.nan) for s in self.per_seed[label].values()])

    def count(self, label: str, key: str) -> int:
        """Seeds that have a (non-NaN) value of ``key``: the ones ``stat`` averages."""
        return sum(not math.isnan(s.get(key, math.nan)) for s in self.per_seed[label].values())

    def time_stat(self, label: str, key: str) -> tuple[float, float]:
        return _mean_spread([t[key] for t in self.timing[label].values()])

    def to_dict(self) -> dict[str, Any]:
        return {"last_evals": self.last_evals, "metric": self.metric,
                "rules": {label: {"seeds": {str(k): v for k, v in seeds.items()},
                                  "timing": {str(k): v for k, v in self.timing[label].items()},
                                  "mean": {d: self.stat(label, d)[0] for d in self.domains()},
                                  "std": {d: self.stat(label, d)[1] for d in self.domains()}}
                          for label, seeds in self.per_seed.items()}}


def summarize(metrics: Mapping[str, Mapping[int, str | Path]], last_evals: int = 2,
              metric: str = "reward") -> Summary:
    """``metrics[label][seed]`` is a run's metrics.jsonl; ``metric`` a held-out metric (reward, correct_rate)."""
    summary = Summary(last_evals=last_evals, metric=metric)
    for label, seeds in metrics.items():
        for seed, path in seeds.items():
            records = read_metrics(path)
            summary.per_seed.setdefault(label, {})[seed] = final_scores(records, last_evals, metric)
            summary.timing.setdefault(label, {})[seed] = step_seconds(records)
    return summary


def markdown(summary: Summary) -> str:
    """The comparison table: mean ± sample std over seeds; the best mean per column in bold."""
    domains = summary.domains()
    labels = list(summary.per_seed)
    best = {d: max(labels, key=lambda lab: _nan_low(summary.stat(lab, d)[0])) for d in domains}
    head = ["rule", "seeds", *[f"{d} {summary.metric}" for d in domains], "s / step", "update s / step"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lab in labels:
        cells = [lab, str(len(summary.per_seed[lab]))]
        for d in domains:
            mean, std = summary.stat(lab, d)
            text = f"{mean:+.3f} ± {std:.3f}"
            if summary.count(lab, d) < len(summary.per_seed[lab]):  # a seed without a score: say so
                text += f" (n={summary.count(lab, d)})"
            cells.append(f"**{text}**" if best[d] == lab and len(labels) > 1 else text)
        for key in ("step_s", "update_s"):
            mean, std = summary.time_stat(lab, key)
            cells.append(f"{mean:.2f} ± {std:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    note = (f"Held-out {summary.metric}: per seed, the mean of the last {summary.last_evals} evaluations; "
            "mean ± sample standard deviation across seeds. Time: mean wall time per training step "
            "(held-out evaluations excluded), across seeds.")
    return "\n".join(rows) + "\n\n" + note + "\n"


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def eval_curves(metrics: Mapping[str, Mapping[int, str | Path]],
                metric: str = "reward") -> dict[str, dict[int, dict[int, dict[str, float]]]]:
    """``curves[label][steps trained][seed]``: the held-out ``metric`` per domain and their average."""
    curves: dict[str, dict[int, dict[int, dict[str, float]]]] = {}
    for label, seeds in metrics.items():
        for seed, path in seeds.items():
            for r in read_metrics(path):
                if r.get("eval"):
                    ev = {d: m[metric] for d, m in r["eval"].items() if metric in m}
                    if not ev:
                        continue
                    ev[AVERAGE] = statistics.fmean(ev.values())
                    curves.setdefault(label, {}).setdefault(r["step"] + 1, {})[seed] = ev
    return curves


def plot(metrics: Mapping[str, Mapping[int, str | Path]], out_png: str | Path, metric: str = "reward") -> Path:
    """One panel per domain and the average: the held-out ``metric`` over steps, mean over seeds, min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = eval_curves(metrics, metric)
    domains = sorted({d for lab in curves.values() for st in lab.values() for s in st.values() for d in s} - {AVERAGE})
    panels = [*domains, AVERAGE]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for i, label in enumerate(curves):
        steps = sorted(curves[label])
        for ax, d in zip(axes[0], panels):
            vals = [[s[d] for s in curves[label][st].values() if d in s] for st in steps]
            xs = [st for st, v in zip(steps, vals) if v]
            vals = [v for v in vals if v]
            ax.plot(xs, [statistics.fmean(v) for v in vals], color=f"C{i}", label=label, lw=1.4)
            ax.fill_between(xs, [min(v) for v in vals], [max(v) for v in vals], color=f"C{i}", alpha=0.12)
    for ax, d in zip(axes[0], panels):
        ax.set_title(f"held-out {metric}: {d}", fontsize=9)
        ax.set_xlabel("steps trained", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def compare(config: str | Path, variants: Sequence[Variant], seeds: Sequence[int], out: str | Path, *,
            common: Sequence[str] = (), jobs: int = 1, last_evals: int = 2, metric: str = "reward",
            say: Callable[[str], None] = print) -> Summary:
    """Run (or reuse) every variant x seed, then write the table, the JSON summary and the plot under ``out``."""
    out = Path(out)
    runs = plan(config, variants, seeds, out, common)
    ensure_tiny_policy(runs[0].config)
    walls = run_all(runs, config, jobs=jobs, say=say)
    metrics: dict[str, dict[int, str | Path]] = {}
    for r in runs:
        metrics.setdefault(r.variant.label, {})[r.seed] = r.out_dir / "metrics.jsonl"
    summary = summarize(metrics, last_evals, metric)
    table = markdown(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(table, encoding="utf-8")
    data = summary.to_dict()
    data["runs"] = {r.name: {"overrides": r.overrides, "wall_s": walls.get(r.name)} for r in runs}
    (out / "comparison.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    png = plot(metrics, out / "comparison.png", metric)
    say(table)
    say(f"[compare] table: {out / 'comparison.md'}\n[compare] plot: {png}")
    return summary
