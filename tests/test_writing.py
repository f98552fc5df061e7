"""Writing domain: pairwise judge in both orders, flip = tie, reward table, failures."""
from __future__ import annotations

import itertools
import random

import pytest

from judge_server import JudgeServer, ScriptedEngine, free_port_with_nothing_listening
from judge_support import TEST_TIMEOUTS, pairwise_script, pairwise_texts, verdict_line
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
    biased = lambda user: "The first one.\n" + verdict_line(user, "[[A]]")  # noqa: E731
    with JudgeServer(ScriptedEngine(biased)) as server, writing_scorer(server.url) as scorer:
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


@pytest.mark.parametrize("reply", ["I like both.", "Text A.\n[[A]]", "x" * 5_000, "[[A]] is my verdict, I think."])
def test_a_reply_without_a_verdict_is_retried_then_the_responses_loss_never_unscored(reply):
    """Whatever the response makes the judge write (prose, a quote, a verdict without the nonce), the
    record is scored: a judge that answers without a verdict is the response's outcome, not ours."""
    with JudgeServer(ScriptedEngine(lambda user: reply)) as server, writing_scorer(server.url) as scorer:
        (score,) = scorer.score_batch([sample("Rain on tin.")])
        calls = server.faults.calls
    assert score.status is Status.OK and score.reward == -0.5 and score.components["outcome"] == "worse"
    assert "no verdict after 2 attempt" in score.components["verdict_problem"]
    assert calls == 4  # two orders, each asked twice (a new seed, never a cached repeat)


def test_no_verdict_in_one_order_counts_as_losing_that_order():
    def half(user: str) -> str:  # answers only when the reference is Text A (order 2), preferring Text B
        texts = pairwise_texts(user)
        return verdict_line(user, "[[B]]") if texts and texts[0] == REFERENCE else "hmm"

    with JudgeServer(ScriptedEngine(half)) as server, writing_scorer(server.url) as scorer:
        (score,) = scorer.score_batch([sample("Rain on tin, longer than it looks.")])
    assert (score.reward, score.components["outcome"], score.components["consistent"]) == (0.25, "tie", False)


def test_reference_is_cut_at_its_own_first_think_close(server, scorer):
    before = len(server.faults.bodies)
    scorer.score(sample("A line about rain.", reference="<think>draft: rain</think>\nRain taps.</think> more"))
    user = server.faults.bodies[before]["messages"][-1]["content"]
    assert "draft" not in user and "Rain taps.</think> more" in user


@pytest.mark.parametrize("first,second,tie_rule,mean", [
    ("A", "B", 1.0, 1.0), ("A", "C", 0.25, 0.625), ("C", "B", 0.25, 0.625), ("C", "C", 0.25, 0.25),
    ("B", "C", 0.25, -0.125), ("A", "A", 0.25, 0.25), ("B", "A", -0.5, -0.5)])
def test_order_combinations(first, second, tie_rule, mean):
    def script(user: str) -> str:
        texts = pairwise_texts(user)
        return verdict_line(user, f"[[{first if texts[1] == REFERENCE else second}]]")

    with JudgeServer(ScriptedEngine(script)) as server:
        for combination, expected in (("tie_on_disagreement", tie_rule), ("mean", mean)):
            with writing_scorer(server.url, order_combination=combination) as scorer:
                assert scorer.score(sample("Rain on tin.")).reward == pytest.approx(expected)


def test_a_response_too_long_for_the_judge_is_its_loss_not_unscored():
    with JudgeServer(ScriptedEngine(pairwise_script)) as server:
        with writing_scorer(server.url, judge_context_tokens=3_000, max_judge_tokens=512) as scorer:
            rng = random.Random(1)
            cjk = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(1_000))  # 3 bytes, 1-3 tokens each
            long, fine = scorer.score_batch([sample(cjk), sample("Rain on tin.")])
        assert server.faults.calls == 2  # only the short response went to the judge
    assert (long.status, long.reward, long.components["method"]) == (Status.OK, -0.5, "response_too_long_for_judge")
    assert fine.status is Status.OK


async def test_bad_unicode_affects_only_its_record(server):
    """At the domain itself (callers other than the Scorer, such as adapters, may pass any text)."""
    domain = WritingDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS, judge={"url": server.url, "model": "j"})
    scores = await domain.score_batch([sample("Rain \ud800 on tin."), sample("Rain on tin.", reference="Rain \udfff."),
                                       sample(REFERENCE + " And more.")])
    await domain.aclose()
    assert [s.status for s in scores] == [Status.FORMAT_ERROR, Status.ERROR, Status.OK]
    assert "reference" in scores[1].error and scores[2].reward == 1.0


def test_pairwise_verdict_parser():
    parse = lambda text, finish="stop": pairwise_verdict(JudgeReply(text, finish)).value  # noqa: E731
    assert parse("Reasoning...\n[[B]]") == "B"
    assert parse("Reasoning...\n**[[C]]**.\n") == "C"
    assert parse("[[A]] or [[B]]") is None
    assert parse("[[A]]", "length") is None
    assert parse("Verdict: A") is None
    assert parse("I pick [[A]].\nExplanation follows.") is None
    bound = lambda text: pairwise_verdict(JudgeReply(text), "ab12cd34ef56").value  # noqa: E731
    assert bound("Fine.\nVerdict ab12cd34ef56: [[B]]") == "B"
    assert bound("Fine.\n[[B]]") is None and bound("Verdict ab12cd34ef56:\n[[A]]") is None


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


@pytest.mark.parametrize("data_source", ["creative__writing__rl", "Creative__Writing__WritingPrompts", "writing_v2",
                                         "CREATIVE_WRITING"])
def test_verl_routes_the_authors_writing_data_sources(data_source):
    from mdreward.integrations.verl import DEFAULT_TABLE

    assert DEFAULT_TABLE.domain_for(data_source) == "writing"
