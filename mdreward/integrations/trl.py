"""TRL: reward functions for ``GRPOTrainer(reward_funcs=...)``.

TRL calls each function as ``f(prompts=..., completions=..., **dataset_columns)`` and expects one
``float | None`` per completion; ``None`` means "not mine" and TRL leaves it out of that
function's mean and of the advantage. One function per domain, routed by the dataset's domain
column, gives per-domain reward curves (``rewards/mdreward_math/mean``) for free; each function
also logs ``mdreward/<domain>/...`` rates through TRL's ``log_metric``. A record that could not be
scored gets ``None`` too, and is counted in ``mdreward/<domain>/unscored_frac``.

A row for which every function returns ``None`` is left out of the advantage only by TRL >= 1.6
(:data:`MIN_TRL`); older releases' ``nansum`` made it a reward of 0. Rows whose domain no function
of :func:`reward_functions` claims are counted and logged (a typo such as ``maths``, or a domain
not passed): they would otherwise vanish without a word.
"""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping, Sequence

from ..registry import UnknownName
from ..scoring import Scorer
from ..types import Sample, Score, Status

log = logging.getLogger(__name__)

#: The first TRL release whose GRPO/RLOO leave a completion every reward function returned None for
#: out of the group baseline, with advantage 0 (huggingface/trl#5902); before, it counted as reward 0.
MIN_TRL = (1, 6)


@dataclass(frozen=True)
class Columns:
    """Names of the dataset columns the reward functions read (TRL passes every column)."""

    domain: str = "domain"
    reference: str = "reference"
    tests: str = "tests"
    id: str = "id"
    metadata: str = "metadata"


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text") or "" for part in content
                       if isinstance(part, Mapping) and part.get("type", "text") == "text")
    raise TypeError(f"message content of type {type(content).__name__} is not text")


def completion_text(completion: Any) -> str:
    """The response text of a plain (``str``) or conversational (list of messages) completion:
    the assistant messages' text, concatenated."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return "".join(_content_text(m.get("content")) for m in completion
                       if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant")
    raise TypeError(f"completion of type {type(completion).__name__} is neither text nor a list of messages")


def prompt_text(prompt: Any) -> str | None:
    """The prompt as text: a plain prompt as is, a conversation as its last user message."""
    if prompt is None or isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        return _content_text(users[-1].get("content")) if users else None
    return None


def _tests(value: Any) -> Mapping[str, Any] | None:
    """The ``tests`` column value as an object; raises ValueError for text that is not one."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"column 'tests' is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(value, Mapping):  # datasets fills keys missing in one row with None: drop them
        return {k: v for k, v in value.items() if v is not None}
    raise ValueError(f"column 'tests' must be an object or its JSON text, got {type(value).__name__}")


class Claims:
    """The domains a set of reward functions scores together; reports the rows none of them claims."""

    def __init__(self, scorer: Scorer, domains: Sequence[str]) -> None:
        self.scorer = scorer
        self.domains = frozenset(domains)

    def unclaimed(self, row_domains: Sequence[Any]) -> Counter[str]:
        """How many rows of each domain name no function scores."""
        counts: Counter[str] = Counter()
        for name in row_domains:
            try:
                claimed = name is not None and self.scorer.registry.resolve(str(name)) in self.domains
            except UnknownName:
                claimed = False
            if not claimed:
                counts[str(name)] += 1
        return counts

    def why(self, name: str) -> str:
        try:
            full = self.scorer.registry.resolve(name)
        except UnknownName as exc:
            return str(exc)
        return f"domain {full!r} has no reward function here (pass it to reward_functions)"


