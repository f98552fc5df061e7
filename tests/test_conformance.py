"""Every registered domain, built-in or plugin, must pass these."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from mdreward import Sample, Score, Scorer, ScoringConfig, Status, Timeouts
from mdreward.registry import DomainSpec, Registry, load_domains

REGISTRY = load_domains()
SPECS = [entry.value for entry in REGISTRY]


def services_for(spec):
    """Options that supply a domain's declared needs with real local services (see tests/services.py)."""
    if not spec.needs:
        return {}
    import services

    return services.options_for(spec)


@pytest.fixture(scope="module", params=SPECS, ids=[s.name for s in SPECS])
def configured(request):
    from mdreward import ScoringConfig

    spec = request.param
    with Scorer(ScoringConfig(domain_options={spec.name: services_for(spec)})) as scorer:
        yield spec, scorer


def test_every_domain_has_an_example(configured):
    spec, _ = configured
    assert spec.example is not None, f"{spec.name} registers no example sample"
    assert spec.top_outcome in spec.table.values


#: Options that turn a domain's result caches off (a judge's cache is its spec's ``cache_size``).
CACHE_OFF: dict[str, dict[str, Any]] = {"math": {"cache_size": 0}}


def options_without_caches(spec: DomainSpec) -> dict[str, Any]:
    options = {**services_for(spec), **CACHE_OFF.get(spec.name, {})}
    if isinstance(options.get("judge"), dict):
        options["judge"] = {**options["judge"], "cache_size": 0}
    return options


def scores_from_fresh_scorers(spec: DomainSpec, sample: Sample, registry: Registry[DomainSpec] = REGISTRY,
                              scorers: int = 2, calls: int = 3) -> list[Score]:
    """``sample`` scored ``calls`` times, one call at a time, in each of ``scorers`` fresh Scorers with caches
    off: every score is computed anew (one batch of ``[x, x]`` would be deduplicated into one computation)."""
    scores = []
    for _ in range(scorers):
        config = ScoringConfig(domain_options={spec.name: options_without_caches(spec)})
        with Scorer(config, registry=registry) as scorer:
            scores += [scorer.score(sample) for _ in range(calls)]
    return scores


def assert_same_scores(scores: list[Score]) -> None:
    outcomes = {(s.reward, s.status, s.answer) for s in scores}
    assert len(outcomes) == 1, f"one sample, different scores across fresh scorers with caches off: {outcomes}"


def test_gold_example_gets_the_top_reward_deterministically(configured):
    spec, _ = configured
    scores = scores_from_fresh_scorers(spec, spec.example)
    assert scores[0].status is Status.OK, scores[0]
    assert scores[0].reward == spec.table[spec.top_outcome]
    assert_same_scores(scores)


class _CoinFlipDomain:
    """Deduplicates identical work in a batch and caches results, like the built-in domains, but decides
    by a (seeded) coin flip: the determinism check above must catch it."""

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

    spec = DomainSpec("acme.coinflip", _CoinFlipDomain, "a coin flip", TABLE,
                      example=Sample("coinflip", "<think>t</think> \\boxed{1}", reference="1"))
    registry: Registry[DomainSpec] = Registry("domain")
    registry.register(spec.name, spec, provider="acme")
    with Scorer(registry=registry) as scorer:  # the old check: one batch of [x, x] is decided once and passes
        first, second = scorer.score_batch([spec.example, spec.example])
    assert first == second
    with pytest.raises(AssertionError, match="different scores"):
        assert_same_scores(scores_from_fresh_scorers(spec, spec.example, registry=registry, calls=4))


class _StallingServer:
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
    def contacted(self) -> bool:
        return bool(self._held)

    def close(self) -> None:
        self._socket.close()
        for conn in self._held:
            conn.close()


TIGHT = Timeouts(math_parse_s=30, math_verify_s=30, math_hard_kill_s=1.0, sandbox_run_s=2.0, sandbox_test_s=1.0,
                 sandbox_cpu_s=1.0, judge_request_s=0.5, judge_total_s=1.5, judge_backoff_s=0.01,
                 judge_backoff_max_s=0.05, service_request_s=1.0)
#: Inputs that would run forever without a budget, for domains whose work is their own (the budget that bounds it).
HANGING = {
    "math": (Sample("math", "<think>t</think> \\boxed{9^{9^{9^{9^{9}}}}}", reference="3^{3^{3^{3^{3^{3}}}}}"),
             TIGHT.math_hard_kill_s),
    "code": (Sample("code", "<think>t</think>\n```python\ndef inc(x):\n    while True:\n        pass\n```",
                    tests={"assert": "assert inc(1) == 2", "entry_point": "inc"}),
             TIGHT.sandbox_run_s + TIGHT.sandbox_grace_s),
}
SLACK_S = 6.0  # process start-up on a busy machine; without a budget these would never return


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_domain_respects_its_time_budget(spec):
    """A hanging service (judges: a server that never answers) or a hanging input must come back within
    the domain's budget from ``Timeouts``, never stall the batch."""
    stalling = None
    if "judge" in spec.needs:
        stalling = _StallingServer()
        options: dict[str, Any] = {"judge": {"url": stalling.url, "model": "m", "max_retries": 1}}
        sample, budget = spec.example, TIGHT.judge_total_s
    elif spec.name in HANGING:
        options = {}
        sample, budget = HANGING[spec.name]
    else:
        pytest.skip(f"no hanging input known for {spec.name!r}: add one to HANGING")
    try:
        with Scorer(ScoringConfig(timeouts=TIGHT, domain_options={spec.name: options})) as scorer:
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
    if stalling is not None and stalling.contacted:
        assert score.status is Status.ERROR and score.reward is None, score  # a silent judge is never a reward


@pytest.mark.parametrize("response", ["", "no reasoning at all", "<think>unclosed"])
def test_format_violations_get_the_format_penalty(configured, response):
    spec, scorer = configured
    example = spec.example
    sample = Sample(spec.example.domain, response, reference=example.reference, prompt=example.prompt,
                    tests=example.tests, metadata=example.metadata)
    score = scorer.score(sample)
    assert score.status is Status.FORMAT_ERROR, score
    assert score.reward == spec.table["format_error"]


def test_missing_required_fields_are_errors_not_rewards(configured):
    spec, scorer = configured
    for field in spec.required_fields:
        if field == "response":
            continue
        record = {"domain": spec.example.domain, "response": spec.example.response, "id": "r1"}
        score = scorer.score(record)
        assert score.status is Status.ERROR and score.reward is None
        assert field in score.error and "r1" in score.error
