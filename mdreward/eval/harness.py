"""The lm-eval side of the seven benchmarks: documents, scoring filter, per-document results, aggregation.

The task files in ``mdreward/eval/tasks/`` point here (through ``tasks/utils.py``):

- ``load_docs`` is each task's ``custom_dataset``: lm-eval calls it with the task's ``dataset_kwargs``
  (the benchmark name) and the run's ``--metadata`` (``data_dir``, ``judge_url``, ``judge_model``,
  ``require_think``, ``think_in_prompt``), so no relative ``data_files`` and no working-directory surprises;
- ``ScoreWithMdreward`` is the task's only filter: it scores EVERY repeat of every document in one batch with
  mdreward's ``Scorer`` (lm-eval's default ``take_first`` filter would keep one sample of four) and puts a
  ``SampleResult`` dict per repeat in the per-sample log;
- ``process_results`` and the aggregations turn those into the benchmark score: the mean over all scored samples
  of all documents, in percent (accuracy x 100; Zebra's right-cell fraction x 100; WritingBench's 1-10 critic
  mean x 10). Unscored samples (sandbox or judge failure) are left out of the mean and counted in ``unscored``.
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..scoring import Scorer, ScoringConfig
from ..types import FormatRules, Score
from .datasets import BenchmarkItem, load_benchmark, sample_for

#: The paper's evaluation settings (Section 4.1, Appendix C.5); each is a task setting overridable per run.
PAPER_SAMPLES = 4
PAPER_TEMPERATURE = 0.6
PAPER_TOP_P = 0.95
#: Not in the paper: long enough for a reasoning model's chain of thought (vLLM's lm-eval default is 256).
DEFAULT_MAX_GEN_TOKS = 8192
FILTER_NAME = "mdreward"
#: Domains whose score is a 1-10 critic mean (reported x10); every other domain reports accuracy x100.
CRITIC_DOMAINS = frozenset({"writingbench"})
#: Domains whose samples earn partial credit by cells (the logic plugin's Zebra tables): the sample's value is its
#: fraction of right cells x 100, the reward Guru's validation averages (an ordering puzzle has no cells: 0 or 100).
CELL_CREDIT_DOMAINS = frozenset({"logic"})
SCORING_CHUNK = 256


@dataclass(frozen=True)
class ScoringSettings:
    """How the filter builds its scorer; set from the run's metadata (``mdreward eval`` or ``--metadata``)."""

    judge_url: str | None = None
    judge_model: str | None = None
    require_think: bool = False
    think_in_prompt: bool = False

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ScoringSettings:
        return cls(judge_url=metadata.get("judge_url") or None, judge_model=metadata.get("judge_model") or None,
                   require_think=_flag(metadata.get("require_think", False)),
                   think_in_prompt=_flag(metadata.get("think_in_prompt", False)))

    def scoring_config(self) -> ScoringConfig:
        options: dict[str, dict[str, Any]] = {}
        if self.judge_url:
            from ..judges.config import judge_options_from_cli

            options = judge_options_from_cli(self.judge_url, self.judge_model, None)
        rules = FormatRules(require_think=self.require_think, think_in_prompt=self.think_in_prompt)
        return ScoringConfig(format_rules=rules, domain_options=options)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


class _SettingsHolder:
    """The scoring settings of this process's run (set by each task's loader from the run's metadata)."""

    def __init__(self) -> None:
        self.settings = ScoringSettings()
        self._lock = threading.Lock()

    def configure(self, settings: ScoringSettings) -> None:
        with self._lock:
            self.settings = settings

    def scorer(self) -> Scorer:
        """A new scorer for one task's batch (the caller closes it: workers do not outlive the scoring)."""
        with self._lock:
            return Scorer(self.settings.scoring_config())


RUN_SETTINGS = _SettingsHolder()