class MdrewardReward:
    """A synchronous TRL reward function scoring the rows of one domain (every domain when ``domain`` is None).

    Rows of other domains get ``None``. Its ``__name__`` (``mdreward_<domain>``) names TRL's
    ``rewards/<name>/mean`` metric.
    """

    def __init__(self, scorer: Scorer, domain: str | None = None, *, columns: Columns = Columns(),
                 name: str | None = None) -> None:
        self.scorer = scorer
        self.columns = columns
        self.domain = scorer.registry.resolve(domain) if domain is not None else None
        short = self.domain.rsplit(".", 1)[-1] if self.domain else None
        self.__name__ = name or (f"mdreward_{short}" if short else "mdreward")
        self._resolved: dict[str, str | None] = {}
        #: set by :func:`reward_functions` on one function of the set, which then reports unclaimed rows
        self.claims: Claims | None = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        self.report_unclaimed(len(completions), columns)
        rows, prepared = self.samples(prompts, completions, columns)
        samples = [p for _, p in prepared if isinstance(p, Sample)]
        scores = self.scorer.score_batch(samples) if samples else []
        return self._rewards(len(completions), rows, prepared, scores, columns)

    # ---- pieces ----------------------------------------------------------------------------------
    def report_unclaimed(self, n: int, columns: Mapping[str, Any]) -> None:
        """Warn (with counts and reasons) about rows whose domain no function of the set scores, and log
        ``mdreward/unclaimed_frac``; TRL leaves such rows out of the update."""
        if self.claims is None or not n:
            return
        counts = self.claims.unclaimed(columns.get(self.columns.domain) or [None] * n)
        log_metric: Callable[[str, float], None] | None = columns.get("log_metric")
        if log_metric is not None:
            log_metric("mdreward/unclaimed_frac", sum(counts.values()) / n)
        if counts:
            detail = "; ".join(f"{name!r} x{count}: {self.claims.why(name)}" for name, count in counts.most_common())
            log.warning("mdreward: %d of %d rows have a domain no reward function scores (every function returns "
                        "None; TRL leaves them out): %s", sum(counts.values()), n, detail)

    def samples(self, prompts: Sequence[Any], completions: Sequence[Any],
                columns: Mapping[str, Any]) -> tuple[list[int], list[tuple[str, Sample | Score]]]:
        """The rows this function scores: their domains and Samples (or an unscored Score saying why
        a row has none)."""
        c = self.columns
        if c.domain not in columns and self.domain is None:
            internal = ("trainer_state", "log_extra", "log_metric", "completion_ids", "environments")
            known = sorted(k for k in columns if k not in internal)
            raise ValueError(f"dataset has no domain column {c.domain!r} (columns: {known}); add one, pass "
                             f"Columns(domain=...), or give the reward function a domain")
        domains = columns.get(c.domain) or [self.domain] * len(completions)

        def column(name: str, i: int) -> Any:
            values = columns.get(name)
            return values[i] if values is not None else None

        rows: list[int] = []
        samples: list[tuple[str, Sample | Score]] = []
        for i, completion in enumerate(completions):
            row_domain = self._resolve(str(domains[i])) if domains[i] is not None else None
            if self.domain is not None and row_domain != self.domain:
                continue
            record_id = column(c.id, i)
            record_id = str(record_id) if record_id is not None else f"row {i}"
            reference = column(c.reference, i)
            metadata = column(c.metadata, i)
            domain = row_domain or str(domains[i])
            rows.append(i)
            try:
                tests = _tests(column(c.tests, i))
            except ValueError as exc:
                samples.append((domain, Score.unscored(f"record {record_id!r}: {exc}")))
                continue
            samples.append((domain, Sample(
                domain=domain,
                response=completion_text(completion),
                reference=str(reference) if reference is not None else None,
                prompt=prompt_text(prompts[i]) if i < len(prompts) else None,
                id=record_id,
                tests=tests,
                metadata=metadata if isinstance(metadata, Mapping) else {})))
        return rows, samples

    def _resolve(self, name: str) -> str | None:
        if name not in self._resolved:
            try:
                self._resolved[name] = self.scorer.registry.resolve(name)
            except UnknownName:
                self._resolved[name] = None
        return self._resolved[name]

    def _rewards(self, n: int, rows: list[int], prepared: list[tuple[str, Sample | Score]], scores: list[Score],
                 columns: Mapping[str, Any]) -> list[float | None]:
        scored = iter(scores)
        results = [(domain, next(scored) if isinstance(item, Sample) else item) for domain, item in prepared]
        rewards: list[float | None] = [None] * n
        statuses: list[str | None] = [None] * n
        errors: list[str | None] = [None] * n
        for i, (_, score) in zip(rows, results):
            rewards[i] = score.reward
            statuses[i] = score.status.value
            errors[i] = score.error
        log_metric: Callable[[str, float], None] | None = columns.get("log_metric")
        if log_metric is not None:
            for name, value in domain_metrics(results).items():
                log_metric(name, value)
        log_extra: Callable[[str, list], None] | None = columns.get("log_extra")
        if log_extra is not None:
            log_extra(f"{self.__name__}_status", statuses)
            log_extra(f"{self.__name__}_error", errors)  # why: a format rule, an unknown domain, a failed judge...
        return rewards


