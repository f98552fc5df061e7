"""The one extraction module: think blocks, final answers, code blocks.

Every domain and benchmark takes its answer from here, so format rules cannot drift between
a training reward and an evaluation score. Nothing here judges correctness.
"""
from __future__ import annotations

import ast
import bisect
import re
import textwrap
import warnings
from collections.abc import Sequence
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


def _boxes(text: str) -> list[tuple[int, str]]:
    """``(position, contents)`` of every non-empty box, in order; linear in ``len(text)``."""
    found: list[tuple[int, str]] = []
    closing: dict[int, int] | None = None
    for match in _BOXED.finditer(text):
        start = match.end()
        if start < len(text) and text[start] == "{":
            closing = _matching_braces(text) if closing is None else closing
            end = closing.get(start)
            if end is not None:
                found.append((match.start(), text[start + 1:end].strip()))
        elif match.group(0)[-1:].isspace():
            token = _BARE_TOKEN.match(text, start)
            if token:
                found.append((match.start(), token.group(0)))
    return [(position, box) for position, box in found if box]


def _matching_braces(text: str) -> dict[int, int]:
    """Position of every ``{`` that is closed -> position of its ``}`` (one pass: hostile text with
    thousands of unterminated boxes stays linear)."""
    opened: list[int] = []
    pairs: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            pairs[opened.pop()] = i
    return pairs


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


def final_answer_of(response: str, rules: FormatRules) -> FinalAnswer | FormatViolation:
    """``split_think`` then ``final_answer`` on what follows ``</think>``: a domain's usual first step."""
    split = split_think(response, rules)
    return split if isinstance(split, FormatViolation) else final_answer(split.after)


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


@dataclass(frozen=True)
class ChoiceAnswer:
    """The option letter a multiple-choice answer gives (upper case), with every candidate of its rule."""

    letter: str
    source: str  # "boxed", "answer_phrase" or "last_line"
    candidates: tuple[str, ...]

    @property
    def is_hedge(self) -> bool:
        """Several different letters were given: never counted as correct."""
        return len(set(self.candidates)) > 1


#: The option letters a multiple-choice question can use, in order (at most ten options).
OPTION_LETTERS = "ABCDEFGHIJ"
_OPTION_MARK = "\x00option\x00"
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|textit)\s*\{([^{}]*)\}")
_LETTER_ALONE = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:)]?$")
_LETTER_WITH_TEXT = re.compile(r"^[(\[]?([A-Z])[)\].:]\s+\S")
_LIST_SEPARATOR = r"\s*(?:,|/|;|&|\bor\b|\band\b)\s*"
_SEPARATOR = re.compile(_LIST_SEPARATOR)
_ANSWER_PHRASE = re.compile(
    r"(?i:\b(?:final\s+answer|answer|correct\s+(?:option|choice))(?:\s+is)?(?:\s+(?:option|choice))?)"
    r"\s*[:：]?\s*(?:\*\*|\$)?\s*(?=([^\n]{0,200}))")
_STANDALONE = re.compile(r"(?<![\w'’\\])(?:\(([A-Za-z])\)|([A-Z]))(?![\w'’])")
_TOKEN = r"(?:\([A-Za-z]\)|\[[A-Za-z]\]|[A-Z](?![\w'’]))"
_LEADING_LETTERS = re.compile(rf"^{_TOKEN}(?:{_LIST_SEPARATOR}{_TOKEN})*")
_OPTION_LINE = re.compile(r"^\W*[(\[]?[A-Z][)\].:]\s*" + re.escape(_OPTION_MARK) + r"\W*$")


def _blank_options(text: str, options: Sequence[str]) -> str:
    """``text`` with every occurrence of an option's text replaced by a mark (longest first).

    Option texts without two letters or digits (``"C"``, ``"I"``) are left alone: blanking them
    would erase letters.
    """
    for option in sorted({o.strip() for o in options}, key=len, reverse=True):
        if sum(ch.isalnum() for ch in option) >= 2:
            text = text.replace(option, _OPTION_MARK)
    return text


def _letters_in(fragment: str) -> tuple[str, ...]:
    """The letters a short answer fragment gives: ``B``, ``(b)``, ``B.``, ``B) text``, ``A or B`` ..."""
    text = _LATEX_WRAPPER.sub(r"\1", fragment)
    text = text.replace("$", "").replace("*", "").strip()
    whole = _LETTER_ALONE.match(text) or _LETTER_WITH_TEXT.match(text)
    if whole:
        return (whole.group(1).upper(),)
    if len(text) > 80:  # ten letters with separators fit in far less
        return ()
    matches = [_LETTER_ALONE.match(p) for p in _SEPARATOR.split(text) if p]
    if len(matches) > 1 and all(matches):
        return tuple(m.group(1).upper() for m in matches if m)
    return ()


