"""The in-process transformers backend with a tiny model built offline, and every judged domain on it."""
from __future__ import annotations

import pytest

from judge_support import tiny_judge
from mdreward import Sample, Scorer, ScoringConfig, Status
from mdreward.judges.base import JudgeReply, JudgeRequest
from mdreward.judges.verdicts import final_decision, pairwise_verdict


@pytest.fixture(scope="module")
def judge():
    return tiny_judge()


async def test_mixed_batch_keeps_order_and_is_deterministic(judge):
    requests = [JudgeRequest.completion("Final Decision", max_tokens=6),
                JudgeRequest.chat([("user", "hello")], max_tokens=6),
                JudgeRequest.completion("The quick brown fox", max_tokens=9),
                JudgeRequest.completion("Final Decision", max_tokens=6)]
    first = await judge.generate(requests)
    second = await judge.generate(list(reversed(requests)))
    assert [r.text for r in first] == [r.text for r in reversed(second)]
    assert first[0].text == first[3].text
    assert all(isinstance(r, JudgeReply) for r in first)


async def test_truncation_is_reported(judge):
    (reply,) = await judge.generate([JudgeRequest.completion("The quick brown fox", max_tokens=3)])
    assert reply.completion_tokens <= 3
    if reply.completion_tokens == 3:
        assert reply.finish_reason == "length" and reply.truncated


async def test_special_token_text_in_a_plain_prompt_stays_text(judge):
    (plain,) = await judge.generate([JudgeRequest.completion("<|im_end|>", max_tokens=1)])
    assert plain.prompt_tokens > 1  # split into ordinary tokens, not the end-of-turn control token


async def test_stop_strings_end_the_reply(judge):
    (free,) = await judge.generate([JudgeRequest.completion("The quick brown fox", max_tokens=12)])
    if len(free.text) > 4:
        stop = free.text[2:4]
        (stopped,) = await judge.generate([JudgeRequest.completion("The quick brown fox", max_tokens=12,
                                                                   stop=(stop,))])
        assert stop not in stopped.text and free.text.startswith(stopped.text)


def test_every_judged_domain_runs_on_the_tiny_model(judge):
    options = {"science": {"judge": judge, "max_judge_tokens": 16},
               "writing": {"judge": judge, "max_judge_tokens": 16},
               "writingbench": {"judge": judge, "max_judge_tokens": 16, "max_attempts": 2}}
    with Scorer(ScoringConfig(domain_options=options)) as scorer:
        science, writing, bench, fast = scorer.score_batch([
            Sample("science", "<think>t</think><answer>Nitrogen gas</answer>", reference="Nitrogen", prompt="Air?"),
            Sample("writing", "<think>t</think>Rain taps the roof.", reference="Rain falls.", prompt="Rain line."),
            Sample("writingbench", "<think>t</think>A note.", prompt="Write a note.",
                   metadata={"criteria": [{"name": "Clarity"}]}),
            Sample("science", "<think>t</think><answer>Nitrogen</answer>", reference="Nitrogen"),
        ])
    # Science: the verdict (if any) is read from the model's real output and scored by the table.
    assert science.status is Status.OK
    verdict = final_decision(JudgeReply(science.components["judge_output"]))
    if verdict.value == "Yes":
        assert science.reward == pytest.approx(1.0 - 0.05 * 4)
    else:
        assert science.reward == 0.0 and science.components["verdict_problem"]
    # Writing: a random model ends with no nonce-bound verdict: the response loses that order (scored, never
    # unscored), with the judge's outputs kept for inspection.
    assert writing.status is Status.OK and -0.5 <= writing.reward <= 1.0
    if "verdict_problem" in writing.components:
        assert pairwise_verdict(JudgeReply(writing.components["judge_output_response_first"])).value is None or \
            pairwise_verdict(JudgeReply(writing.components["judge_output_reference_first"])).value is None
    # WritingBench: gibberish is not JSON: retried, then the lowest score.
    assert bench.status is Status.OK and bench.reward == 1.0
    assert "no valid critic JSON after 2 attempt(s)" in bench.components["verdict_problems"]["Clarity"]
    assert fast.reward == 1.0 and fast.components["method"] == "identical"


async def test_a_wall_clock_stop_is_a_failure_not_a_truncated_answer(judge):
    """``max_time`` stops generation early: that is the judge running out of time (unscored), never
    ``length`` (which the domains read as the answer's own doing)."""
    from mdreward.judges.base import JudgeFailure
    from mdreward.judges.transformers_backend import TransformersJudge
    from mdreward.timeouts import Timeouts

    hurried = TransformersJudge(judge._model, judge._tokenizer, name="hurried", max_batch=4, num_threads=1,
                                timeouts=Timeouts(judge_request_s=1e-9))
    prompts = ["The quick brown fox", "Final Decision", "Rain falls", "verify if the student"]
    replies = await hurried.generate([JudgeRequest.completion(p, max_tokens=200) for p in prompts])
    for reply in replies:
        if isinstance(reply, JudgeReply):
            assert reply.finish_reason == "stop", reply  # only an end-of-sequence may stop it this early
    assert any(isinstance(r, JudgeFailure) and "out of time" in r.error for r in replies)


async def test_one_request_over_the_context_fails_alone(judge):
    from mdreward.judges.base import JudgeFailure
    from mdreward.judges.transformers_backend import TransformersJudge

    small = TransformersJudge(judge._model, judge._tokenizer, name="small", max_batch=4, num_threads=1,
                              max_prompt_tokens=64, timeouts=judge.timeouts)
    replies = await small.generate([JudgeRequest.completion("Final Decision", max_tokens=3),
                                    JudgeRequest.completion("rain " * 200, max_tokens=3),
                                    JudgeRequest.completion("The quick brown fox", max_tokens=3)])
    assert [type(r) for r in replies] == [JudgeReply, JudgeFailure, JudgeReply]
    assert small.count_tokens("rain " * 200) > 64
