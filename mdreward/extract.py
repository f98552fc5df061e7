"""The one extraction module: think blocks, final answers, code blocks.

Every domain and benchmark takes its answer from here, so format rules cannot drift between
a training reward and an evaluation score. Nothing here judges correctness.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from .types import FormatRules

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class FormatViolation:
    """Why a response breaks the format rules (the model's fault: it earns the format penalty)."""

    reason: str


@dataclass(frozen=True)
class ThinkSplit:
    reasoning: str
    after: str  # everything after </think>: where the final answer must be


@dataclass(frozen=True)
class FinalAnswer:
    text: str
    source: str  # "answer_tag" or "boxed"
    candidates: tuple[str, ...]  # every final answer given after </think>, in order

    @property
    def is_ambiguous(self) -> bool:
        """Several different final answers were given (a hedge): never counted as correct."""
        return len({_squash(c) for c in self.candidates}) > 1


def split_think(response: str, rules: FormatRules) -> ThinkSplit | FormatViolation:
    """Check the single ``<think>...</think>`` block that must open the response."""
    if len(response) > rules.max_response_chars:
        return FormatViolation(f"response has {len(response)} characters, over the cap of {rules.max_response_chars}")
    if not rules.require_think:
        if THINK_CLOSE in response:
            return _split_at_close(response, response.split(THINK_CLOSE, 1)[0].replace(THINK_OPEN, "", 1))
        return ThinkSplit("", response)
    opens, closes = response.count(THINK_OPEN), response.count(THINK_CLOSE)
    if closes != 1:
        return FormatViolation(f"expected exactly one {THINK_CLOSE}, found {closes}")
    if rules.think_in_prompt:
        if opens:
            return FormatViolation(f"{THINK_OPEN} was opened in the prompt; the response opens it again")
        reasoning = response.split(THINK_CLOSE, 1)[0]
    else:
        if opens != 1:
            return FormatViolation(f"expected exactly one {THINK_OPEN}, found {opens}")
        head = response.lstrip()
        if not head.startswith(THINK_OPEN):
            return FormatViolation(f"the response must start with {THINK_OPEN}")
        reasoning = head[len(THINK_OPEN):].split(THINK_CLOSE, 1)[0]
    return _split_at_close(response, reasoning)


def _split_at_close(response: str, reasoning: str) -> ThinkSplit | FormatViolation:
    if not reasoning.strip():
        return FormatViolation("the think block is empty")
    return ThinkSplit(reasoning.strip(), response.split(THINK_CLOSE, 1)[1])


_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_BARE_TOKEN = re.compile(r"[^\s$]+")


def _answer_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the contents of complete ``<answer>...</answer>`` blocks, in order (one linear scan)."""
    spans = []
    position = 0
    while (opened := text.find(_ANSWER_OPEN, position)) >= 0:
        start = opened + len(_ANSWER_OPEN)
        end = text.find(_ANSWER_CLOSE, start)
        if end < 0:
            break  # no later block can close either
        spans.append((start, end))
        position = end + len(_ANSWER_CLOSE)
    return spans


def answer_tags(text: str) -> list[str]:
    """Contents of complete ``<answer>...</answer>`` blocks, in order."""
    return [text[start:end].strip() for start, end in _answer_spans(text)]


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each matched ``{`` → index of its ``}``, in one pass (a stack, so unterminated braces cost nothing)."""
    matched: dict[int, int] = {}
    open_braces: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            open_braces.append(i)
        elif ch == "}" and open_braces:
            matched[open_braces.pop()] = i
    return matched


def _boxes(text: str) -> list[tuple[int, str]]:
    """``(position, contents)`` of every non-empty box, in order; linear in ``len(text)``."""
    found: list[tuple[int, str]] = []
    closing: dict[int, int] | None = None
    for match in _BOXED.finditer(text):
        start = match.end()
        if start < len(text) and text[start] == "{":
            closing = _closing_braces(text) if closing is None else closing
            end = closing.get(start)
            if end is not None:
                found.append((match.start(), text[start + 1:end].strip()))
        elif match.group(0)[-1:].isspace():
            token = _BARE_TOKEN.match(text, start)
            if token:
                found.append((match.start(), token.group(0)))
    return [(position, box) for position, box in found if box]


def boxed_contents(text: str) -> list[str]:
    r"""Contents of every ``\boxed{...}`` / ``\fbox{...}`` (braces matched; ``\boxed 5`` too), in order.

    An unterminated ``\boxed{`` yields nothing. Linear time: a degenerate loop of thousands of
    unterminated boxes costs one pass, not one pass per box.
    """
    return [box for _, box in _boxes(text)]


def final_answer(after_think: str) -> FinalAnswer | FormatViolation:
    r"""The final answer after ``</think>``: the last ``<answer>`` block, else the last ``\boxed{}``.

    A ``\boxed{}`` inside the answer block is unwrapped. Candidates are every final answer given, in
    order, in either form: each box (inside or outside an answer block) and each answer block without
    a box, so callers can refuse hedges (several different final answers).
    """
    spans = _answer_spans(after_think)
    boxes = _boxes(after_think)
    if spans:
        last_start, last_end = spans[-1]
        final = _unbox(after_think[last_start:last_end])
        if not final:
            return FormatViolation("the <answer> block is empty")
        positions = [position for position, _ in boxes]
        unboxed_tags = [(start, after_think[start:end].strip()) for start, end in spans
                        if bisect.bisect_left(positions, start) == bisect.bisect_left(positions, end)]
        candidates = tuple(text for _, text in sorted(boxes + [t for t in unboxed_tags if t[1]]))
        return FinalAnswer(final, "answer_tag", candidates)
    if boxes:
        return FinalAnswer(boxes[-1][1], "boxed", tuple(box for _, box in boxes))
    if _ANSWER_OPEN in after_think:
        return FormatViolation("the <answer> block is not closed")
    return FormatViolation("no final answer after </think> (no <answer> block and no \\boxed{})")


def _unbox(text: str) -> str:
    boxes = boxed_contents(text)
    return boxes[-1] if boxes else text.strip()


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).strip("$.")


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def fenced_code_blocks(text: str, languages: tuple[str, ...] = ("python", "py", "python3")) -> list[str]:
    """Contents of complete fenced code blocks tagged with one of ``languages`` (case-insensitive)."""
    wanted = {lang.lower() for lang in languages}
    return [body for lang, body in _FENCE.findall(text) if lang.lower() in wanted]


