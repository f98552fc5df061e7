"""Table question answering for mdreward (HiTab): a number, a text, or a ``|``-separated list of them.

The answer is the last ``<answer>`` block, else the last ``\\boxed{}``, after ``</think>`` (from
``mdreward.extract``). Rewards follow Reasoning360/Guru's ``table__hitab`` rule (README): lower-cased,
a reference with ``|`` is an unordered list that must have as many items as the answer and match item
by item; otherwise the one answer must match. Matching: two numbers match when they are the same number
however written (``1,234`` = ``1234`` = ``1234.0``; ``%``, ``$`` and LaTeX unit text are dropped, as
Guru's normaliser drops them), within float noise (9 significant digits); a rounded number does not
match (``12.3`` is not ``12.34``). Texts match after dropping spaces, ``\\text{}`` wrappers and a final
full stop. No partial credit: correct 1.0, wrong 0.0; no final answer is a format error (-1.0);
several different final answers are a hedge (0.0).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from mdreward import DomainSpec, RewardTable, RuleDomain, Sample, Score
from mdreward.extract import FormatViolation, final_answer_of

TABLE = RewardTable({"correct": 1.0, "wrong": 0.0, "format_error": -1.0})
LIST_SEPARATOR = "|"
#: Answers longer than this are compared as text without number parsing (no model answer is that long).
MAX_ITEM_CHARS = 2_000

_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_DROPPED = ("\\%", "%", "\\$", "$", "\\left", "\\right", "\\,", "\\!", "\\;", "~")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")
_UNIT_AFTER_NUMBER = re.compile(r"^([-+]?[\d.,]+)\\(?:text|mathrm)\s*\{[^{}]*\}$")
_FRACTION = re.compile(r"^([-+]?\d+)/(\d+)$|^\\[dt]?frac\{([-+]?\d+)\}\{(\d+)\}$")


def number_value(text: str) -> float | None:
    """The number a cleaned answer item spells, or None (thousands commas allowed, ``a/b`` fractions)."""
    fraction = _FRACTION.match(text)
    if fraction:
        numerator, denominator = (fraction.group(1), fraction.group(2)) if fraction.group(1) else fraction.group(3, 4)
        return int(numerator) / int(denominator) if int(denominator) else None
    if not any(c.isdigit() for c in text) or not _NUMBER.fullmatch(text):
        return None
    return float(text.replace(",", ""))


def item_key(item: str) -> tuple[str, str]:
    """What an answer item is compared by: ("number", 9 significant digits) or ("text", squashed text)."""
    text = item.strip().casefold()
    if len(text) > MAX_ITEM_CHARS:
        return "text", text
    unit = _UNIT_AFTER_NUMBER.match(text.replace(" ", ""))
    if unit:
        text = unit.group(1)
    for token in _DROPPED:
        text = text.replace(token, "")
    text = _WRAPPER.sub(lambda m: m.group(1), text)
    text = re.sub(r"\s+", "", text).rstrip(".")
    value = number_value(text)
    if value is not None:
        return "number", f"{value:.9g}"
    return "text", text


def items(text: str) -> list[tuple[str, str]]:
    return [item_key(part) for part in text.split(LIST_SEPARATOR)]


class TableDomain(RuleDomain):
    name = "table"

    def score_one(self, sample: Sample) -> Score:
        reference = (sample.reference or "").strip()
        if not reference or any(not part.strip() for part in reference.split(LIST_SEPARATOR)):
            return Score.unscored(f"{sample.where()}: field 'reference' must be an answer or 'a|b|c' answers, "
                                  f"got {sample.reference!r}")
        found = final_answer_of(sample.response, self.format_rules)
        if isinstance(found, FormatViolation):
            return Score.format_error(self.table["format_error"], found.reason)
        components: dict[str, Any] = {"format_ok": True, "extracted_answer": found.text, "source": found.source}
        if found.is_ambiguous:
            return Score.ok(self.table["wrong"], answer=found.text, correct=False, method="hedge", **components)
        want, got = items(reference), items(found.text)
        method = "list" if len(want) > 1 else want[0][0]
        correct = Counter(want) == Counter(got)
        return Score.ok(self.table["correct" if correct else "wrong"], answer=found.text, correct=correct,
                        method=method, **components)


spec = DomainSpec(
    name="table",
    factory=TableDomain,
    description="Table QA (HiTab): the final answer must equal the reference: the same number however written, "
                "the same text, or the same '|'-separated items in any order (Guru's rule).",
    table=TABLE,
    required_fields=("response", "reference"),
    example=Sample(domain="table", reference="12.5|1,024",
                   prompt="Which two values in the 2019 column exceed 10?",
                   response="<think>Rows 3 and 7 of the 2019 column: 1024 and 12.5.</think> \\boxed{1024 | 12.5}"),
    data_sources=("table__hitab*", "hitab*", "*/hitab*"),
)
