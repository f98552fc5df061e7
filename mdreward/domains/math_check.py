"""Symbolic equivalence of two final answers. Runs inside worker processes only (see runtime).

Math-Verify's ``verify(gold, prediction)`` decides, then guards refuse its known false positives:
values that only round to equal, radicals it dropped, different equations that both parse to
a bare right-hand side. Math-Verify's own SIGALRM timeouts fire in the worker's main thread;
the parent kills the worker if even they do not end the work.
"""
from __future__ import annotations

import functools
import re
from typing import Any

from math_verify import parse, verify
from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

_CONFIGS = [LatexExtractionConfig(), ExprExtractionConfig()]
_SIMPLE_LABEL = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*$")
_RELATIVE_TOLERANCE = 5e-6  # for decimals written by the model against irrational golds


def normalize_latex(text: str) -> str:
    r"""Repairs that keep parsing faithful: ``\sqrt(2)`` → ``\sqrt{2}`` (Math-Verify drops it)."""
    text = text.strip().strip("$").strip()
    return re.sub(r"\\sqrt\s*\(([^()]*)\)", r"\\sqrt{\1}", text)


@functools.lru_cache(maxsize=4096)
def _parsed(text: str, timeout_s: float) -> tuple[Any, ...]:
    return tuple(parse(f"${text}$", extraction_config=_CONFIGS, parsing_timeout=max(1, int(timeout_s))))


def _split_equation(text: str) -> tuple[str, str] | None:
    """``(lhs, rhs)`` when the text is exactly one top-level equation without commas."""
    depth = 0
    cuts = []
    for i, ch in enumerate(text):
        depth += ch in "({["
        depth -= ch in ")}]"
        if ch == "=" and depth == 0 and text[i - 1:i] not in ("<", ">", "!", "\\") and text[i + 1:i + 2] != "=":
            cuts.append(i)
    if len(cuts) != 1:
        return None
    if "," in text:
        return None
    return text[:cuts[0]], text[cuts[0] + 1:]


def _is_general_equation(split: tuple[str, str] | None) -> bool:
    """An equation whose left side is not a bare label such as ``x`` or ``f(x)`` (Math-Verify
    reduces ``x = 5`` to ``5``, fine, but also ``3x - y + 13 = 0`` to ``0``)."""
    return split is not None and not _SIMPLE_LABEL.match(split[0])


def _equations_equivalent(gold: tuple[str, str], pred: tuple[str, str], timeout_s: float) -> bool:
    """Two equations are equivalent when (lhs - rhs) of one is a non-zero constant times the other's."""
    import sympy

    sides = []
    for side in (*gold, *pred):
        parsed = _parsed(side.strip(), timeout_s)
        if not parsed or not isinstance(parsed[0], sympy.Basic):
            return False
        sides.append(parsed[0])
    gold_zero, pred_zero = sides[0] - sides[1], sides[2] - sides[3]
    if pred_zero == 0 or gold_zero == 0:
        return False
    ratio = sympy.simplify(gold_zero / pred_zero)
    return bool(ratio.is_number and ratio != 0)


def _numbers_agree(gold: Any, pred: Any, pred_text: str) -> bool | None:
    """Exact comparison for numbers; None when either side is not a plain number."""
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return None
    if not (gold.is_number and pred.is_number):
        return None
    if gold.is_Rational and pred.is_Rational:
        return bool(gold == pred)
    g, p = sympy.N(gold, 50), sympy.N(pred, 50)
    if not (g.is_real and p.is_real):
        return None
    scale = max(abs(g), abs(p))
    if scale == 0:
        return True
    tolerance = _RELATIVE_TOLERANCE if (pred.has(sympy.Float) or "." in pred_text) else 1e-12
    return bool(abs(g - p) / scale <= tolerance)


def check(payload: tuple[str, str, float, float]) -> dict[str, Any]:
    """``payload`` = (gold, prediction, parse budget s, verify budget s) → {"equivalent", "method"}."""
    gold_text, pred_text, parse_s, verify_s = payload
    gold_text, pred_text = normalize_latex(gold_text), normalize_latex(pred_text)
    gold_eq, pred_eq = _split_equation(gold_text), _split_equation(pred_text)
    if _is_general_equation(gold_eq) or _is_general_equation(pred_eq):
        ok = bool(gold_eq and pred_eq and _equations_equivalent(gold_eq, pred_eq, parse_s))
        return {"equivalent": ok, "method": "equation"}
    gold, pred = _parsed(gold_text, parse_s), _parsed(pred_text, parse_s)
    if not gold or not pred:
        return {"equivalent": False, "method": "unparsed"}
    if not verify(list(gold), list(pred), timeout_seconds=max(1, int(verify_s))):
        return {"equivalent": False, "method": "math_verify"}
    agree = _numbers_agree(gold[0], pred[0], pred_text)
    if agree is False:
        return {"equivalent": False, "method": "exact_numeric_guard"}
    return {"equivalent": True, "method": "math_verify"}


_WARM_UP_PAIRS = (("-2 + 7i", "4"), ("9901", "{9901}"), ("\\frac{448}{15625}", "east"), ("\\sqrt{5}", "x^3+3x-6"),
                  ("(1, 2)", "\\left( 1, 2 \\right)"), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "3"),
                  ("\\frac{\\pi}{2}", "\\cot x"), ("x+1", "y=2x"))


def warm_up() -> None:
    """Pay sympy's and the LaTeX parser's first-call costs (~0.1-0.4 s each) before real work."""
    for gold, pred in _WARM_UP_PAIRS:
        check((gold, pred, 3.0, 3.0))
    _parsed.cache_clear()
