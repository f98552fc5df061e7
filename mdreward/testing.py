"""The conformance kit: the checks every domain must pass, for plugin authors and for mdreward itself.

``check_domain("acme.logic")`` (or a ``DomainSpec``) runs every check and raises ``AssertionError``
listing each failure; it returns a :class:`ConformanceReport` (passed and not-applicable checks).
In a plugin's test suite, one line makes each check its own pytest test::

    from mdreward.testing import conformance_tests
    test_conformance = conformance_tests("acme.logic")

What is checked (``CHECKS``): the registered example earns ``table[top_outcome]``, the same in two
fresh Scorers with caches off, one call at a time; empty and malformed responses get
``table["format_error"]``; hostile responses never make ``score_batch`` raise, get one Score each,
rewards only from the table (or null), and, for a domain that needs no service, never status
``error`` (an unscored sample must come from infrastructure, never from a model's output); a
record missing a required field is an error naming the field and the record; a failing dependency
(a judge that never answers) gives status ``error`` and never a reward; a judge that never
answers, or a ``hanging`` input for a domain whose work is its own, comes back within the budget of
``Timeouts``.

Domains that need a service get it through ``options`` (e.g. ``{"judge": {"url": ..., "model": ...}}``);
``cache_off`` are the options that turn the domain's result caches off (a judge's ``cache_size`` is
set to 0 for you).
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from .registry import DomainSpec, Registry, build_domain, load_domains
from .scoring import Scorer, ScoringConfig
from .timeouts import Timeouts
from .types import Sample, Score, Status

#: Tight budgets for the time-budget and failing-dependency checks (fast enough for a test run).
TIGHT = Timeouts(math_parse_s=30, math_verify_s=30, math_hard_kill_s=1.0, sandbox_run_s=2.0, sandbox_test_s=1.0,
                 sandbox_cpu_s=1.0, judge_request_s=0.5, judge_total_s=1.5, judge_backoff_s=0.01,
                 judge_backoff_max_s=0.05, service_request_s=1.0)
#: Process start-up on a busy machine, on top of a budget; without a budget a hang would never return.
SLACK_S = 6.0
#: Responses that break the core format rules (no think block, an unclosed one).
FORMAT_VIOLATIONS = ("", "no reasoning at all", "<think>unclosed")


@dataclass(frozen=True)
class KitOptions:
    """How to run the checks on one domain (see the module docstring)."""

    options: Mapping[str, Any] = field(default_factory=dict)
    cache_off: Mapping[str, Any] = field(default_factory=dict)
    hanging: tuple[Sample, float] | None = None
    registry: Registry[DomainSpec] | None = None


class NotApplicable(Exception):
    """The check does not apply to this domain (the reason says why and how to make it apply)."""


@dataclass(frozen=True)
class ConformanceReport:
    domain: str
    passed: tuple[str, ...]
    not_applicable: Mapping[str, str]


def _registry_with(spec: DomainSpec, kit: KitOptions) -> Registry[DomainSpec]:
    if kit.registry is not None and spec.name in kit.registry:
        return kit.registry
    registry: Registry[DomainSpec] = Registry("domain")
    registry.register(spec.name, spec, provider="mdreward.testing")
    return registry


def _options_without_caches(kit: KitOptions) -> dict[str, Any]:
    options = {**kit.options, **kit.cache_off}
    if isinstance(options.get("judge"), Mapping):
        options["judge"] = {**options["judge"], "cache_size": 0}
    return options


def _example(spec: DomainSpec) -> Sample:
    if spec.example is None:
        raise AssertionError(f"{spec.name} registers no example sample (DomainSpec.example)")
    return spec.example


def _with_response(sample: Sample, response: str) -> Sample:
    return replace(sample, response=response)


def scores_from_fresh_scorers(spec: DomainSpec, sample: Sample, kit: KitOptions = KitOptions(),
                              scorers: int = 2, calls: int = 3) -> list[Score]:
    """``sample`` scored ``calls`` times, one call at a time, in each of ``scorers`` fresh Scorers with caches
    off: every score is computed anew (one batch of ``[x, x]`` would be deduplicated into one computation)."""
    scores = []
    for _ in range(scorers):
        config = ScoringConfig(domain_options={spec.name: _options_without_caches(kit)})
        with Scorer(config, registry=_registry_with(spec, kit)) as scorer:
            scores += [scorer.score(sample) for _ in range(calls)]
    return scores


def assert_same_scores(scores: list[Score]) -> None:
    outcomes = {(s.reward, s.status, s.answer) for s in scores}
    assert len(outcomes) == 1, f"one sample, different scores across fresh scorers with caches off: {outcomes}"


# ---- the checks -----------------------------------------------------------------------------------
def check_example(spec: DomainSpec, kit: KitOptions) -> None:
    """The domain registers an example and its top outcome is in its table."""
    _example(spec)
    assert spec.top_outcome in spec.table.values, \
        f"top_outcome {spec.top_outcome!r} is not in the table {sorted(spec.table.values)}"
    assert "format_error" in spec.table.values, "the table has no 'format_error' outcome (the format penalty)"
    assert spec.reference_format in ("text", "json"), f"reference_format {spec.reference_format!r}: 'text' or 'json'"
    assert all(isinstance(p, str) and p for p in spec.data_sources), f"data_sources {spec.data_sources!r}: globs"


def check_gold_answer(spec: DomainSpec, kit: KitOptions) -> None:
    """The example earns the top reward, identically in fresh scorers with caches off."""
    scores = scores_from_fresh_scorers(spec, _example(spec), kit)
    assert scores[0].status is Status.OK, f"the example is not scored ok: {scores[0]}"
    assert scores[0].reward == spec.table[spec.top_outcome], \
        f"the example earns {scores[0].reward}, not table[{spec.top_outcome!r}] = {spec.table[spec.top_outcome]}"
    assert_same_scores(scores)


def check_format_penalty(spec: DomainSpec, kit: KitOptions) -> None:
    """Empty and malformed responses get the format penalty."""
    example = _example(spec)
    with Scorer(ScoringConfig(domain_options={spec.name: dict(kit.options)}), registry=_registry_with(spec, kit)) as s:
        scores = s.score_batch([_with_response(example, r) for r in FORMAT_VIOLATIONS])
    for response, score in zip(FORMAT_VIOLATIONS, scores):
        assert score.status is Status.FORMAT_ERROR and score.reward == spec.table["format_error"], \
            f"response {response!r}: expected the format penalty {spec.table['format_error']}, got {score}"


def hostile_responses(example: Sample, max_chars: int) -> list[str]:
    """Responses a model could produce to break a domain: junk, nesting, repeats, lone surrogates, huge input."""
    gold = example.response
    after = gold.split("</think>", 1)[-1]
    return [
        "", " ", "<think></think>", "<think>x</think>", "<think>x</think> ", gold + gold,
        gold.replace("</think>", "</think></think>"), gold + after * 3, gold + "\n\\boxed{" * 200,
        "<think>x</think>" + "[" * 5000, "<think>x</think>" + "{" * 5000 + "}" * 5000,
        "<think>x</think><answer>" + "(" * 3000 + "</answer>", "<think>x</think><answer></answer>",
        "<think>x</think>\x00\x1b[2J\ufeff\u202e", "<think>\ud800</think> \udfff", "<think>x</think> " + "9" * 5000,
        "<think>x</think> 1e999999 -nan inf", "<think>x</think>" + "é" * (max_chars + 1),
    ]


def check_hostile_responses(spec: DomainSpec, kit: KitOptions) -> None:
    """Hostile responses: score_batch never raises, one Score each, rewards only from the table or null; a
    domain that needs no service never answers a model's output with status error."""
    example = _example(spec)
    registry = _registry_with(spec, kit)
    config = ScoringConfig(domain_options={spec.name: dict(kit.options)})
    samples = [_with_response(example, r) for r in hostile_responses(example, config.format_rules.max_response_chars)]

    async def run() -> list[Score]:
        domain = build_domain(registry.get(spec.name), format_rules=config.format_rules, timeouts=config.timeouts,
                              options=dict(kit.options))
        try:
            return list(await domain.score_batch(samples)) + [s for sample in samples[:6]
                                                             for s in await domain.score_batch([sample])]
        finally:
            await domain.aclose()

    try:
        scores = asyncio.run(run())
    except Exception as exc:
        raise AssertionError(f"score_batch raised on hostile responses: {exc!r}") from exc
    assert len(scores) == len(samples) + 6, f"{len(scores)} scores for {len(samples) + 6} samples"
    for sample, score in zip(samples + samples[:6], scores):
        assert isinstance(score, Score), f"response {sample.response[:60]!r}: not a Score: {score!r}"
        assert score.reward is None or spec.table.admits(score.reward), \
            f"response {sample.response[:60]!r}: reward {score.reward} is not in the table {dict(spec.table.values)}"
        if not spec.needs:
            assert score.status is not Status.ERROR, \
                f"response {sample.response[:60]!r}: a model's output reached status error: {score.error}"


