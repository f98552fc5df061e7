"""Derive the Math-Verify peer-check table (tests/cases/mathverify_peer.jsonl) from a Math-Verify checkout.

Reads the literal ``(gold, pred, expected)`` tuples of its parametrised tests with ``ast`` (no code is
imported or copied) and keeps the cases a reward sees: default comparison settings, and a prediction that
carries a ``\\boxed{}`` answer or is a bare expression (and no think block of its own), against a gold
of the same kind; a boxed gold is stored as its last box, as a data set would store the reference.

    python scripts/derive_mathverify_cases.py PATH/TO/Math-Verify/tests > tests/cases/mathverify_peer.jsonl
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

from mdreward.extract import boxed_contents

FILES = ("test_all.py", "test_numina_cases.py", "test_open_thoughts.py", "test_yujianll.py")
_WORD = re.compile(r"[A-Za-z]{3,}")  # a word outside LaTeX commands: prose, not a bare expression


def _call_options(func: ast.FunctionDef) -> dict[str, object] | None:
    """Keyword arguments of the test's ``compare_strings`` call; None when it takes other settings."""
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "compare_strings":
            options = {}
            for keyword in node.keywords:
                try:
                    options[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:
                    options[keyword.arg] = "per-case"
            return options
    return None


def _is_bare_expression(pred: str) -> bool:
    inner = pred.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if inner.startswith(left) and inner.endswith(right) and len(inner) > len(left) + len(right):
            inner = inner[len(left):-len(right)].strip()
            break
    without_commands = re.sub(r"\\[A-Za-z]+(\{[^{}]*\})?", " ", inner)
    return "$" not in inner and "\n" not in inner and not _WORD.search(without_commands)


def cases(tests_dir: Path) -> list[dict[str, object]]:
    found = []
    for name in FILES:
        tree = ast.parse((tests_dir / name).read_text())
        for func in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            options = _call_options(func)
            if options is None or any(options.get(k, d) != d for k, d in (("strict", True),
                                                                          ("allow_set_relation_comp", False))):
                continue
            if options.get("match_types", ["latex", "expr"]) == ["expr"]:
                continue
            for decorator in func.decorator_list:
                if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "parametrize"):
                    continue
                params = [p.strip() for p in ast.literal_eval(decorator.args[0]).split(",")]
                for node in getattr(decorator.args[1], "elts", []):
                    try:
                        case = dict(zip(params, ast.literal_eval(node)))
                    except ValueError:
                        continue  # a row built by code, not a literal
                    gold, pred, expected = case["gold"], case["pred"], case["expected"]
                    if case.get("precision", 6) != 6:
                        continue
                    if not isinstance(expected, (int, bool)) or "think>" in pred or not all(
                            "\\boxed" in text or _is_bare_expression(text) for text in (gold, pred)):
                        continue  # other settings, or a prediction that is not a final answer
                    gold_boxes = boxed_contents(gold)
                    gold = gold_boxes[-1] if gold_boxes else gold  # the reference a data set would store
                    found.append({"source": f"{name}::{func.name}", "reference": gold, "pred": pred,
                                  "boxed": "\\boxed" in pred, "expected": bool(expected)})
    return found


def main() -> int:
    rows = cases(Path(sys.argv[1]))
    print(json.dumps({"licence": "Derived from the test suite of huggingface/Math-Verify (Apache-2.0, "
                      "https://github.com/huggingface/Math-Verify): gold/pred/expected data only."}))
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
