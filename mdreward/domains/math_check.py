"""Symbolic equivalence of two final answers. Runs inside worker processes only (see runtime).

Each side is parsed whole by Math-Verify's LaTeX parser (never reduced to a part of it), then
decided from the parsed structure: a false chain (``x = 7 = 5``) or several values given for one
(``\\pm 2``, ``3, 5``) is not one value; Math-Verify's ``verify(gold, prediction)`` decides the rest,
and every numeric leaf of the two structures (labels, tuples, sets, intervals, matrices, sums,
polynomials) is compared exactly, so values that only round to equal are refused. Math-Verify's
own SIGALRM timeouts fire in the worker's main thread; the parent kills the worker if even they
do not end the work.
"""
from __future__ import annotations

import cmath
import functools
import re
from fractions import Fraction
from typing import Any

import sympy
from math_verify import parse, verify
from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

from .math_numeric import SPACED_DIGITS, terminates

_LATEX = [LatexExtractionConfig()]
_EXPR = [ExprExtractionConfig()]
_RELATIVE_TOLERANCE = 5e-6  # for decimals written by the model against irrational golds
_IRRATIONAL_TOLERANCE = 1e-12
_SAMPLE_OFFSETS = (0.5772156649, 1.6180339887)  # points where to evaluate expressions with variables
_MAX_SET_PAIRS = 4096  # exact matching of two sets compares every pair; larger sets keep Math-Verify's verdict
_MAX_EXACT_EXPONENT = 10_000  # larger integer powers are compared numerically (50 digits)
_TOP_LEVEL_EQUALS = re.compile(r"(?<![\\<>!])=(?!=)")
_REPEATING_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d*)\\overline\s*\{(\d+)\}")
_TEXT_WITH_DIGITS = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{([^{}]*\d[^{}]*)\}")
_SUBSCRIPT = re.compile(r"_\{[^{}]*\}|_\\?\w")
_CALL_ARGUMENTS = re.compile(r"(?<=[A-Za-z])\([^()]*\)")
_NOT_A_LABEL = re.compile(r"[\d+\-^*]|\\cdot|\\times")
_SPACED_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:\s+\d{3})+(?![\d.])")
_APPROX = re.compile(r"\\approx(?![A-Za-z])")
_PERCENT = re.compile(r"\\?%|\\text\{\s*(?:percent(?:age)?|pct)\s*\}|percent(?:age)?|pct")


def _repeating_decimal(match: re.Match[str]) -> str:
    whole, fixed, period = match.group(1) or "0", match.group(2), match.group(3)
    value = Fraction(int(whole)) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value += Fraction(int(period), 10 ** len(fixed) * (10 ** len(period) - 1))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def normalize_latex(text: str) -> str:
    r"""Value-preserving repairs before parsing, each a Math-Verify blind spot.

    ``\sqrt(2)`` → ``\sqrt{2}`` (it drops the radical); ``0.1\overline{6}`` → ``\frac{1}{6}`` (it reads the
    bar as a symbol); ``\varnothing`` → ``\emptyset``; a ``\text{...}`` holding a number is unwrapped, so
    ``3 \text{(or possibly 5)}`` stays two values instead of being dropped as a unit; digit groups
    separated by a space (``10\,000``) are one number (it adds them: ``11 111`` is 122).
    """
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\sqrt\s*\(([^()]*)\)", r"\\sqrt{\1}", text)
    text = _REPEATING_DECIMAL.sub(_repeating_decimal, text)
    text = text.replace("\\varnothing", "\\emptyset")
    text = _TEXT_WITH_DIGITS.sub(r" \1 ", text)
    return _SPACED_THOUSANDS.sub(lambda m: re.sub(r"\s+", "", m.group(0)), text)


def _top_level_equals(text: str) -> list[int]:
    depth = 0
    cuts = []
    for i, ch in enumerate(text):
        depth += ch in "({["
        depth -= ch in ")}]"
        if depth == 0 and ch == "=" and _TOP_LEVEL_EQUALS.match(text, i):
            cuts.append(i)
    return cuts