_VERB_AFTER_LETTER = re.compile(r"\s+(?:is|was|seems|fits|matches|holds|must|should|would)\b")
_LOWER_WORD_AFTER = re.compile(r"\s+[a-z]")


def _is_word(line: str, end: int) -> bool:
    """After a capital ``A``/``I`` ending at ``end``: a lower-case word makes it an article or a pronoun
    (``A cat``, ``I think``), unless the word is a verb that states it as the answer (``A is correct``)."""
    return bool(_LOWER_WORD_AFTER.match(line, end)) and not _VERB_AFTER_LETTER.match(line, end)


def _phrase_letters(phrase: str) -> tuple[str, ...]:
    """Letters after an answer phrase: the whole rest of the line as a box's content, else the
    letters it starts with (``B because ...``, ``(C), since ...``, ``A or B, ...``)."""
    phrase = phrase.strip()
    found = _letters_in(phrase.rstrip(".").strip())
    if found:
        return found
    lead = _LEADING_LETTERS.match(_LATEX_WRAPPER.sub(r"\1", phrase).replace("*", "").replace("$", ""))
    return tuple(t.strip("()[]").upper() for t in re.findall(_TOKEN, lead.group(0))) if lead else ()


def choice_letter(after_think: str, options: Sequence[str] = (),
                  letters: str = OPTION_LETTERS) -> ChoiceAnswer | FormatViolation:
    r"""The option letter of a multiple-choice answer, by one rule (docs/choice.md).

    First every occurrence of an option's text is blanked, so text quoted from the options is never
    read as a letter. Then the first of these that finds a letter decides:

    1. ``boxed``: every ``\boxed{}`` whose content is a letter (``B``, ``(B)``, ``\text{B}``, ``b``,
       ``B) its text``) or a list of letters (``A or B``); boxes holding anything else are ignored.
    2. ``answer_phrase``: the last "answer: X" / "answer is (X)" / "final answer: X" / "correct
       option is X" (case-insensitive phrase), where X is the rest of its line (at most 200
       characters) read like a box's content, else the letters it starts with.
    3. ``last_line``: the standalone letters in ``letters`` on the last non-empty line that is not a
       restated option (``A) <option text>``): capitals not inside a word (``B``, ``B.``, ``**B**``),
       or any case in parentheses (``(b)``); ``A``/``I`` followed by a lower-case word are an
       article/pronoun, not a letter (unless the word is a verb like ``is``: ``A is correct``).

    All candidates of the deciding step are kept: several different letters are a hedge (wrong).
    No letter at all is a ``FormatViolation``. Letters outside ``letters`` are returned (as wrong
    answers) by steps 1 and 2 only.
    """
    text = _blank_options(after_think, options)
    boxed = tuple(letter for content in boxed_contents(text) for letter in _letters_in(content))
    if boxed:
        return ChoiceAnswer(boxed[-1], "boxed", boxed)
    phrases = [m.group(1) for m in _ANSWER_PHRASE.finditer(text)]
    for phrase in reversed(phrases):
        found = _phrase_letters(phrase)
        if found:
            return ChoiceAnswer(found[-1], "answer_phrase", found)
    lines = [line for line in text.splitlines() if line.strip() and not _OPTION_LINE.match(line)]
    if lines:
        last = lines[-1]
        found = tuple(
            (m.group(1) or m.group(2)).upper() for m in _STANDALONE.finditer(last)
            if (m.group(1) or m.group(2)).upper() in letters
            and not (m.group(2) in ("A", "I") and _is_word(last, m.end())))
        if found:
            return ChoiceAnswer(found[-1], "last_line", found)
    return FormatViolation("no option letter in the answer (no \\boxed{X}, no 'Answer: X', no letter on the last line)")


def parse_python(code: str) -> ast.Module | str:
    """``code`` parsed (its warnings, e.g. invalid escapes, are the candidate's business), or why it does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except SyntaxError as exc:
        return f"the code does not parse: {exc.msg} (line {exc.lineno})"
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"the code does not parse: {type(exc).__name__}"


def _defines_function(code: str, name: str) -> bool:
    module = parse_python(code)
    if isinstance(module, str):
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name for node in module.body)


def complete_function(code: str, prefix: str, entry_point: str) -> str:
    """The program of a function-completion answer (HumanEval): ``code`` itself when it defines
    ``entry_point`` at top level; else, when ``code`` is only the function's body, ``prefix`` (the
    prompt: imports, signature, docstring) followed by the body (indented one level if the model
    wrote it flush left); else ``code`` unchanged (it then fails on its own)."""
    if _defines_function(code, entry_point):
        return code
    body = code.strip("\n")
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        return code
    if not lines[0][0].isspace():
        body = textwrap.indent(body, "    ")
    program = prefix.rstrip() + "\n" + body + "\n"
    return program if _defines_function(program, entry_point) else code
