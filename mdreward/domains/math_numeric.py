"""Approximate values of simple LaTeX numbers, in the caller and without sympy.

Only for refusing pairs that are certainly different (``2\\sqrt{113}`` against ``27``): a value is read
only when every token is understood (integers, decimals, ``\\frac``, ``\\sqrt``, ``\\pi``, ``i``, ``+ - \\cdot
\\times / ^``, ``^\\circ``, brackets); anything else (units, percent, variables, a number written next to
another) gives None and the pair goes to the full checker.
"""
from __future__ import annotations

import cmath
import math
import re

_TOKEN = re.compile(r"\s*(\^\s*\{?\s*\\circ\s*\}?|\d+\.\d*|\.\d+|\d+|\\frac|\\sqrt|\\pi|\\cdot|\\times|i(?![A-Za-z])"
                    r"|[-+*/^{}()\[\]])")
_DEGREES = "\\circ"
_MAX_TOKENS = 200
_MAX_MAGNITUDE = 1e300


class _Unreadable(Exception):
    pass


class _Reader:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _Unreadable(f"expected {expected!r}, found {token!r}")
        self.at += 1
        return token

    def expression(self) -> complex:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> complex:
        value = self.signed()
        while True:
            token = self.peek()
            if token in ("\\cdot", "\\times", "*"):
                self.take()
                value *= self.signed()
            elif token == "/":
                self.take()
                value = _divide(value, self.signed())
            elif token in ("\\sqrt", "\\pi", "(", "i"):  # implicit product: 2\sqrt{3}, 3\pi, 2(1+x), 7i
                value *= self.power()
            else:
                return value

    def signed(self) -> complex:
        if self.peek() in ("-", "+"):
            return -self.signed() if self.take() == "-" else self.signed()
        return self.power()

    def power(self) -> complex:
        base = self.atom()
        if _DEGREES in (self.peek() or ""):  # 90^\circ is 90, as Math-Verify reads it
            self.take()
            return base
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.group() if self.peek() == "{" else self.single()
        if base.imag or exponent.imag:
            raise _Unreadable("complex power")
        try:
            return math.pow(base.real, exponent.real)
        except (OverflowError, ValueError) as exc:
            raise _Unreadable(str(exc)) from exc

    def group(self) -> complex:
        self.take("{")
        value = self.expression()
        self.take("}")
        return value

    def single(self) -> complex:
        """A one-character argument (``\\frac43``, ``x^2``): one digit, or a braced group."""
        if self.peek() == "{":
            return self.group()
        token = self.take()
        if not token.isdigit():
            raise _Unreadable(f"unexpected {token!r}")
        if len(token) > 1:  # \frac43 tokenizes as "43": split off the first digit
            self.tokens.insert(self.at, token[1:])
            return float(token[0])
        return float(token)

    def atom(self) -> complex:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        if token == "\\pi":
            return math.pi
        if token == "i":
            return 1j
        if token in ("(", "{"):
            value = self.expression()
            self.take(")" if token == "(" else "}")
            return value
        if token == "\\frac":
            return _divide(self.single(), self.single())
        if token == "\\sqrt":
            index: complex = 2.0
            if self.peek() == "[":
                self.take()
                index = self.expression()
                self.take("]")
            radicand = self.single()
            if radicand.imag or index.imag or radicand.real < 0 or index.real <= 0:
                raise _Unreadable("not a real root")
            return radicand.real ** (1 / index.real)
        raise _Unreadable(f"unexpected {token!r}")


#: Two digits with only spaces between them: side-by-side numbers, never one value (unless digit groups).
SPACED_DIGITS = re.compile(r"\d\s+\d")


def terminates(denominator: int) -> bool:
    """Whether a fraction with this denominator has a finite decimal expansion (only 2s and 5s)."""
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def _divide(numerator: complex, denominator: complex) -> complex:
    if denominator == 0:
        raise _Unreadable("division by zero")
    return numerator / denominator


def approximate_value(text: str) -> complex | None:
    """The value of a simple LaTeX number (``i`` the imaginary unit), or None when any part of it is not understood."""
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position:].strip():
                return None
            break
        tokens.append(match.group(1))
        position = match.end()
        if len(tokens) > _MAX_TOKENS:
            return None
    if re.search(r"\d\s+\d", text):  # "5 6" is two numbers, not one
        return None
    reader = _Reader(tokens)
    try:
        value = reader.expression()
    except (_Unreadable, OverflowError, ZeroDivisionError):
        return None
    if reader.peek() is not None or not cmath.isfinite(value) or abs(value) > _MAX_MAGNITUDE:
        return None
    return value


def _is_bracketed_list(text: str) -> bool:
    """A tuple, interval or vector: ``(1, 2)``, ``[0, 1)``, ``\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}``."""
    if re.fullmatch(r"\\begin\{[pbv]matrix\}.*(?:\\\\|&).*\\end\{[pbv]matrix\}", text, re.DOTALL):
        return True
    if len(text) < 5 or text[0] not in "([" or text[-1] not in ")]":
        return False
    depth = 0
    for ch in text[1:-1]:
        depth += (ch in "([{") - (ch in ")]}")
        if depth < 0:
            return False  # (1)(2): not one bracket around the whole
        if ch == "," and depth == 0:
            return True
    return False


def certainly_different(answer: str, reference: str) -> bool:
    """True when both are simple numbers whose values differ far beyond any rounding Math-Verify allows (it
    rounds decimals to 6 places: relative and absolute gap over 1e-4), or one is a number and the other a
    tuple, interval or matrix."""
    a, r = approximate_value(answer), approximate_value(reference)
    if a is None and r is None:
        return False
    if a is None or r is None:
        return _is_bracketed_list(answer if a is None else reference)
    return abs(a - r) > 1e-4 * max(1.0, abs(a), abs(r))
