"""Real benchmark data through the real sandbox: HumanEval (164) and MBPP test split (500).

Data comes from ../shared/data (never copied into the repo); these tests skip if it is absent.
"""
from __future__ import annotations

import pytest

from code_support import (HUMANEVAL, MBPP, SHAPES, humaneval_problems, humaneval_sample, mbpp_entry_point, mbpp_sample,
                          mbpp_test_split, reshaped)
from mdreward import Scorer, ScoringConfig, Status

#: MBPP test-split tasks whose reference solution does not pass here, each explained in docs/code.md.
MBPP_EXPLAINED_FAILURES = {
    123: "reference needs ~4-10 s of wall time for amicable_numbers_sum(9999) on a busy machine; judged on its CPU "
         "time it passes, but its CPU time alone can come near the 6 s budget on a slow machine",
}


@pytest.fixture(scope="module")
def scorer():
    with Scorer(ScoringConfig(domain_options={"code": {"workers": 2}})) as s:
        yield s


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="HumanEval data not present")
def test_every_humaneval_canonical_solution_scores_one(scorer):
    problems = humaneval_problems()
    assert len(problems) == 164
    scores = scorer.score_batch([humaneval_sample(p, p["canonical_solution"]) for p in problems])
    failed = {p["task_id"]: (s.reward, s.error or s.components.get("first_failure"))
              for p, s in zip(problems, scores) if s.reward != 1.0}
    assert not failed


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="HumanEval data not present")
def test_humaneval_return_none_bodies_score_minus_half(scorer):
    problems = humaneval_problems()
    scores = scorer.score_batch([humaneval_sample(p, "    return None\n") for p in problems])
    assert all(s.status is Status.OK for s in scores)
    assert [p["task_id"] for p, s in zip(problems, scores) if s.reward != -0.5] == []


@pytest.mark.skipif(not MBPP.exists(), reason="MBPP data not present")
def test_mbpp_reference_solutions_pass_except_the_explained_ones(scorer):
    rows = mbpp_test_split()
    assert len(rows) == 500
    scores = scorer.score_batch([mbpp_sample(r) for r in rows])
    assert all(s.status is Status.OK for s in scores), [s.error for s in scores if s.status is not Status.OK]
    failed = {r["task_id"] for r, s in zip(rows, scores) if s.reward != 1.0}
    assert failed <= set(MBPP_EXPLAINED_FAILURES)
    assert 367 not in failed  # the tests build trees of the candidate's own class: handles carry them
    assert len(failed) / len(rows) <= 0.002


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="HumanEval data not present")
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_humaneval_canonical_solutions_in_other_shapes_score_one(scorer, shape):
    problems = humaneval_problems()
    samples = [reshaped(humaneval_sample(p, p["canonical_solution"]), p["entry_point"], shape) for p in problems]
    scores = scorer.score_batch(samples)
    failed = {s.id: (r.reward, r.error or r.components.get("first_failure")) for s, r in zip(samples, scores)
              if r.reward != 1.0}
    assert not failed


@pytest.mark.skipif(not MBPP.exists(), reason="MBPP data not present")
def test_mbpp_reference_solutions_as_class_methods_pass(scorer):
    rows = [r for r in mbpp_test_split() if r["task_id"] not in MBPP_EXPLAINED_FAILURES]
    samples = [reshaped(mbpp_sample(r), mbpp_entry_point(r), "class_method") for r in rows]
    scores = scorer.score_batch(samples)
    assert {s.id: r.components.get("first_failure") for s, r in zip(samples, scores) if r.reward != 1.0} == {}
