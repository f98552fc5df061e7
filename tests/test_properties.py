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


def _math500_final_answers() -> list[str]:
    import json
    import os
    from pathlib import Path

    from conftest import SHARED_DATA
    from mdreward.extract import boxed_contents

    path = Path(os.environ.get("MDREWARD_SHARED_DATA", SHARED_DATA)) / "math500" / "test.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is not there")
    texts = set()
    for line in path.read_text().splitlines():
        problem = json.loads(line)
        texts.add(problem["answer"])
        boxes = boxed_contents(problem["solution"])
        if boxes:
            texts.add(boxes[-1])
    return sorted(texts)


def test_presentation_normalization_never_changes_what_math_verify_parses():
    """Over every MATH500 reference and the final answer of its worked solution, Math-Verify parses the
    normalized text to the same value as the original (row separators ``\\\\``, ``\\text{}`` words, thousands)."""
    from math_verify import parse
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    from mdreward.domains.math import _clean

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    changed = []
    for text in _math500_final_answers():
        original, normalized = parse(f"${text}$", configs), parse(f"${_clean(text)}$", configs)
        if [str(v) for v in original[:1]] != [str(v) for v in normalized[:1]]:
            changed.append((text, _clean(text), original[:1], normalized[:1]))
    assert not changed, changed


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.sampled_from(["1", "-2", "x", "\\frac{1}{2}"]), min_size=2, max_size=4),
       spacing=st.lists(st.sampled_from(["", " ", "  ", "\\,", "\\ ", "\\!", "\\;", "\n"]), min_size=8, max_size=8))
def test_normalization_keeps_every_row_separator(rows, spacing):
    from mdreward.domains.math import _clean

    body = "".join(row + spacing[i] + "\\\\" + spacing[-1 - i] for i, row in enumerate(rows[:-1])) + rows[-1]
    text = "\\begin{pmatrix}" + body + "\\end{pmatrix}"
    assert _clean(text).count("\\\\") == len(rows) - 1, (text, _clean(text))