class AsyncMdrewardReward(MdrewardReward):
    """The same function, awaitable: TRL runs async reward functions concurrently on its own loop."""

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],  # type: ignore[override]
                       **columns: Any) -> list[float | None]:
        self.report_unclaimed(len(completions), columns)
        rows, prepared = self.samples(prompts, completions, columns)
        samples = [p for _, p in prepared if isinstance(p, Sample)]
        scores = await self.scorer.ascore_batch(samples) if samples else []
        return self._rewards(len(completions), rows, prepared, scores, columns)


def domain_metrics(results: Sequence[tuple[str, Score]]) -> dict[str, float]:
    """Per-domain rates of one batch of (domain, score):
    ``mdreward/<domain>/{reward_mean,unscored_frac,format_error_frac,correct_frac}``."""
    by_domain: dict[str, list[Score]] = defaultdict(list)
    for domain, score in results:
        by_domain[domain].append(score)
    metrics: dict[str, float] = {}
    for domain, group in by_domain.items():
        prefix = f"mdreward/{domain}"
        rewards = [s.reward for s in group if s.reward is not None]
        if rewards:
            metrics[f"{prefix}/reward_mean"] = sum(rewards) / len(rewards)
        metrics[f"{prefix}/unscored_frac"] = sum(s.status is Status.ERROR for s in group) / len(group)
        metrics[f"{prefix}/format_error_frac"] = sum(s.status is Status.FORMAT_ERROR for s in group) / len(group)
        metrics[f"{prefix}/correct_frac"] = sum(s.components.get("correct") is True for s in group) / len(group)
    return metrics


def reward_functions(scorer: Scorer, domains: Sequence[str] | None = None, *, asynchronous: bool = False,
                     columns: Columns = Columns()) -> list[MdrewardReward]:
    """One reward function per domain (every installed domain when ``domains`` is None), for
    ``GRPOTrainer(reward_funcs=...)``. The first function also reports rows no function of the set scores."""
    check_trl_version()
    names = list(domains) if domains is not None else scorer.registry.names()
    cls = AsyncMdrewardReward if asynchronous else MdrewardReward
    functions = [cls(scorer, name, columns=columns) for name in names]
    if functions:
        functions[0].claims = Claims(scorer, [f.domain for f in functions if f.domain is not None])
    return functions


def check_trl_version(installed: str | None = None) -> None:
    """Warn when the installed TRL turns a row every reward function returned None for into reward 0."""
    try:
        version = installed or metadata.version("trl")
    except metadata.PackageNotFoundError:
        return
    from packaging.version import InvalidVersion, Version
    try:
        too_old = Version(version).release[:2] < MIN_TRL
    except InvalidVersion:
        return
    if too_old:
        log.warning("mdreward: TRL %s gives a completion that no reward function scored a reward of 0 (it beats a "
                    "wrong answer); TRL >= %s leaves it out. Upgrade: pip install 'trl>=%s'",
                    version, ".".join(map(str, MIN_TRL)), ".".join(map(str, MIN_TRL)))
