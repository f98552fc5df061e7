"""Every registered domain, built-in or plugin, must pass these."""
import pytest

from mdreward import Sample, Scorer, Status
from mdreward.registry import load_domains

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


def test_gold_example_gets_the_top_reward_deterministically(configured):
    spec, scorer = configured
    first, second = scorer.score_batch([spec.example, spec.example])
    assert first.status is Status.OK, first
    assert first.reward == spec.table[spec.top_outcome]
    assert (first.reward, first.status) == (second.reward, second.status)


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
