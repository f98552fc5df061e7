"""Writing domain: pairwise judge in both orders, flip = tie, reward table, failures."""
from __future__ import annotations

import itertools

import pytest

from judge_server import JudgeServer, ScriptedEngine, free_port_with_nothing_listening
from judge_support import TEST_TIMEOUTS, pairwise_script
from mdreward import Sample, Scorer, ScoringConfig, Status
from mdreward.domains.writing import TABLE, WritingDomain, combine_orders
from mdreward.judges.base import JudgeReply
from mdreward.judges.verdicts import pairwise_verdict
from mdreward.registry import DomainUnavailable
from mdreward.types import FormatRules

REFERENCE = "Rain taps the window; the kettle answers."


def writing_scorer(url: str, **options) -> Scorer:
    judge = {"url": url, "model": "judge", "max_retries": 1}
    return Scorer(ScoringConfig(timeouts=TEST_TIMEOUTS, domain_options={"writing": {"judge": judge, **options}}))


def sample(text: str, reference: str = REFERENCE) -> Sample:
    return Sample("writing", f"<think>Write about rain.</think>\n{text}", reference=reference,
                  prompt="Write one line about rain.")


def test_combine_orders_table():
    expected = {("A", "B"): "better", ("B", "A"): "worse", ("C", "C"): "tie",
                ("A", "A"): "tie", ("B", "B"): "tie",  # flips with the order: position bias
                ("A", "C"): "tie", ("C", "B"): "tie", ("B", "C"): "tie", ("C", "A"): "tie"}
    for first, second in itertools.product("ABC", repeat=2):
        assert combine_orders(first, second) == expected[(first, second)]
    assert dict(TABLE.values) == {"better": 1.0, "tie": 0.25, "worse": -0.5, "format_error": -1.0}


@pytest.fixture(scope="module")
def server():
    with JudgeServer(ScriptedEngine(pairwise_script)) as s:
        yield s


@pytest.fixture(scope="module")
def scorer(server):
    with writing_scorer(server.url) as s:
        yield s


def test_better_tie_worse_through_both_orders(scorer, server):
    before = server.faults.calls
    longer, same_length, shorter = scorer.score_batch([
        sample(REFERENCE + " Steam curls, and the afternoon slows down."),
        sample("R" * len(REFERENCE)),
        sample("Rain."),
    ])
    assert server.faults.calls - before == 6  # two orders per record
    assert (longer.reward, longer.components["outcome"], longer.components["consistent"]) == (1.0, "better", True)
    assert (same_length.reward, same_length.components["outcome"]) == (0.25, "tie")
    assert (shorter.reward, shorter.components["outcome"]) == (-0.5, "worse")
    assert longer.components["verdict_response_first"] == "A"
    assert longer.components["verdict_reference_first"] == "B"


def test_the_response_is_text_a_then_text_b(server, scorer):
    before = len(server.faults.bodies)
    scorer.score(sample("A distinctive line about rain."))
    first, second = server.faults.bodies[before:before + 2]
    user_first, user_second = first["messages"][-1]["content"], second["messages"][-1]["content"]
    assert user_first.index("A distinctive line") < user_first.index(REFERENCE)
    assert user_second.index(REFERENCE) < user_second.index("A distinctive line")
    assert first["messages"][0]["role"] == "system" and first["temperature"] == 0.0


def test_a_position_biased_judge_earns_only_ties():
    with JudgeServer(ScriptedEngine(lambda user: "The first one. [[A]]")) as server, writing_scorer(server.url) as scorer:
        scores = scorer.score_batch([sample("Rain."), sample(REFERENCE * 3)])
    assert [s.reward for s in scores] == [0.25, 0.25]
    assert all(s.components["consistent"] is False for s in scores)


def test_format_errors():
    with JudgeServer(ScriptedEngine(pairwise_script)) as server, writing_scorer(server.url) as scorer:
        scores = scorer.score_batch([
            Sample("writing", "no think block at all", reference=REFERENCE),
            sample(""),
            sample(":"),
            sample("\x00\x01 broken"),
        ])
        assert server.faults.calls == 0
    assert [s.status for s in scores] == [Status.FORMAT_ERROR] * 4
    assert all(s.reward == -1.0 for s in scores)


def test_no_verdict_is_unscored_never_a_reward():
    replies = {"first": "I like both.", "bad-end": "[[A]] is my verdict, I think."}
    with JudgeServer(ScriptedEngine(lambda user: replies["first"])) as server, writing_scorer(server.url) as scorer:
        (score,) = scorer.score_batch([sample("Rain on tin.")])
    assert score.status is Status.ERROR and score.reward is None and "no verdict" in score.error
    assert pairwise_verdict(JudgeReply(replies["bad-end"])).value is None


def test_pairwise_verdict_parser():
    parse = lambda text, finish="stop": pairwise_verdict(JudgeReply(text, finish)).value  # noqa: E731
    assert parse("Reasoning...\n[[B]]") == "B"
    assert parse("Reasoning...\n**[[C]]**.\n") == "C"
    assert parse("[[A]] or [[B]]") is None
    assert parse("[[A]]", "length") is None
    assert parse("Verdict: A") is None
    assert parse("I pick [[A]].\nExplanation follows.") is None


def test_unreachable_judge_unscores_writing_only():
    url = f"http://127.0.0.1:{free_port_with_nothing_listening()}/v1"
    with writing_scorer(url) as scorer:
        scores = scorer.score_batch([sample("Rain on tin."), sample(":"),
                                     {"domain": "math", "response": "<think>x</think> \\boxed{1}", "reference": "1"}])
    assert scores[0].status is Status.ERROR and scores[0].reward is None and "judge failed" in scores[0].error
    assert (scores[1].reward, scores[2].reward) == (-1.0, 1.0)


def test_needs_a_judge():
    with pytest.raises(DomainUnavailable):
        WritingDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS)
    with pytest.raises(ValueError, match="text_b"):
        WritingDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS, judge={"url": "http://x/v1", "model": "m"},
                      user_template="{instruction} {text_a}")
