"""Per-domain metrics every step: JSONL (always), TensorBoard (optional), PNG reward curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from mdreward.types import RewardTable, Score


def success_threshold(table: "RewardTable") -> float:
    """The lowest reward of a domain's top outcome: what counts as a success by default.

    The top outcome is the table's highest value (math/code ``correct``, writing ``better``). When
    that outcome is continuous (science: ``correct`` less a length penalty, 0.5 to 1.0), any reward
    in its range counts, so the threshold is the range's low end.
    """
    top_name, top = max(table.values.items(), key=lambda item: item[1])
    if table.continuous is not None and table.continuous[0] == top_name:
        return float(table.continuous[1])
    return top


def is_success(score: "Score", threshold: float) -> bool:
    """A scored response whose reward reaches the domain's success threshold (unscored: never)."""
    return score.reward is not None and score.reward >= threshold - 1e-12


class MetricsLog:
    """Appends one JSON object per step to ``metrics.jsonl``; mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for section in ("train", "eval", "update"):
                for domain, values in (record.get(section) or {}).items():
                    if isinstance(values, Mapping):
                        for key, value in values.items():
                            if isinstance(value, (int, float)):
                                self._tb.add_scalar(f"{section}/{domain}/{key}", value, step)
            self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps >= ``step`` (they were written after the checkpoint)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] < step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_runs(runs: Mapping[str, str | Path], out_png: str | Path, *, keys: Sequence[tuple[str, str]] = (
        ("train", "reward"), ("eval", "reward"), ("eval", "correct_rate"), ("train", "format_error_rate"))) -> Path:
    """One panel per (section, metric); one line per (run, domain). ``runs`` maps label to metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.8), squeeze=False)
    styles = ["-", "--", ":", "-."]
    loaded = {label: read_metrics(path) for label, path in runs.items()}
    all_domains = sorted({d for recs in loaded.values() for r in recs for s in ("train", "eval")
                          for d in (r.get(s) or {}) if not d.startswith("_")})
    colors = {d: f"C{i}" for i, d in enumerate(all_domains)}  # one colour per domain, one line style per run
    for (label, records), style in zip(loaded.items(), styles * 10):
        for ax, (section, metric) in zip(axes[0], keys):
            for domain in all_domains:
                pts = [(r["step"], r[section][domain][metric]) for r in records
                       if domain in (r.get(section) or {}) and metric in r[section][domain]]
                if pts:
                    ax.plot(*zip(*pts), style, color=colors[domain], label=f"{label}:{domain}")
            ax.set_title(f"{section} {metric}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