class RunTiming:
    """Wall time spent loading documents and scoring, so a run can report scoring's share of generation."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loading_s = 0.0
        self.scoring_s = 0.0
        self.scoring_s_by_benchmark: dict[str, float] = {}

    def add_scoring(self, benchmark: str, seconds: float) -> None:
        self.scoring_s += seconds
        self.scoring_s_by_benchmark[benchmark] = self.scoring_s_by_benchmark.get(benchmark, 0.0) + seconds

    def report(self, total_s: float) -> dict[str, Any]:
        """``generation_s`` is the rest of the run: model start-up, prompt rendering and generation."""
        generation_s = max(total_s - self.loading_s - self.scoring_s, 0.0)
        share = round(self.scoring_s / generation_s, 4) if generation_s > 0 else None  # summary.json: no NaN
        return {"total_s": round(total_s, 3), "loading_s": round(self.loading_s, 3),
                "scoring_s": round(self.scoring_s, 3), "generation_s": round(generation_s, 3),
                "scoring_share_of_generation": share,
                "scoring_s_by_benchmark": {k: round(v, 3) for k, v in self.scoring_s_by_benchmark.items()}}


TIMING = RunTiming()


# ---- documents ----------------------------------------------------------------------------------
def load_docs(benchmark: str, data_dir: str | None = None, **metadata: Any) -> Any:
    """A task's ``custom_dataset``: the benchmark's items as a one-split ``DatasetDict`` (``test``).

    Each document keeps ``id`` and ``prompt`` as columns and the whole item as JSON in ``item`` (items of one
    benchmark differ in their nested fields, which Arrow would otherwise pad or reject).
    """
    import datasets

    started = time.perf_counter()
    RUN_SETTINGS.configure(ScoringSettings.from_metadata(metadata))
    items = load_benchmark(benchmark, data_dir or None)
    columns = {"id": [item["id"] for item in items], "prompt": [item["prompt"] for item in items],
               "item": [json.dumps(item, sort_keys=True) for item in items]}
    docs = datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns)})
    TIMING.loading_s += time.perf_counter() - started
    return docs


def doc_to_text(doc: Mapping[str, Any]) -> str:
    return str(doc["prompt"])


def item_of(doc: Mapping[str, Any]) -> BenchmarkItem:
    item: BenchmarkItem = json.loads(doc["item"])
    return item


# ---- scoring ------------------------------------------------------------------------------------
def sample_value(domain: str, score: Score) -> float | None:
    """One sample's contribution to the benchmark score in percent, or None when it could not be scored."""
    if not score.scored or score.reward is None:
        return None
    if domain in CRITIC_DOMAINS:
        return 10.0 * score.reward
    cells, right = score.components.get("cells"), score.components.get("cells_right")
    if domain in CELL_CREDIT_DOMAINS and isinstance(cells, int) and cells > 0 and isinstance(right, int):
        return 100.0 * right / cells
    return 100.0 if score.components.get("correct") is True else 0.0


def sample_result(response: str, domain: str, score: Score) -> str:
    """What the per-sample log keeps for one repeat, as a JSON object (lm-eval logs filtered responses as text):
    ``response``, ``value`` (percent, null when unscored), ``reward``, ``status``, ``components``, ``answer`` and
    ``error`` when there is one."""
    out = {"response": response, "value": sample_value(domain, score), **score.to_json(), "answer": score.answer}
    return json.dumps(out, default=str)


def parse_sample_result(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text)
    return result


class ScoreWithMdreward:
    """lm-eval filter: every repeat of every document, scored in one batch (progress bar on stderr)."""

    def __init__(self, **_: Any) -> None:
        pass

    def apply(self, resps: Sequence[Sequence[str]], docs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
        from tqdm import tqdm

        items = [item_of(doc) for doc in docs]
        flat = [(item, str(response)) for item, responses in zip(items, resps) for response in responses]
        started = time.perf_counter()
        benchmark = items[0]["metadata"].get("benchmark", items[0]["domain"]) if items else ""
        scores: list[Score] = []
        bar = tqdm(total=len(flat), desc=f"Scoring {benchmark} with mdreward", unit="sample")
        with RUN_SETTINGS.scorer() as scorer, bar:
            for start in range(0, len(flat), SCORING_CHUNK):
                chunk = flat[start:start + SCORING_CHUNK]
                scores += scorer.score_batch([sample_for(item, response) for item, response in chunk])
                bar.update(len(chunk))
        TIMING.add_scoring(str(benchmark), time.perf_counter() - started)
        results = iter(sample_result(response, item["domain"], score) for (item, response), score in zip(flat, scores))
        return [[next(results) for _ in responses] for responses in resps]


def process_results(doc: Mapping[str, Any], results: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Per document: the values of its scored samples and the count of its unscored ones."""
    samples = [parse_sample_result(text) for text in results[0]]
    values = [float(s["value"]) for s in samples if s.get("value") is not None]
    return {"score": values, "score_se": values, "samples": len(samples), "unscored": len(samples) - len(values)}


def mean_of_samples(per_doc: Iterable[Sequence[float]]) -> float:
    """Mean over all scored samples of all documents (pass@1 estimated from every repeat); NaN when none."""
    values = [v for doc in per_doc for v in doc]
    return sum(values) / len(values) if values else math.nan


def standard_error(per_doc: Iterable[Sequence[float]]) -> float:
    """Standard error of the score over documents: the per-document means' standard deviation / sqrt(n).

    Repeats of one prompt are not independent, so the document is the sampling unit.
    """
    means = [sum(doc) / len(doc) for doc in per_doc if doc]
    if len(means) < 2:
        return math.nan
    centre = sum(means) / len(means)
    variance = sum((m - centre) ** 2 for m in means) / (len(means) - 1)
    return math.sqrt(variance / len(means))


def total(counts: Iterable[int]) -> int:
    return int(sum(counts))