@functools.lru_cache(maxsize=8192)
def _parsed(text: str, timeout_s: float) -> tuple[Any, ...]:
    """``(value, parsed text)`` of the whole answer, or ``()`` when no single expression spans it.

    Math-Verify falls back to a part of the text when the whole does not parse (the last ``=`` part,
    or the last number by its expression extractor): ``7 \\to 5`` would become ``5``. Here a part
    never stands for the whole.
    """
    if SPACED_DIGITS.search(text):
        return ()  # "5 6" is two numbers (Math-Verify adds them)
    budget = max(1, int(timeout_s))
    result = parse(f"${text}$", extraction_config=_LATEX, parsing_timeout=budget)
    if result and isinstance(result[0], (sympy.Basic, sympy.MatrixBase)):
        value = result[0]
        cuts = _top_level_equals(str(result[1]))
        reduced_to_last_equation = (len(cuts) > 1 and "," not in result[1] and ";" not in result[1]
                                    and not isinstance(value, sympy.And))
        return () if reduced_to_last_equation else tuple(result)
    # plain-text numbers such as "28 percent": only when the number spans the whole answer
    result = parse(text.replace("\\%", "%"), extraction_config=_EXPR, parsing_timeout=budget)
    if result and re.sub(r"\s", "", _PERCENT.sub("", text)) == re.sub(r"\s", "", str(result[1])):
        return tuple(result)
    return ()


def _is_label(lhs: str) -> bool:
    """A left side that names the value (``x``, ``f(x)``, ``V_1:V_2``, ``|AB|``, ``\\frac{NO}{BO}``): no number
    and no arithmetic once subscripts and function arguments are set aside."""
    bare = _CALL_ARGUMENTS.sub("", _SUBSCRIPT.sub("", lhs)).strip()
    return bool(bare) and not _NOT_A_LABEL.search(bare)


def _equation(text: str) -> tuple[str, str] | None:
    """``(lhs, rhs)`` when the text is one equation: one top-level ``=`` and no comma."""
    cuts = _top_level_equals(text)
    if len(cuts) != 1 or "," in text:
        return None
    return text[:cuts[0]], text[cuts[0] + 1:]


def _is_general(equation: tuple[str, str] | None) -> bool:
    """An equation whose left side is not a label (Math-Verify reduces ``x = 5`` to ``5``, fine, but also
    ``3x - y + 13 = 0`` to ``0``)."""
    return equation is not None and not _is_label(equation[0])


def _equations_equivalent(gold: tuple[str, str], pred: tuple[str, str], timeout_s: float) -> bool:
    """Two equations are equivalent when (lhs - rhs) of one is a non-zero constant times the other's."""
    sides = []
    for side in (*gold, *pred):
        parsed = _parsed(side.strip(), timeout_s)
        if not parsed or not isinstance(parsed[0], sympy.Expr):
            return False
        sides.append(parsed[0])
    gold_zero, pred_zero = sides[0] - sides[1], sides[2] - sides[3]
    if pred_zero == 0 or gold_zero == 0:
        return False
    ratio = sympy.cancel(gold_zero / pred_zero)
    if not ratio.is_number:
        ratio = sympy.simplify(ratio)
    return bool(ratio.is_number and ratio != 0)


def _terminating_decimal(value: sympy.Expr, other: sympy.Expr) -> sympy.Expr:
    """A decimal as the exact fraction it writes when the other side is a fraction with a finite decimal
    expansion (``1.0000001`` is not ``1``); against ``\\frac{14}{3}`` it stays a rounded value."""
    if not (value.is_Float and other.is_Rational):
        return value
    return sympy.Rational(str(value)) if terminates(int(other.q)) else value