def check_missing_fields(spec: DomainSpec, kit: KitOptions) -> None:
    """A record missing a required field is an error naming the field and the record, never a reward."""
    example = _example(spec)
    missing = [f for f in spec.required_fields if f != "response"]
    if not missing:
        raise NotApplicable("the domain requires no field beyond 'response'")
    with Scorer(ScoringConfig(domain_options={spec.name: dict(kit.options)}), registry=_registry_with(spec, kit)) as s:
        for name in missing:
            score = s.score({"domain": example.domain, "response": example.response, "id": "r1"})
            assert score.status is Status.ERROR and score.reward is None, f"no {name!r}: got {score}"
            assert score.error is not None and name in score.error and "r1" in score.error, \
                f"the error must name field {name!r} and record 'r1': {score.error!r}"


class StallingServer:
    """Accepts TCP connections and never answers (a judge or service that hangs)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self._held.append(self._socket.accept()[0])
            except OSError:
                return

    @property
    def connections(self) -> int:
        return len(self._held)

    def close(self) -> None:
        self._socket.close()
        for conn in self._held:
            conn.close()


def check_failing_dependency(spec: DomainSpec, kit: KitOptions) -> None:
    """A judge that never answers gives status error and never a reward, whenever the domain asked it."""
    if "judge" not in spec.needs:
        raise NotApplicable("the domain declares no service in DomainSpec.needs")
    example = _example(spec)
    samples = [example]
    if example.reference is not None:  # a reference the response does not repeat, so no rule shortcut decides it
        samples.append(replace(example, reference=example.reference + " (and one more)"))
    stalling = StallingServer()
    try:
        options = {**kit.options, "judge": {"url": stalling.url, "model": "m", "max_retries": 1}}
        config = ScoringConfig(timeouts=TIGHT, domain_options={spec.name: options})
        with Scorer(config, registry=_registry_with(spec, kit)) as scorer:
            for sample in samples:
                asked_before = stalling.connections
                score = scorer.score(sample)
                if stalling.connections > asked_before:
                    assert score.status is Status.ERROR and score.reward is None, \
                        f"a judge that never answered gave a reward: {score}"
        assert stalling.connections, "the domain never asked its judge, even for a reference the response lacks"
    finally:
        stalling.close()


def check_time_budget(spec: DomainSpec, kit: KitOptions) -> None:
    """A judge that never answers, or the ``hanging`` input, comes back within the domain's budget."""
    stalling = None
    if "judge" in spec.needs:
        stalling = StallingServer()
        options: dict[str, Any] = {**kit.options, "judge": {"url": stalling.url, "model": "m", "max_retries": 1}}
        sample, budget = _example(spec), TIGHT.judge_total_s
    elif kit.hanging is not None:
        options = dict(kit.options)
        sample, budget = kit.hanging
    else:
        raise NotApplicable(f"no hanging input known for {spec.name!r}: pass hanging=(sample, budget_s)")
    try:
        with Scorer(ScoringConfig(timeouts=TIGHT, domain_options={spec.name: options}),
                    registry=_registry_with(spec, kit)) as scorer:
            scorer.warm_up([spec.name])
            scorer.score(replace(sample, response="", id="warm"))  # start workers and sandboxes first
            outcome: list[Score] = []
            worker = threading.Thread(target=lambda: outcome.append(scorer.score(sample)), daemon=True)
            started = time.monotonic()
            worker.start()
            worker.join(budget + SLACK_S)
            elapsed = time.monotonic() - started
            assert outcome, f"{spec.name}: no score {elapsed:.1f}s after a hanging input (budget {budget}s)"
    finally:
        if stalling is not None:
            stalling.close()
    (score,) = outcome
    if stalling is not None and stalling.connections:
        assert score.status is Status.ERROR and score.reward is None, f"a silent judge gave a reward: {score}"


