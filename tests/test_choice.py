"""The multiple-choice letter rule (case table) and the ``choice`` domain through the Scorer."""
from __future__ import annotations

import pytest

from conftest import load_cases
from mdreward import Sample, Status
from mdreward.extract import ChoiceAnswer, FormatViolation, choice_letter

CASES = load_cases("choice_letters.jsonl")
OPTIONS = ["Neon", "Argon", "Helium", "Krypton"]


@pytest.mark.parametrize("case", CASES, ids=[f"{c['source']}:{c['note']}" for c in CASES])
def test_letter_case_table(case):
    letters = "ABCDEFGHIJ"[:len(case["options"])] if case["options"] else "ABCDEFGHIJ"
    found = choice_letter(case["answer"], case["options"], letters)
    if case["expected"] is None:
        assert isinstance(found, FormatViolation), found
    else:
        assert isinstance(found, ChoiceAnswer), found
        assert (found.letter, found.is_hedge) == (case["expected"], case["hedge"])


def choice(response: str, reference: str = "B", options: list[str] | None = OPTIONS, **extra) -> Sample:
    metadata = {"options": options} if options is not None else {}
    return Sample("choice", response, reference=reference, id="q1", metadata=metadata, **extra)


def test_domain_rewards(scorer):
    right, wrong, hedge, outside, nothing = scorer.score_batch([
        choice("<think>Argon is 0.9% of air.</think> \\boxed{B}"),
        choice("<think>Guess.</think> Answer: C"),
        choice("<think>Unsure.</think> \\boxed{B} or \\boxed{C}"),
        choice("<think>Pick one.</think> \\boxed{F}"),
        choice("<think>Hmm.</think> It is Argon."),
    ])
    assert (right.reward, right.components["correct"]) == (1.0, True)
    assert (wrong.reward, wrong.components["correct"]) == (0.0, False)
    assert (hedge.reward, hedge.components["method"], hedge.components["candidates"]) == (0.0, "hedge", ["B", "C"])
    assert (outside.reward, outside.components["method"]) == (0.0, "not_an_option")
    assert nothing.status is Status.FORMAT_ERROR and nothing.reward == -1.0


def test_reasoning_inside_think_is_not_read(scorer):
    score = scorer.score(choice("<think>Option C? The answer is C... no.</think> Final answer: B"))
    assert score.reward == 1.0 and score.components["candidates"] == ["B"]


@pytest.mark.parametrize("reference, options, error", [
    ("Argon", OPTIONS, "field 'reference' must be one option letter"),
    ("E", OPTIONS, "names none of the 4 options"),
    ("B", "Neon, Argon", "metadata.options must be a list"),
    ("B", ["only one"], "2 to 10 options"),
])
def test_bad_records_are_unscored_whatever_the_response(scorer, reference, options, error):
    score = scorer.score(choice("<think>x</think> \\boxed{B}", reference=reference, options=options))
    assert score.status is Status.ERROR and score.reward is None
    assert error in score.error and "q1" in score.error


def test_reference_letter_forms_and_no_options(scorer):
    assert scorer.score(choice("<think>x</think> \\boxed{b}", reference="(B)", options=None)).reward == 1.0
    assert scorer.score(choice("<think>x</think> \\boxed{J}", reference="j", options=None)).reward == 1.0


HOSTILE = {
    "answer phrases": "answer " * 28_000,
    "unterminated boxes": "\\boxed{" * 28_000,
    "bare boxes": "\\boxed " * 25_000,
    "capital letters": "A " * 100_000,
    "articles": "A cat " * 33_000,
    "hedged phrases": "Answer: A or " * 15_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_extraction_stays_linear_on_hostile_answers(name):
    """200k-character answers (the response cap) finish in well under the seconds a quadratic scan takes."""
    import time

    from mdreward.extract import final_answer

    text = HOSTILE[name]
    started = time.perf_counter()
    choice_letter(text, OPTIONS, "ABCD")
    final_answer(text)
    assert time.perf_counter() - started < 10