def _exact_rational(value: sympy.Expr) -> sympy.Expr:
    """An unevaluated rational expression (``\\frac{1}{2^{98}} + 3`` as parsed) as the one Rational it equals, when
    that is cheap (integer powers up to ``_MAX_EXACT_EXPONENT``); anything else unchanged."""
    if value.is_Rational or value.has(sympy.Float) or value.is_rational is not True:
        return value
    if any(abs(int(power.exp)) > _MAX_EXACT_EXPONENT for power in value.atoms(sympy.Pow) if power.exp.is_Integer):
        return value
    exact = value.doit()
    return exact if exact.is_Rational else value


def _exactly_equal_numbers(gold: sympy.Expr, pred: sympy.Expr, written_as_decimal: bool) -> bool | None:
    """Exact comparison of two numbers; None when either is not a real number."""
    gold, pred = _terminating_decimal(gold, pred), _terminating_decimal(pred, gold)
    gold, pred = _exact_rational(gold), _exact_rational(pred)
    if gold.is_Rational and pred.is_Rational:
        return bool(gold == pred)
    g, p = sympy.N(gold, 50), sympy.N(pred, 50)
    if not (g.is_real and p.is_real):
        return None
    scale = max(abs(g), abs(p))
    if scale == 0:
        return True
    tolerance = _RELATIVE_TOLERANCE if (written_as_decimal or pred.has(sympy.Float)) else _IRRATIONAL_TOLERANCE
    return bool(abs(g - p) / scale <= tolerance)


def _rational_coefficients(expr: sympy.Expr) -> bool:
    symbols = expr.free_symbols
    return bool(symbols) and expr.is_rational_function(*symbols) and not expr.has(sympy.Float)


def _label_value(value: Any) -> Any:
    """``x = 5`` → ``5``; anything else unchanged."""
    if isinstance(value, sympy.Eq) and not value.lhs.is_number:
        return value.rhs
    return value


def _leaves_agree(gold: Any, pred: Any, written_as_decimal: bool) -> bool:
    """False when two structures Math-Verify called equal differ exactly at a numeric leaf."""
    gold, pred = _label_value(gold), _label_value(pred)
    if isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr) and not isinstance(gold, sympy.MatrixBase):
        if gold.is_number and pred.is_number:
            return _exactly_equal_numbers(gold, pred, written_as_decimal) is not False
        if _rational_coefficients(gold) and _rational_coefficients(pred):
            return bool(sympy.cancel(gold - pred) == 0)
        return True
    if isinstance(gold, sympy.MatrixBase) and isinstance(pred, sympy.MatrixBase):
        return gold.shape == pred.shape and all(_leaves_agree(g, p, written_as_decimal) for g, p in zip(gold, pred))
    if isinstance(gold, sympy.Interval) and isinstance(pred, sympy.Interval):
        return all(_leaves_agree(g, p, written_as_decimal) for g, p in zip(gold.args[:2], pred.args[:2]))
    if isinstance(gold, (sympy.Tuple, tuple, list)) and isinstance(pred, (sympy.Tuple, tuple, list)):
        return len(gold) == len(pred) and all(_leaves_agree(g, p, written_as_decimal) for g, p in zip(gold, pred))
    if isinstance(gold, sympy.FiniteSet) and isinstance(pred, sympy.FiniteSet):
        if len(gold) * len(pred) > _MAX_SET_PAIRS:
            return True
        return (all(any(_leaves_agree(g, p, written_as_decimal) for g in gold.args) for p in pred.args)
                and all(any(_leaves_agree(g, p, written_as_decimal) for p in pred.args) for g in gold.args))
    if isinstance(gold, sympy.Eq) and isinstance(pred, sympy.Eq):
        return (_leaves_agree(gold.lhs, pred.lhs, written_as_decimal)
                and _leaves_agree(gold.rhs, pred.rhs, written_as_decimal))
    return True


