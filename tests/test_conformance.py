"""Every registered domain, built-in or plugin, must pass the conformance kit (``mdreward.testing``)."""
from __future__ import annotations

from typing import Any

import pytest

from mdreward import Sample, Score, Scorer
from mdreward.registry import DomainSpec, Registry, load_domains
from mdreward.testing import CHECKS, TIGHT, NotApplicable, assert_same_scores, check_domain, run_check, \
    scores_from_fresh_scorers

REGISTRY = load_domains()
SPECS = [entry.value for entry in REGISTRY]

#: Options that turn a domain's result caches off (a judge's cache is its spec's ``cache_size``).
CACHE_OFF: dict[str, dict[str, Any]] = {"math": {"cache_size": 0}}
#: Inputs that would run forever without a budget, for domains whose work is their own (the budget that bounds it).
HANGING = {
    "math": (Sample("math", "<think>t</think> \\boxed{9^{9^{9^{9^{9}}}}}", reference="3^{3^{3^{3^{3^{3}}}}}"),
             TIGHT.math_hard_kill_s),
    "code": (Sample("code", "<think>t</think>\n```python\ndef inc(x):\n    while True:\n        pass\n```",
                    tests={"assert": "assert inc(1) == 2", "entry_point": "inc"}),
             TIGHT.sandbox_run_s + TIGHT.sandbox_grace_s),
}


def services_for(spec: DomainSpec) -> dict[str, Any]:
    """Options that supply a domain's declared needs with real local services (see tests/services.py)."""
    if not spec.needs:
        return {}
    import services

    return services.options_for(spec)


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_domain_passes_the_kit(spec: DomainSpec, check: str) -> None:
    try:
        run_check(check, spec, options=services_for(spec), cache_off=CACHE_OFF.get(spec.name),
                  hanging=HANGING.get(spec.name), registry=REGISTRY)
    except NotApplicable as reason:
        pytest.skip(str(reason))


class _CoinFlipDomain:
    """Deduplicates identical work in a batch and caches results, like the built-in domains, but decides
    by a (seeded) coin flip: the determinism check must catch it."""

    name = "acme.coinflip"

    def __init__(self, *, table: Any, cache_size: int = 1000, **_: Any) -> None:
        self.table = table
        self._cache: dict[str, float] = {}
        self._cache_size = cache_size

    async def score_batch(self, samples: list[Sample]) -> list[Score]:
        decided: dict[str, float] = {}
        for sample in samples:
            if sample.response not in decided:
                cached = self._cache.get(sample.response)
                decided[sample.response] = cached if cached is not None else COIN.choice([1.0, -0.5])
                if self._cache_size > 0:
                    self._cache[sample.response] = decided[sample.response]
        return [Score.ok(decided[s.response], correct=decided[s.response] > 0) for s in samples]

    async def aclose(self) -> None:
        return None


COIN = __import__("random").Random(20261130)


def test_the_determinism_check_catches_a_coin_flip_that_dedupes_and_caches():
    from mdreward.domains.math import TABLE
    from mdreward.testing import KitOptions

    spec = DomainSpec("acme.coinflip", _CoinFlipDomain, "a coin flip", TABLE,
                      example=Sample("coinflip", "<think>t</think> \\boxed{1}", reference="1"))
    registry: Registry[DomainSpec] = Registry("domain")
    registry.register(spec.name, spec, provider="acme")
    with Scorer(registry=registry) as scorer:  # the old check: one batch of [x, x] is decided once and passes
        first, second = scorer.score_batch([spec.example, spec.example])
    assert first == second
    with pytest.raises(AssertionError, match="different scores"):
        assert_same_scores(scores_from_fresh_scorers(spec, spec.example, KitOptions(registry=registry), calls=4))


class _BrokenDomain:
    """Breaks every rule the kit checks: a reward outside its table, no format penalty, raises on junk,
    a model's output reaching status error, and it never looks at required fields."""

    name = "acme.broken"

    def __init__(self, *, table: Any, **_: Any) -> None:
        self.table = table

    async def score_batch(self, samples: list[Sample]) -> list[Score]:
        scores = []
        for sample in samples:
            if "[" * 100 in sample.response:
                raise RecursionError("nested too deep")
            if "\x00" in sample.response:
                scores.append(Score.unscored("NUL in the response"))
            else:
                scores.append(Score.ok(0.37 if sample.response.endswith(str(sample.reference)) else 1.0))
        return scores

    async def aclose(self) -> None:
        return None


def test_the_kit_fails_a_broken_domain_and_names_each_rule():
    from mdreward.domains.choice import TABLE

    spec = DomainSpec("acme.broken", _BrokenDomain, "breaks the rules", TABLE, required_fields=("response", "reference"),
                      example=Sample("acme.broken", "<think>t</think> B", reference="B"))
    with pytest.raises(AssertionError) as failure:
        check_domain(spec)
    message = str(failure.value)
    for check in ("gold_answer", "format_penalty", "hostile_responses"):
        assert f"\n  {check}:" in message, message
    assert "example:" not in message and "failing_dependency:" not in message


def test_a_conforming_domain_passes_and_reports_what_did_not_apply():
    report = check_domain("choice", registry=REGISTRY)
    assert {"example", "gold_answer", "format_penalty", "hostile_responses", "missing_fields"} <= set(report.passed)
    assert set(report.not_applicable) == {"failing_dependency", "time_budget"}
