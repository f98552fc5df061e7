"""Invariants over arbitrary responses: the reward is a table value or null, scoring never raises,
and it is deterministic."""
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdreward import Sample, Score, Scorer, ScoringConfig, Status
from mdreward.domains.math import TABLE

FRAGMENTS = ["<think>", "</think>", "\\boxed{", "}", "{", "<answer>", "</answer>", "\\pm", " or ", "1", "x", "=",
             "\\frac{1}{2}", "^", "\\sqrt", "$", "\n", " "]
responses = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=14).map("".join)
references = st.sampled_from(["1", "\\frac{1}{2}", "x+1", "(1, 2)", "\\text{C}"])
#: Final answers that reach the equivalence checker (random responses mostly stop at the format rules).
answers = st.lists(st.sampled_from(["1", "2", "x", "+", "-", "\\frac{1}{2}", "\\sqrt{2}", "^", "0.5", "(", ")",
                                    ", ", "\\cdot", "\\pi"]), min_size=1, max_size=6).map("".join)


@pytest.fixture(scope="module")
def uncached_scorers():
    """Two independent scorers with the math cache off: every call computes its verdict anew."""
    config = ScoringConfig(domain_options={"math": {"cache_size": 0}})
    with Scorer(config) as first, Scorer(config) as second:
        yield first, second


def outcome(score: Score) -> tuple[Any, ...]:
    """A score without its timings."""
    components = {k: v for k, v in score.components.items() if not k.endswith("_s")}
    return score.reward, score.status, score.answer, score.error, components


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(response=responses, reference=references)
def test_math_reward_is_a_table_value_and_deterministic(uncached_scorers, response, reference):
    sample = Sample("math", response, reference=reference)
    one, other = uncached_scorers
    first = one.score(sample)
    assert outcome(first) == outcome(other.score(sample)) == outcome(one.score(sample))
    if first.status is Status.ERROR:
        assert first.reward is None and first.error
    else:
        assert TABLE.admits(first.reward)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=answers, reference=references)
def test_math_verdicts_are_the_same_in_independent_scorers_without_caches(uncached_scorers, answer, reference):
    """Each verdict is computed three times (two scorers, caches off): a checker that guesses fails this."""
    sample = Sample("math", f"<think>t</think> \\boxed{{{answer}}}", reference=reference)
    one, other = uncached_scorers
    first = one.score(sample)
    assert first.status is Status.OK, first
    assert outcome(first) == outcome(other.score(sample)) == outcome(one.score(sample))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.dictionaries(st.sampled_from(["domain", "response", "reference", "id", "tests", "metadata"]),
                              st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=2)),
                              max_size=6))
def test_arbitrary_records_never_raise_and_always_come_back(scorer, record):
    (score,) = scorer.score_batch([record])
    assert score.status in set(Status)
    assert (score.reward is None) == (score.status is Status.ERROR)