def _certainly_different(gold: Any, pred: Any, percent_written: bool) -> bool:
    """Shapes that differ (a number against a tuple, interval or matrix; tuples or matrices of other sizes), or
    two values (or functions, at a sample point) far apart beyond any rounding: Math-Verify says so too, after
    a costly ``simplify``."""
    gold, pred = _label_value(gold), _label_value(pred)
    containers = (sympy.Tuple, sympy.Interval, sympy.MatrixBase)
    for one, other in ((gold, pred), (pred, gold)):
        if isinstance(one, sympy.Expr) and not isinstance(one, sympy.MatrixBase) and one.is_number \
                and isinstance(other, containers):
            return True
    if isinstance(gold, sympy.Tuple) and isinstance(pred, sympy.Tuple):
        return len(gold) != len(pred)
    if isinstance(gold, sympy.MatrixBase) and isinstance(pred, sympy.MatrixBase):
        return gold.shape != pred.shape
    if percent_written or not (_one_value(gold) and _one_value(pred)):
        return False
    symbols = gold.free_symbols | pred.free_symbols
    names = sorted({str(symbol) for symbol in symbols})
    # two functions that differ at a point are different (a number is a constant function); values that
    # only round to equal, or points where either side is undefined, decide nothing
    for offset in _SAMPLE_OFFSETS if symbols else (0.0,):
        point = {symbol: offset + 0.1 * names.index(str(symbol)) for symbol in symbols}
        try:
            g, p = complex(gold.evalf(20, subs=point)), complex(pred.evalf(20, subs=point))
        except (TypeError, ValueError, OverflowError, ZeroDivisionError):
            return False
        if cmath.isfinite(g) and cmath.isfinite(p) and abs(g - p) > 1e-4 * max(1.0, abs(g), abs(p)):
            return True
    return False


def _several_values(value: Any) -> bool:
    """More than one value where one is asked for: a set of several, or an ``or``."""
    return (isinstance(value, sympy.FiniteSet) and len(value) > 1) or isinstance(value, sympy.Or)


def _one_value(value: Any) -> bool:
    """A single scalar (a number or an expression), not a tuple, set, interval, matrix or relation."""
    return isinstance(value, sympy.Expr) and not isinstance(value, sympy.MatrixBase)


def _chain_value(value: Any, text: str, timeout_s: float) -> tuple[Any, ...] | None:
    """``x = 2 + 2 = 4`` → the parse of ``4`` when every link without a free symbol holds exactly;
    None for a false chain (``x = 7 = 5``). Values that are not chains come back unchanged."""
    if not (isinstance(value[0], sympy.And) and all(isinstance(a, sympy.Eq) for a in value[0].args)):
        return value
    for link in value[0].args:
        if not (link.lhs.free_symbols or link.rhs.free_symbols):
            if not (isinstance(link.lhs, sympy.Expr) and isinstance(link.rhs, sympy.Expr)):
                return None
            if _exactly_equal_numbers(link.lhs, link.rhs, False) is not True:
                return None
    cuts = _top_level_equals(text)
    last = _parsed(text[cuts[-1] + 1:].strip(), timeout_s) if cuts else ()
    return last or None


def _exact_part(text: str, timeout_s: float) -> str | None:
    """``v \\approx a`` → ``v`` when each approximation ``a`` is ``v`` to the decimals it writes, None when one
    is false (``5 \\approx 5.1``); ``x \\approx 0.87`` (a label) → ``0.87``. Math-Verify keeps one side of it."""
    parts = [part.strip() for part in _APPROX.split(text)]
    if len(parts) == 1:
        return text
    if _is_label(parts[0]) and "=" not in parts[0]:
        parts = parts[1:]
    exact = _parsed(parts[0], timeout_s)
    if len(parts) == 1:
        return parts[0]
    value = _label_value(exact[0]) if exact else None
    if not (isinstance(value, sympy.Expr) and value.is_number):
        return None
    for approximation in parts[1:]:
        parsed = _parsed(approximation, timeout_s)
        if not (parsed and isinstance(parsed[0], sympy.Expr) and parsed[0].is_number):
            return None
        approximate = sympy.Rational(str(parsed[0])) if parsed[0].is_Float else parsed[0]
        decimals = re.search(r"\.(\d+)", approximation)
        difference = abs(value - approximate)
        if not (difference if difference.is_Rational else sympy.N(difference, 30)) < sympy.Rational(
                1, 10 ** len(decimals.group(1) if decimals else "")):
            return None
    return parts[0]


