"""``summary.json``, ``table.md`` and ``table.png`` of an evaluation run, beside the paper's Table 1."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

TASKS = ("cgpo_math500", "cgpo_amc23", "cgpo_humaneval", "cgpo_mbpp", "cgpo_gpqa_diamond", "cgpo_supergpqa",
         "cgpo_writingbench")
COLUMNS = ("MATH500", "AMC", "HumanEval", "MBPP", "GPQA-diamond", "SuperGPQA", "WritingBench")
#: The six-domain experiment (Appendix F.2) adds these; their domains come from the plugin packages.
PLUGIN_TASKS = ("cgpo_zebra", "cgpo_hitab")
SIX_DOMAIN_TASKS = TASKS + PLUGIN_TASKS
SIX_DOMAIN_COLUMNS = COLUMNS + ("Zebra", "HiTab")
COLUMN_OF = dict(zip(SIX_DOMAIN_TASKS, SIX_DOMAIN_COLUMNS))

PAPER_CITATION = ("Published rows: Table 1 of the CGPO paper (models trained from Qwen2.5-3B-Instruct and "
                  "Qwen2.5-7B-Instruct; vLLM, 4 samples per query, temperature 0.6, top-p 0.95; WritingBench x10).")
#: Table 1 of the paper: (model, method) -> the seven scores and AVG, in ``COLUMNS`` order.
PAPER_TABLE1: dict[tuple[str, str], tuple[float, ...]] = {
    ("Qwen2.5-3B-Instruct", "Joint Learning"): (64.50, 39.38, 72.39, 59.40, 24.87, 24.12, 58.61, 49.04),
    ("Qwen2.5-3B-Instruct", "Omni-Thinker"): (65.65, 41.50, 71.95, 58.80, 21.34, 26.75, 57.90, 49.13),
    ("Qwen2.5-3B-Instruct", "Self-paced CL"): (65.30, 38.75, 70.12, 58.80, 24.37, 24.72, 57.82, 48.55),
    ("Qwen2.5-3B-Instruct", "FAMO"): (63.80, 39.12, 72.48, 59.20, 23.47, 26.51, 58.46, 49.01),
    ("Qwen2.5-3B-Instruct", "CGPO"): (64.20, 39.71, 74.29, 60.80, 24.37, 26.63, 63.04, 50.42),
    ("Qwen2.5-7B-Instruct", "Joint Learning"): (76.00, 56.25, 79.88, 68.60, 19.70, 32.75, 63.15, 56.62),
    ("Qwen2.5-7B-Instruct", "Omni-Thinker"): (75.10, 53.75, 82.93, 68.60, 23.86, 30.63, 62.35, 56.75),
    ("Qwen2.5-7B-Instruct", "Self-paced CL"): (74.70, 51.88, 82.93, 68.00, 21.72, 30.25, 63.68, 56.17),
    ("Qwen2.5-7B-Instruct", "FAMO"): (75.65, 55.63, 82.54, 68.80, 23.07, 31.49, 63.62, 57.26),
    ("Qwen2.5-7B-Instruct", "CGPO"): (75.55, 59.38, 84.15, 72.00, 26.77, 32.75, 66.52, 59.59),
}

TABLE8_CITATION = ("Published rows: Table 8 of the CGPO paper (Appendix F.2, six-domain experiment: math, code, "
                   "scientific QA, creative writing, logic, tabular; models trained from Qwen2.5-7B-Instruct).")
#: Table 8 of the paper, as printed: (model, method) -> the nine scores and AVG, in ``SIX_DOMAIN_COLUMNS`` order.
PAPER_TABLE8: dict[tuple[str, str], tuple[float, ...]] = {
    ("Qwen2.5-7B-Instruct", "FAMO"): (75.30, 55.02, 82.93, 68.60, 22.64, 31.58, 63.09, 36.84, 68.71, 56.08),
    ("Qwen2.5-7B-Instruct", "CGPO"): (74.90, 59.84, 83.88, 70.80, 26.91, 31.72, 65.08, 37.63, 69.57, 57.81),
}


class PaperTable(NamedTuple):
    """One of the paper's tables: its title, task order, column names, published rows and citation."""

    title: str
    tasks: tuple[str, ...]
    columns: tuple[str, ...]
    published: dict[tuple[str, str], tuple[float, ...]]
    citation: str
    baseline: str  # the 7B baseline drawn beside CGPO in table.png


TABLE1 = PaperTable("Table 1", TASKS, COLUMNS, PAPER_TABLE1, PAPER_CITATION, "Joint Learning")
TABLE8 = PaperTable("Table 8 (six domains)", SIX_DOMAIN_TASKS, SIX_DOMAIN_COLUMNS, PAPER_TABLE8, TABLE8_CITATION,
                    "FAMO")


