"""The adversarial suite: hostile code must never earn the pass reward; controls must.

Cases live in ``cases/code_adversarial.jsonl`` (one per line: id, category, code, tests, reward,
why). The suite only grows. All cases run as one batch through the real scorer and the local
bubblewrap sandbox, mixed together, so a case that crashes or kills things would also show up as
a wrong reward on its neighbours.
"""
from __future__ import annotations

import os

import pytest

from code_support import code_sample, response_with
from conftest import load_cases
from mdreward import Sample, Scorer, ScoringConfig, Status
from mdreward.sandbox import SandboxLimits
from mdreward.timeouts import Timeouts

CASES = load_cases("code_adversarial.jsonl")
CANARY = "MDREWARD_CANARY"
FAST = Timeouts(sandbox_test_s=2.0, sandbox_run_s=4.0, sandbox_cpu_s=2.0)


@pytest.fixture(scope="module")
def scored():
    os.environ[CANARY] = "host-secret-canary"
    try:
        options = {"code": {"workers": 2, "limits": SandboxLimits(output_bytes=1 << 20)}}
        with Scorer(ScoringConfig(timeouts=FAST, domain_options=options)) as scorer:
            scores = scorer.score_batch([code_sample(c["code"], c["tests"], c["id"]) for c in CASES])
            # the same scorer still works after every attack above (slots restart transparently)
            after = scorer.score(code_sample("def add(a, b):\n    return a + b\n",
                                             {"assert": "assert add(2, 2) == 4", "entry_point": "add"}))
    finally:
        os.environ.pop(CANARY, None)
    return dict(zip((c["id"] for c in CASES), scores)), after


@pytest.fixture(scope="module")
def plain_scorer():
    with Scorer(ScoringConfig(timeouts=FAST, domain_options={"code": {"workers": 1}})) as scorer:
        yield scorer


def test_the_suite_is_large_and_mostly_hostile():
    assert len(CASES) >= 30
    assert sum(c["reward"] == -0.5 for c in CASES) >= 30
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case_earns_its_reward(scored, case):
    score = scored[0][case["id"]]
    assert score.status is Status.OK, (case["why"], score)
    assert score.reward == case["reward"], (case["why"], score.components.get("first_failure"))
    assert score.components["correct"] is (case["reward"] == 1.0)


def test_scorer_is_healthy_after_the_attacks(scored):
    assert scored[1].reward == 1.0


@pytest.mark.parametrize("response, reason", [
    ("<think>no code</think> The answer is 42.", "no fenced python code block"),
    ("<think>plan</think>\n```javascript\nfunction add(a, b) { return a + b }\n```", "no fenced python code block"),
    ("```python\ndef add(a, b):\n    return a + b\n```", "</think>"),
    ("<think>plan</think>\n```python\ndef add(a, b)\n    return a + b\n```", "does not parse"),
    ("<think>plan</think>\n```python\n\n```", "no fenced python code block"),
    ("<think>```python\ndef add(a, b):\n    return a + b\n```</think> done", "no fenced python code block"),
])
def test_format_violations(plain_scorer, response, reason):
    score = plain_scorer.score(Sample("code", response, tests={"assert": "assert add(1, 2) == 3"}))
    assert score.status is Status.FORMAT_ERROR
    assert score.reward == -1.0
    assert reason in score.error


def test_only_the_last_python_block_counts(plain_scorer):
    tests = {"assert": "assert add(1, 2) == 3", "entry_point": "add"}
    right, wrong = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return 0\n"
    last_wrong = plain_scorer.score(Sample("code", response_with(right) + "\nfixed:\n```python\n" + wrong + "```", tests=tests))
    last_right = plain_scorer.score(Sample("code", response_with(wrong) + "\nfixed:\n```py\n" + right + "```", tests=tests))
    assert (last_wrong.reward, last_right.reward) == (-0.5, 1.0)


class TestOnlyInfrastructureIsUnscored:
    """Unscored beats -0.5 in every RL framework, so nothing candidate code does may reach it: every
    hostile case, run with no retry to hide a slot failure behind, comes out scored, as -0.5."""

    HOSTILE = [c for c in CASES if c["reward"] == -0.5]

    @pytest.fixture(scope="class")
    def without_retries(self):
        from mdreward.sandbox import LocalSandbox
        with LocalSandbox(workers=2, timeouts=FAST, limits=SandboxLimits(output_bytes=1 << 20), retries=0) as sandbox:
            options = {"code": {"sandbox": sandbox}}
            with Scorer(ScoringConfig(timeouts=FAST, domain_options=options)) as scorer:
                scores = scorer.score_batch([code_sample(c["code"], c["tests"], c["id"]) for c in self.HOSTILE])
            yield dict(zip((c["id"] for c in self.HOSTILE), scores)), sandbox.metrics()

    @pytest.mark.parametrize("case", HOSTILE, ids=[c["id"] for c in HOSTILE])
    def test_candidate_behaviour_is_scored_never_unscored(self, without_retries, case):
        score = without_retries[0][case["id"]]
        assert score.status is Status.OK and score.reward == -0.5, (case["why"], score)

    def test_no_candidate_broke_a_slot_during_its_run(self, without_retries):
        assert without_retries[1].get("restarts_failed", 0) == 0, without_retries[1]
