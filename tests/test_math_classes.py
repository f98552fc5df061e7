"""Whole classes of the round-2 math false passes, generated rather than quoted: every hedge connector between two
different values, every label or structure around a near-miss number, every rearrangement of a word, every
false chain. None of them may earn the correct reward."""
from __future__ import annotations

import itertools
import random

import pytest

from mdreward import Sample, Scorer

CONNECTORS = [r"\land", r"\wedge", r"\lor", r"\vee", r"\cup", r"\cap", "|", r"\mid", r"\setminus", r"\to",
              r"\Rightarrow", r"\implies", r"\Leftrightarrow", r"\text{ or possibly }", r"\text{ resp. }",
              r"\text{ or }", r"\quad"]
LABELS = ["x = ", "p = ", "y=", "a_1 = ", r"\text{answer} = "]
NEAR_MISSES = [  # (reference, a value that is different but within any float tolerance)
    (r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}"),
    (r"3 \cdot 10^{-17}", r"2 \cdot 10^{-17}"),
    (r"\frac{1}{2^{61}}", r"1/2^{60}"),
    (r"100000000000000000001", r"100000000000000000002"),
    (r"1 + 10^{-30}", r"1 + 2 \cdot 10^{-30}"),
]
STRUCTURES = ["({v}, 1)", r"\{{{v}, 7\}}", "{v} + 3", "2{v}", "[{v}, 2]"]


def _wrap(answer: str) -> str:
    return f"<think>work</think> \\boxed{{{answer}}}"


@pytest.fixture(scope="module")
def scorer():
    with Scorer() as s:
        yield s


def _correct(scorer: Scorer, samples: list[Sample]) -> list[tuple[str, str]]:
    scores = scorer.score_batch(samples)
    return [(s.response, s.reference or "") for s, score in zip(samples, scores) if score.components.get("correct")]


def test_no_connector_between_two_values_passes_as_either(scorer):
    rng = random.Random(7)
    samples = []
    for connector in CONNECTORS:
        a, b = rng.sample(range(2, 99), 2)
        samples.append(Sample("math", _wrap(f"{a} {connector} {b}"), reference=str(b)))
        samples.append(Sample("math", _wrap(f"{a} {connector} {b}"), reference=str(a)))
    assert _correct(scorer, samples) == []


def test_near_misses_fail_behind_every_label_and_inside_every_structure(scorer):
    samples = []
    for (reference, near), label in itertools.product(NEAR_MISSES, LABELS):
        samples.append(Sample("math", _wrap(label + near), reference=reference))
    for (reference, near), shape in itertools.product(NEAR_MISSES, STRUCTURES):
        samples.append(Sample("math", _wrap(shape.format(v=near)), reference=shape.format(v=reference)))
    assert _correct(scorer, samples) == []
    # the same shapes with the right value still pass (the guard decides from the numbers, not the shape)
    right = [Sample("math", _wrap(label + reference), reference=reference) for (reference, _), label
             in itertools.product(NEAR_MISSES, LABELS)]
    right += [Sample("math", _wrap(shape.format(v=reference)), reference=shape.format(v=reference))
              for (reference, _), shape in itertools.product(NEAR_MISSES, STRUCTURES)]
    assert len(_correct(scorer, right)) == len(right)


@pytest.mark.parametrize("word", ["yes", "No", "ABC", "true", "odd", "Monday", "stop"])
def test_no_rearrangement_of_a_word_equals_it(scorer, word):
    others = {"".join(p) for p in itertools.permutations(word)} - {word, word.lower(), word.upper()}
    samples = [Sample("math", _wrap(rf"\text{{{other}}}"), reference=word) for other in sorted(others)[:12]]
    samples += [Sample("math", _wrap(other), reference=word) for other in sorted(others)[:12]]
    assert _correct(scorer, samples) == []


def test_a_chain_with_a_false_link_is_wrong_whatever_its_last_value(scorer):
    rng = random.Random(11)
    samples = []
    for _ in range(12):
        a, b = rng.sample(range(2, 50), 2)
        samples.append(Sample("math", _wrap(f"x = {a} = {b}"), reference=str(b)))
        samples.append(Sample("math", _wrap(f"n = {a}+{a} = {2 * a + 1}"), reference=str(2 * a + 1)))
    assert _correct(scorer, samples) == []
    true_chain = Sample("math", _wrap("n = 2+2 = 4"), reference="4")
    assert scorer.score(true_chain).components.get("correct") is True
