"""The scorer: routes samples to their domains and returns one Score per sample, in order."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .records import RecordError, sample_from_record, valid_unicode
from .registry import Domain, DomainSpec, DomainUnavailable, Registry, UnknownName, build_domain, load_domains
from .runtime import LoopThread
from .timeouts import DEFAULT_TIMEOUTS, Timeouts
from .types import DEFAULT_FORMAT, FormatRules, Sample, Score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringConfig:
    """Everything a scoring run is configured with.

    ``domain_options`` maps a domain name to the keyword options of its factory (a judge, a
    sandbox, ``rewards`` overrides of its reward table, ...). ``judge`` is the default judge spec
    of every domain whose ``DomainSpec.needs`` has ``"judge"`` (plugins included); a domain's own
    ``judge`` option overrides it key by key (``merged_judge``).
    """

    format_rules: FormatRules = DEFAULT_FORMAT
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    domain_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    autoload_plugins: bool | None = None
    judge: Mapping[str, Any] = field(default_factory=dict)


def merged_judge(default: Mapping[str, Any], own: Any) -> Any:
    """A domain's judge: its own spec over the default key by key; a ready client object is kept as is."""
    if own is None:
        return dict(default)
    if isinstance(own, Mapping):
        return {**default, **own}
    return own


class Scorer:
    """Scores samples (or JSONL-contract records) with every registered domain.

    Use it as a context manager, or call ``close()``: domains hold worker processes and
    clients. Sync and async methods may be mixed; work runs on the scorer's own loop.
    """

    def __init__(self, config: ScoringConfig | None = None, *, registry: Registry[DomainSpec] | None = None) -> None:
        self.config = config or ScoringConfig()
        self.registry = registry or load_domains(self.config.autoload_plugins)
        self._domains: dict[str, Domain | DomainUnavailable] = {}
        self._loop = LoopThread(shutdown_s=self.config.timeouts.shutdown_s)
        self.domain_wall_s: dict[str, float] = {}

    # ---- public API -------------------------------------------------------------------------
    def score(self, sample: Sample | Mapping[str, Any]) -> Score:
        return self.score_batch([sample])[0]

    def score_batch(self, samples: Iterable[Sample | Mapping[str, Any]]) -> list[Score]:
        return self._loop.run(self._score_batch(list(samples)))

    async def ascore(self, sample: Sample | Mapping[str, Any]) -> Score:
        return (await self.ascore_batch([sample]))[0]

    async def ascore_batch(self, samples: Iterable[Sample | Mapping[str, Any]]) -> list[Score]:
        return await self._loop.run_async(self._score_batch(list(samples)))

    def warm_up(self, domains: Iterable[str] | None = None) -> None:
        """Build the named domains (default: all installed) and start their workers now, so the
        first RL step does not pay for it. Domains that cannot run are skipped."""
        self._loop.run(self._warm_up(list(domains) if domains is not None else self.registry.names()))

    def close(self) -> None:
        self._loop.close(self._aclose_domains)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "Scorer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- internals (run on the scorer loop) -------------------------------------------------
    async def _score_batch(self, items: list[Sample | Mapping[str, Any]]) -> list[Score]:
        results: list[Score | None] = [None] * len(items)
        groups: dict[str, list[tuple[int, Sample]]] = {}
        for i, item in enumerate(items):
            try:
                sample = valid_unicode(item if isinstance(item, Sample) else sample_from_record(item))
                key = self.registry.resolve(sample.domain)
                self._check_fields(self.registry.get(key), sample)
            except (RecordError, UnknownName) as exc:
                results[i] = Score.unscored(self._name_record(item, str(exc)))
                continue
            groups.setdefault(key, []).append((i, sample))
        outcomes = await asyncio.gather(*(self._score_group(name, group) for name, group in groups.items()))
        for group, scores in zip(groups.values(), outcomes):
            for (i, _), score in zip(group, scores):
                results[i] = score
        return [r for r in results if r is not None]

    async def _score_group(self, name: str, group: list[tuple[int, Sample]]) -> list[Score]:
        samples = [s for _, s in group]
        domain = self._domain(name)
        if isinstance(domain, DomainUnavailable):
            return [Score.unscored(f"{s.where()}: domain {name!r} is unavailable: {domain}") for s in samples]
        started = time.perf_counter()
        try:
            scores = await domain.score_batch(samples)
            if len(scores) != len(samples):
                raise RuntimeError(f"returned {len(scores)} scores for {len(samples)} samples")
        except Exception as exc:  # a domain bug must not lose records: they come out unscored
            log.exception("domain %s failed on a batch", name)
            scores = [Score.unscored(f"{s.where()}: internal error in domain {name!r}: {exc!r}") for s in samples]
        finally:
            self.domain_wall_s[name] = self.domain_wall_s.get(name, 0.0) + time.perf_counter() - started
        return scores

    def _domain(self, name: str) -> Domain | DomainUnavailable:
        if name not in self._domains:
            spec = self.registry.get(name)
            options = dict(self.config.domain_options.get(name)
                           or self.config.domain_options.get(name.rsplit(".", 1)[-1]) or {})
            if "judge" in spec.needs and self.config.judge:
                options["judge"] = merged_judge(self.config.judge, options.get("judge"))
            try:
                self._domains[name] = build_domain(spec, format_rules=self.config.format_rules,
                                                   timeouts=self.config.timeouts, options=options)
            except DomainUnavailable as exc:
                self._domains[name] = exc
            except (TypeError, ValueError) as exc:  # a wrong option: every record of the domain names it
                self._domains[name] = DomainUnavailable(f"invalid options {sorted(options)}: {exc}")
        return self._domains[name]

    @staticmethod
    def _check_fields(spec: DomainSpec, sample: Sample) -> None:
        for name in spec.required_fields:
            if getattr(sample, name, None) is None:
                raise RecordError(f"{sample.where()}: field {name!r} is required by domain {spec.name!r}")

    @staticmethod
    def _name_record(item: Sample | Mapping[str, Any], message: str) -> str:
        if message.startswith(("record", "line")):
            return message
        where = item.where() if isinstance(item, Sample) else (
            f"record {str(item.get('id'))!r}" if isinstance(item, Mapping) and item.get("id") is not None else "record")
        return f"{where}: {message}"

    async def _warm_up(self, names: list[str]) -> None:
        for name in names:
            domain = self._domain(self.registry.resolve(name))
            warm = getattr(domain, "warm_up", None)
            if warm is not None:
                await warm()

    async def _aclose_domains(self) -> None:
        for domain in self._domains.values():
            if not isinstance(domain, DomainUnavailable):
                try:
                    await domain.aclose()
                except Exception:
                    log.exception("closing domain %s failed", domain.name)


def score_batch(samples: Iterable[Sample | Mapping[str, Any]], config: ScoringConfig | None = None) -> list[Score]:
    """Score once with a temporary scorer (keep a ``Scorer`` open when scoring repeatedly)."""
    with Scorer(config) as scorer:
        return scorer.score_batch(samples)


async def ascore_batch(samples: Sequence[Sample | Mapping[str, Any]], config: ScoringConfig | None = None) -> list[Score]:
    scorer = Scorer(config)
    try:
        return await scorer.ascore_batch(samples)
    finally:
        await scorer.aclose()
