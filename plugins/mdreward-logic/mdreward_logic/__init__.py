"""Logic puzzles for mdreward: Zebra puzzles (the answer is a table) and ordering puzzles (a sequence).

The reference decides the kind: a JSON object ``{"header": [...], "rows": [[...], ...]}`` is a Zebra
puzzle, a JSON list of names is an ordering puzzle. The answer is the last ``<answer>...</answer>``
block after ``</think>`` (from ``mdreward.extract``), read as JSON or a Python literal.

Rewards follow Reasoning360/Guru (README): Zebra earns the fraction of cells of the reference table
that the answer gets right at the same row and column (a table missing a row or cell the reference
has earns 0.0); ordering earns 1.0 for the same sequence (names compared case-insensitively), else
0.0. No answer block, or one that is not a table/list, is a format error (-1.0); several different
answer blocks are a hedge (0.0).
"""
from __future__ import annotations

import ast
import json
from typing import Any

from mdreward import DomainSpec, RewardTable, RuleDomain, Sample, Score
from mdreward.extract import FinalAnswer, FormatViolation, final_answer_of

TABLE = RewardTable({"correct": 1.0, "wrong": 0.0, "format_error": -1.0}, continuous=("cells_right", 0.0, 1.0))
#: Answers longer than this are not parsed (a Zebra table of 10 x 10 cells is far shorter).
MAX_ANSWER_CHARS = 20_000

Grid = tuple[list[str], list[list[Any]]]


def parse_literal(text: str) -> Any:
    """JSON, else a Python literal; ``None`` when the text is neither (or too long or too deep to read)."""
    if len(text) > MAX_ANSWER_CHARS:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def reference_puzzle(sample: Sample) -> Grid | list[str] | str:
    """The Zebra grid or the ordering of a record, or why the reference is unusable."""
    try:
        value = json.loads(sample.reference or "")
    except ValueError:
        return "field 'reference' must be JSON: a {\"header\", \"rows\"} table or a list of names"
    if isinstance(value, dict):
        header, rows = value.get("header"), value.get("rows")
        if (isinstance(header, list) and header and isinstance(rows, list) and rows
                and all(isinstance(r, list) and len(r) == len(header) for r in rows)):
            return header, rows
        return "a Zebra reference needs a non-empty 'header' and 'rows' of the header's length"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [v.strip().casefold() for v in value]
    return "field 'reference' must be a {\"header\", \"rows\"} table or a non-empty list of names"


def cells_right(answer: Any, reference: Grid) -> int | None:
    """How many reference cells the answer has at the same row and column; None when it lacks one."""
    _, rows = reference
    given = answer.get("rows") if isinstance(answer, dict) else None
    if not isinstance(given, list) or len(given) < len(rows):
        return None
    right = 0
    for want_row, got_row in zip(rows, given):
        if not isinstance(got_row, list) or len(got_row) < len(want_row):
            return None
        right += sum(1 for want, got in zip(want_row, got_row) if type(want) is type(got) and want == got)
    return right


def as_names(answer: Any) -> list[str] | None:
    """An ordering answer as a list of names (a JSON/Python list, or ``[a, b, c]`` with bare names)."""
    if isinstance(answer, (list, tuple)) and all(isinstance(a, str) for a in answer):
        return [a.strip().casefold() for a in answer]
    return None


def bare_list(text: str) -> list[str] | None:
    """``[a, b, c]`` with unquoted names (Guru's parser reads these too)."""
    inner = text.strip()
    if not (inner.startswith("[") and inner.endswith("]")) or len(inner) > MAX_ANSWER_CHARS:
        return None
    names = [part.strip().strip("'\"").strip() for part in inner[1:-1].split(",")]
    return names if all(names) and not any(c in n for n in names for c in "[]{}") else None


class LogicDomain(RuleDomain):
    name = "logic"

    def score_one(self, sample: Sample) -> Score:
        reference = reference_puzzle(sample)
        if isinstance(reference, str):
            return Score.unscored(f"{sample.where()}: {reference}")
        found = final_answer_of(sample.response, self.format_rules)
        if isinstance(found, FormatViolation):
            return Score.format_error(self.table["format_error"], found.reason)
        if found.source != "answer_tag":
            return Score.format_error(self.table["format_error"], "the answer must be in an <answer> block")
        if isinstance(reference, list):
            return self._ordering(found, reference)
        return self._zebra(found, reference)

    def _ordering(self, found: FinalAnswer, reference: list[str]) -> Score:
        names = as_names(parse_literal(found.text))
        names = names if names is not None else bare_list(found.text)
        if names is None:
            return Score.format_error(self.table["format_error"], "the <answer> block is not a list of names",
                                      extracted_answer=found.text[:200])
        components: dict[str, Any] = {"format_ok": True, "puzzle": "ordering", "extracted_answer": found.text}
        if found.is_ambiguous:
            return Score.ok(self.table["wrong"], answer=found.text, correct=False, method="hedge", **components)
        correct = [n.casefold() for n in names] == reference
        return Score.ok(self.table["correct" if correct else "wrong"], answer=found.text, correct=correct,
                        method="sequence", **components)

    def _zebra(self, found: FinalAnswer, reference: Grid) -> Score:
        answer = parse_literal(found.text)
        if not isinstance(answer, dict):
            return Score.format_error(self.table["format_error"], "the <answer> block is not a table object",
                                      extracted_answer=found.text[:200])
        components: dict[str, Any] = {"format_ok": True, "puzzle": "zebra", "extracted_answer": found.text}
        if found.is_ambiguous:
            return Score.ok(self.table["wrong"], answer=found.text, correct=False, method="hedge", **components)
        total = len(reference[1]) * len(reference[0])
        right = cells_right(answer, reference)
        if right is None:
            return Score.ok(self.table["wrong"], answer=found.text, correct=False, method="incomplete_table",
                            cells_right=0, cells=total, **components)
        if right == total:
            return Score.ok(self.table["correct"], answer=found.text, correct=True, method="cells", cells_right=right,
                            cells=total, **components)
        return Score.ok(self.table["wrong"] + (self.table["correct"] - self.table["wrong"]) * right / total,
                        answer=found.text, correct=False, method="cells", cells_right=right, cells=total,
                        **components)


_EXAMPLE_TABLE = {"header": ["House", "Name", "Pet"], "rows": [["1", "Arnold", "cat"], ["2", "Eric", "dog"]]}

spec = DomainSpec(
    name="logic",
    factory=LogicDomain,
    description="Logic puzzles: a Zebra table in <answer> earns its fraction of right cells (Guru's rule); an "
                "ordering list earns 1 only when it is the reference sequence.",
    table=TABLE,
    required_fields=("response", "reference"),
    example=Sample(domain="logic", reference=json.dumps(_EXAMPLE_TABLE),
                   prompt="Two houses, 1 and 2. Eric lives in house 2. Arnold keeps a cat; the other person a dog.",
                   response="<think>Eric is in 2, so Arnold is in 1 with the cat; Eric has the dog.</think>\n"
                            f"<answer>{json.dumps(_EXAMPLE_TABLE)}</answer>"),
    data_sources=("logic__zebra_puzzle*", "logic__ordering_puzzle*", "zebra_puzzle*", "ordering_puzzle*"),
    reference_format="json",
)
