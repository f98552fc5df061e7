"""Invariants over arbitrary responses: the reward is a table value or null, scoring never raises,
and it is deterministic."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdreward import Sample, Status
from mdreward.domains.math import TABLE

FRAGMENTS = ["<think>", "</think>", "\\boxed{", "}", "{", "<answer>", "</answer>", "\\pm", " or ", "1", "x", "=",
             "\\frac{1}{2}", "^", "\\sqrt", "$", "\n", " "]
responses = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=14).map("".join)
references = st.sampled_from(["1", "\\frac{1}{2}", "x+1", "(1, 2)", "\\text{C}"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(response=responses, reference=references)
def test_math_reward_is_a_table_value_and_deterministic(scorer, response, reference):
    sample = Sample("math", response, reference=reference)
    first, second = scorer.score_batch([sample, sample])
    assert first == second
    if first.status is Status.ERROR:
        assert first.reward is None and first.error
    else:
        assert TABLE.admits(first.reward)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.dictionaries(st.sampled_from(["domain", "response", "reference", "id", "tests", "metadata"]),
                              st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=2)),
                              max_size=6))
def test_arbitrary_records_never_raise_and_always_come_back(scorer, record):
    (score,) = scorer.score_batch([record])
    assert score.status in set(Status)
    assert (score.reward is None) == (score.status is Status.ERROR)