def layout(summary: Mapping[str, Any]) -> PaperTable:
    """The table a run belongs to: Table 8 when it ran a six-domain task, else Table 1."""
    return TABLE8 if any(task in summary.get("tasks", {}) for task in PLUGIN_TASKS) else TABLE1


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def task_summary(metrics: Mapping[str, Any], items: int, filter_name: str) -> dict[str, Any]:
    """One task's entry of ``summary.json`` from its lm-eval result metrics."""
    def key(name: str) -> str:
        return f"{name},{filter_name}"

    score = _number(metrics.get(key("score")))
    entry: dict[str, Any] = {"score": score, "items": items, "samples": int(metrics.get(key("samples"), 0)),
                             "unscored": int(metrics.get(key("unscored"), 0)),
                             "stderr": _number(metrics.get(key("score_se")))}
    if score is None:
        entry["error"] = "no sample could be scored (see the unscored samples' errors in the per-sample log)"
    return entry


def average(tasks: Mapping[str, Mapping[str, Any]]) -> float | None:
    """AVG over the tasks run (None when any task has no score: an average over fewer tasks would mislead)."""
    scores = [t.get("score") for t in tasks.values()]
    if not scores or any(s is None for s in scores):
        return None
    return sum(float(s) for s in scores if s is not None) / len(scores)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_row(label: str, summary: Mapping[str, Any], task_order: Sequence[str] = TASKS) -> list[str]:
    tasks = summary.get("tasks", {})
    cells = [_cell(_number(tasks.get(task, {}).get("score"))) for task in task_order]
    avg = _number(summary.get("avg"))
    partial = len([t for t in task_order if t in tasks]) < len(task_order)
    return [label, *cells, _cell(avg) + (" (tasks run)" if partial and avg is not None else "")]


def table_markdown(summary: Mapping[str, Any], compared: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> str:
    table = layout(summary)
    header = ["run", *table.columns, "AVG"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [run_row("**this run**", summary, table.tasks),
            *(run_row(label, other, table.tasks) for label, other in compared)]
    rows += [[f"paper: {method} ({model.split('-')[1]})", *(f"{v:.2f}" for v in values)]
             for (model, method), values in table.published.items()]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    settings = summary.get("settings", {})
    notes = [f"This run: model `{settings.get('model')}` ({settings.get('model_args') or 'no model args'}), "
             f"{settings.get('samples')} samples per query, temperature {settings.get('temperature')}, "
             f"top-p {settings.get('top_p')}, max_gen_toks {settings.get('max_gen_toks')}"
             + (f", limit {settings['limit']:g} items per task" if settings.get("limit") else "") + ".",
             "A '-' is a task not run or with no scored sample; AVG is over the tasks run.", table.citation]
    return "\n".join([f"# {table.title}", "", *lines, "", *notes, ""])


def table_png(path: Path, summary: Mapping[str, Any], compared: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> bool:
    """Grouped bars (one group per benchmark); False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    table = layout(summary)
    tasks = table.tasks
    series: list[tuple[str, list[float]]] = []
    for label, run in [("this run", summary), *compared]:
        scores = run.get("tasks", {})
        series.append((label, [_number(scores.get(t, {}).get("score")) or 0.0 for t in tasks]))
    for method in ("CGPO", table.baseline):
        series.append((f"paper {method} (7B)", list(table.published[("Qwen2.5-7B-Instruct", method)][:len(tasks)])))
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(12, 4.5))
    for k, (label, values) in enumerate(series):
        axes.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(tasks))], values, width, label=label)
    axes.set_xticks(range(len(tasks)), table.columns)
    axes.set_ylabel("score (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize=8)
    axes.set_title(f"CGPO {table.title} benchmarks")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def load_compared(paths: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Other runs' summaries, labelled by their directory (or file) name."""
    out = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            path = path / "summary.json"
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "tasks" not in data:
            raise ValueError(f"{path}: not a summary.json of mdreward eval (no 'tasks')")
        out.append((path.parent.name or str(path), data))
    return out


def screen_summary(summary: Mapping[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    rows = [("task", "score %", "stderr", "items", "samples", "unscored")]
    for task, entry in summary["tasks"].items():
        rows.append((task, _cell(_number(entry.get("score"))), _cell(_number(entry.get("stderr"))),
                     str(entry.get("items", "-")), str(entry.get("samples", "-")), str(entry.get("unscored", "-"))))
    rows.append(("AVG", _cell(_number(summary.get("avg"))), "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    errors = [f"{task}: {entry['error']}" for task, entry in summary["tasks"].items() if entry.get("error")]
    return "\n".join(lines + errors)