def last_code_block(after_think: str) -> str | FormatViolation:
    """The code to run: the last fenced python block after ``</think>``."""
    blocks = fenced_code_blocks(after_think)
    if not blocks or not blocks[-1].strip():
        return FormatViolation("no fenced python code block after </think>")
    return blocks[-1]


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
_REPEATED_CHAR = re.compile(r"(.)\1{63,}", re.DOTALL)


def garbled_reason(text: str) -> str | None:
    """Why ``text`` (an answer part of a response) looks garbled, or None.

    Garbled: control characters or U+FFFD replacement characters (broken decoding), one character
    repeated 64+ times, or a text whose last 2000 characters are one short phrase repeated over
    and over (a degenerate generation loop).
    """
    bad = _CONTROL_CHARS.search(text)
    if bad:
        return f"control or replacement character U+{ord(bad.group(0)):04X} in the answer"
    run = _REPEATED_CHAR.search(text)
    if run and not run.group(1).isspace() and run.group(1) not in "-=_*#.~":
        return f"the character {run.group(1)!r} repeated {len(run.group(0))} times"
    tail = text[-2000:]
    if len(tail) >= 400:
        for period in range(2, 41):
            unit = tail[-period:]
            if unit.strip() and tail.endswith(unit * (400 // period)):
                return f"the answer ends in a loop repeating {unit!r}"
    return None