def _as_set(value: Any) -> Any:
    """An inequality in one variable as the set it describes (``x > 2`` → ``(2, \\infty)``); else unchanged."""
    relational = isinstance(value, sympy.core.relational.Relational) and not isinstance(value, (sympy.Eq, sympy.Ne))
    chain = isinstance(value, sympy.And) and all(isinstance(a, sympy.core.relational.Relational) for a in value.args)
    if (relational or chain) and len(value.free_symbols) == 1:
        try:
            return value.as_set()
        except (NotImplementedError, TypeError, ValueError):
            return value
    return value


def check(payload: tuple[str, str, float, float]) -> dict[str, Any]:
    """``payload`` = (gold, prediction, parse budget s, verify budget s) → {"equivalent", "method"}."""
    gold_text, pred_text, parse_s, verify_s = payload
    gold_text, pred_text = normalize_latex(gold_text), normalize_latex(pred_text)
    exact_gold, exact_pred = _exact_part(gold_text, parse_s), _exact_part(pred_text, parse_s)
    if exact_gold is None or exact_pred is None:
        return {"equivalent": False, "method": "false_chain"}
    gold_text, pred_text = exact_gold, exact_pred
    gold_eq, pred_eq = _equation(gold_text), _equation(pred_text)
    if _is_general(gold_eq) or _is_general(pred_eq):
        ok = bool(gold_eq and pred_eq and _equations_equivalent(gold_eq, pred_eq, parse_s))
        return {"equivalent": ok, "method": "equation"}
    gold, pred = _parsed(gold_text, parse_s), _parsed(pred_text, parse_s)
    if not gold or not pred:
        return {"equivalent": False, "method": "unparsed"}
    gold_value, pred_value = _chain_value(gold, gold_text, parse_s), _chain_value(pred, pred_text, parse_s)
    if gold_value is None or pred_value is None:
        return {"equivalent": False, "method": "false_chain"}
    golds, preds = list(gold_value), list(pred_value)
    if _several_values(_label_value(preds[0])) and _one_value(_label_value(golds[0])):
        return {"equivalent": False, "method": "hedged"}
    if _certainly_different(golds[0], preds[0], bool(_PERCENT.search(gold_text + pred_text))):
        return {"equivalent": False, "method": "math_verify"}
    budget = max(1, int(verify_s))
    if not verify(golds, preds, timeout_seconds=budget):
        if isinstance(golds[0], sympy.Set) == isinstance(preds[0], sympy.Set):
            return {"equivalent": False, "method": "math_verify"}
        golds[0], preds[0] = _as_set(golds[0]), _as_set(preds[0])  # x > 2 against (2, \infty), either way
        if not verify(golds, preds, timeout_seconds=budget):
            return {"equivalent": False, "method": "math_verify"}
    if not _leaves_agree(golds[0], preds[0], "." in pred_text):
        return {"equivalent": False, "method": "exact_numeric_guard"}
    return {"equivalent": True, "method": "math_verify"}


_WARM_UP_PAIRS = (("-2 + 7i", "4"), ("9901", "{9901}"), ("\\frac{448}{15625}", "east"), ("\\sqrt{5}", "x^3+3x-6"),
                  ("(1, 2)", "\\left( 1, 2 \\right)"), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "3"),
                  ("\\frac{\\pi}{2}", "\\cot x"), ("x+1", "y=2x"), ("(2, \\infty)", "x > 2"), ("x = 2 + 2 = 4", "4"))


def warm_up() -> None:
    """Pay sympy's and the LaTeX parser's first-call costs (~0.1-0.4 s each) before real work."""
    for gold, pred in _WARM_UP_PAIRS:
        check((gold, pred, 3.0, 3.0))
    _parsed.cache_clear()