CHECKS: dict[str, Callable[[DomainSpec, KitOptions], None]] = {
    "example": check_example,
    "gold_answer": check_gold_answer,
    "format_penalty": check_format_penalty,
    "hostile_responses": check_hostile_responses,
    "missing_fields": check_missing_fields,
    "failing_dependency": check_failing_dependency,
    "time_budget": check_time_budget,
}


def resolve_spec(domain: str | DomainSpec, registry: Registry[DomainSpec] | None = None) -> DomainSpec:
    """A spec object as is; a name looked up in ``registry`` (default: every installed domain)."""
    if isinstance(domain, DomainSpec):
        return domain
    return (registry or load_domains()).get(domain)


def run_check(name: str, domain: str | DomainSpec, *, options: Mapping[str, Any] | None = None,
              cache_off: Mapping[str, Any] | None = None, hanging: tuple[Sample, float] | None = None,
              registry: Registry[DomainSpec] | None = None) -> None:
    """Run one check of ``CHECKS``; raises ``AssertionError`` on failure, ``NotApplicable`` when it does not apply."""
    spec = resolve_spec(domain, registry)
    CHECKS[name](spec, KitOptions(dict(options or {}), dict(cache_off or {}), hanging, registry))


def check_domain(domain: str | DomainSpec, *, options: Mapping[str, Any] | None = None,
                 cache_off: Mapping[str, Any] | None = None, hanging: tuple[Sample, float] | None = None,
                 registry: Registry[DomainSpec] | None = None) -> ConformanceReport:
    """Run every check on one domain; raises ``AssertionError`` listing every failed check."""
    spec = resolve_spec(domain, registry)
    passed: list[str] = []
    not_applicable: dict[str, str] = {}
    failures: list[str] = []
    for name in CHECKS:
        try:
            run_check(name, spec, options=options, cache_off=cache_off, hanging=hanging, registry=registry)
        except NotApplicable as reason:
            not_applicable[name] = str(reason)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
        else:
            passed.append(name)
    if failures:
        raise AssertionError(f"domain {spec.name!r} fails {len(failures)} conformance check(s):\n  "
                             + "\n  ".join(failures))
    return ConformanceReport(spec.name, tuple(passed), not_applicable)


def conformance_tests(domain: str | DomainSpec, *, options: Mapping[str, Any] | None = None,
                      cache_off: Mapping[str, Any] | None = None,
                      hanging: tuple[Sample, float] | None = None) -> Callable[[str], None]:
    """A pytest test function, parametrized over ``CHECKS``: assign it to a ``test_*`` name in a test module."""
    import pytest

    @pytest.mark.parametrize("check", list(CHECKS))
    def test_conformance(check: str) -> None:
        try:
            run_check(check, domain, options=options, cache_off=cache_off, hanging=hanging)
        except NotApplicable as reason:
            pytest.skip(str(reason))

    return test_conformance
