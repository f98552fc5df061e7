"""Multiple choice: the option letter after ``</think>`` must be the reference letter.

The letter comes from ``extract.choice_letter`` (one documented rule, docs/choice.md), with the
record's ``metadata["options"]`` blanked out of the answer so quoted option text is never read as
a letter. Several different letters are a hedge (wrong); no letter at all is a format error.
GPQA-diamond and SuperGPQA evaluation items use this domain, so a benchmark score and an RL
reward come from the same scorer.

Rewards (the paper's science-QA table; a one-letter answer has no length penalty): correct 1.0,
wrong 0.0, invalid format -1.0.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..extract import OPTION_LETTERS as LETTERS
from ..extract import FormatViolation, choice_letter, split_think
from ..registry import DomainSpec, RuleDomain
from ..types import RewardTable, Sample, Score

TABLE = RewardTable({"correct": 1.0, "wrong": 0.0, "format_error": -1.0})
_REFERENCE = re.compile(r"^\(?\s*([A-Ja-j])\s*\)?\.?$")


def record_letters(sample: Sample) -> tuple[str, str, list[str]] | str:
    """(reference letter, valid letters, option texts) of a record, or why the record is bad."""
    options: Any = sample.metadata.get("options", [])
    if not isinstance(options, Sequence) or isinstance(options, str) or not all(isinstance(o, str) for o in options):
        return "metadata.options must be a list of option texts"
    if options and not 2 <= len(options) <= len(LETTERS):
        return f"metadata.options must have 2 to {len(LETTERS)} options, got {len(options)}"
    letters = LETTERS[:len(options)] if options else LETTERS
    match = _REFERENCE.match((sample.reference or "").strip())
    if not match:
        return f"field 'reference' must be one option letter A-J, got {sample.reference!r}"
    reference = match.group(1).upper()
    if reference not in letters:
        return f"field 'reference' {reference!r} names none of the {len(options)} options"
    return reference, letters, list(options)


class ChoiceDomain(RuleDomain):
    name = "choice"

    def score_one(self, sample: Sample) -> Score:
        record = record_letters(sample)
        if isinstance(record, str):
            return Score.unscored(f"{sample.where()}: {record}")
        reference, letters, options = record
        split = split_think(sample.response, self.format_rules)
        if isinstance(split, FormatViolation):
            return Score.format_error(self.table["format_error"], split.reason)
        found = choice_letter(split.after, options, letters)
        if isinstance(found, FormatViolation):
            return Score.format_error(self.table["format_error"], found.reason)
        components: Mapping[str, Any] = {"format_ok": True, "extracted_answer": found.letter, "source": found.source,
                                         "candidates": list(found.candidates)}
        if found.is_hedge:
            return Score.ok(self.table["wrong"], answer=found.letter, correct=False, method="hedge", **components)
        correct = found.letter == reference
        method = "letter" if found.letter in letters else "not_an_option"
        return Score.ok(self.table["correct" if correct else "wrong"], answer=found.letter, correct=correct,
                        method=method, **components)


spec = DomainSpec(
    name="choice",
    factory=ChoiceDomain,
    description="Multiple choice: one option letter (\\boxed{X}, 'Answer: X', or the last line; option text never "
                "read as a letter; several letters are a hedge) must equal the reference letter.",
    table=TABLE,
    required_fields=("response", "reference"),
    example=Sample(domain="choice", response="<think>Argon is 0.93% of air, more than neon or helium.</think> "
                   "The answer is \\boxed{B}.", reference="B",
                   prompt="Which noble gas is the most abundant in Earth's atmosphere?\n\nA) Neon\nB) Argon\nC) Helium",
                   metadata={"options": ["Neon", "Argon", "Helium"]}),
)
