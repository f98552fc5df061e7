"""MATH500 task scoring: mdreward's ``cgpo_math500`` scorer vs lm-eval's built-in MATH500 metrics.

One fixed set of responses: the 8-per-problem mix ``bench_math.py`` builds (correct, rewritten
but equal, wrong, hedged, no think block, unterminated box), for MATH500 items from
``mdreward.eval.load_benchmark``. Scored by
- ours: the math domain through ``Scorer`` with the evaluation format rules (a ``<think>`` block
  is optional and stripped), correct = ``components["correct"]``;
- lm-eval (baseline, same run): ``minerva_math500`` ``process_results`` (its ``exact_match`` and
  ``math_verify`` metrics) and ``hendrycks_math500`` ``process_results`` (``exact_match``), on
  docs from their own ``process_docs``, imported from the installed lm-eval package.
Every disagreement with ours is classified by response kind and by who is right, against a
careful truth per kind (``truth``), with examples to hand-check.

minerva's utils need ``antlr4-python3-runtime`` 4.11 (lm-eval[math]); where the shared
environment pins 4.9 (omegaconf, hydra), run it from a venv made with ``--system-site-packages``
plus ``pip install 'antlr4-python3-runtime==4.11.*'``.

    python benchmarks/bench_eval_math.py [--problems 500] [--workers 2]
"""
from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from importlib.metadata import version
from typing import Any

from bench_math import responses_for
from common import SHARED_DATA, markdown_table, save

from mdreward import FormatRules, Scorer, ScoringConfig
from mdreward.eval import load_benchmark, sample_for

EVAL_FORMAT = FormatRules(require_think=False)  # the evaluation tasks' default (--require-think off)


def kind_of(response: str, gold: str) -> str:
    """Which of bench_math's templates made ``response`` (they differ in their last sentence)."""
    if not response.startswith("<think>"):
        return "no_think_gold"
    tail = response.split("</think>", 1)[1]
    if tail == f" So the final answer is $\\boxed{{{gold}}}$.":
        return "gold"
    if tail.startswith(" <answer>"):
        return "equal_rewrite_answer_tag"
    if tail.startswith(" Therefore \\boxed{"):
        return "equal_rewrite_boxed"
    if " or \\boxed{" in tail:
        return "hedge"
    if tail == f" The answer is \\boxed{{{gold}":
        return "unterminated_box"
    return "wrong"


def _value(text: str) -> Fraction | str:
    """An independent careful reading of a short answer: exact value of a number, else a squashed string."""
    text = re.sub(r"\\[dt]frac", r"\\frac", text.strip().strip("$"))
    text = re.sub(r"\\text\{([^{}]*)\}|\\left|\\right|\\[,!;: ]", r"\1", text).replace(" ", "").strip("{}")
    number = re.fullmatch(r"(-?\d+(?:\.\d+)?)", text)
    if number:
        return Fraction(number.group(1))
    frac = re.fullmatch(r"(-?)\\frac\{?(\d+)\}?\{?(\d+)\}?|(-?\d+)/(\d+)", text)
    if frac:
        sign, a, b, a2, b2 = frac.groups()
        value = Fraction(int(a or a2), int(b or b2))
        return -value if sign else value
    return text


def boxes(text: str) -> list[str]:
    """Contents of the complete ``\\boxed{...}`` in ``text`` (own brace matching, any nesting depth)."""
    found = []
    for start in (m.end() for m in re.finditer(r"\\boxed\{", text)):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append(text[start:i])
                break
    return found


def truth(kind: str, response: str, gold: str) -> bool:
    """Whether the response's final answer is right, by construction and a careful value check.

    gold, rewrites and the no-think answer (think is optional in evaluation) are right, except a
    rewrite that turned a thousands separator into a list (``10,\\!080`` -> ``10, \\!080``);
    an unterminated box gives no answer; a hedge (two different boxed answers) is not an answer,
    unless both are equal; a "wrong" answer is right only when it equals the gold by value.
    """
    if kind in ("equal_rewrite_answer_tag", "equal_rewrite_boxed") and re.fullmatch(r"\d{1,3}(?:,(?:\\!)?\d{3})+", gold):
        return ", " not in response.split("</think>", 1)[1]
    if kind in ("gold", "equal_rewrite_answer_tag", "equal_rewrite_boxed", "no_think_gold"):
        return True
    if kind == "unterminated_box":
        return False
    values = {str(_value(b)) for b in boxes(response.split("</think>", 1)[1])}
    return values == {str(_value(gold))}


#: Hand-checked labels of every disagreement class seen (metric prefix, response kind) -> why.
LABELS = {
    ("minerva_math500 exact_match", "*"): "minerva reads only 'Final Answer: The final answer is X. I hope it is "
    "correct.' (its 4-shot format); a chat answer in \\boxed{} or <answer> is [invalidanswer]",
    ("hendrycks_math500 exact_match", "*"): "hendrycks compares the text between the first and last '$' of the "
    "whole response with the gold string; reasoning with '$' or any words around the answer fail",
    ("minerva_math500 math_verify", "unterminated_box"): "Math-Verify over the whole response reads the gold "
    "from the unclosed \\boxed{ or from the reasoning; no complete final answer was given",
    ("minerva_math500 math_verify", "equal_rewrite_answer_tag"): "Math-Verify does not read <answer> tags and "
    "takes another expression of the response (from the reasoning)",
    ("minerva_math500 math_verify", "hedge"): "Math-Verify credits one of two different boxed answers; a hedge "
    "is wrong",
    ("minerva_math500 math_verify", "equal_rewrite_boxed"): "\\boxed{\\text{10}}: Math-Verify does not read a "
    "number inside \\text{}",
    ("*", "wrong"): "built as a wrong answer, but the other problem's answer it used equals this gold: right",
    ("*", "hedge"): "built as a hedge, but both boxed answers equal the gold: not a hedge, right",
}


def label(metric: str, kind: str, right: str) -> str:
    for key in ((metric, kind), (metric, "*"), ("*", kind)):
        if key in LABELS and (key[0] != "*" or right == "mdreward"):
            return LABELS[key]
    return "UNLABELLED: hand-check the examples"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import datasets
    from lm_eval.tasks.hendrycks_math import utils as hendrycks
    from lm_eval.tasks.minerva_math import utils as minerva

    items = load_benchmark("math500", SHARED_DATA)[: args.problems]
    rows = [{"problem": i["prompt"], "solution": s, "answer": i["reference"]}
            for i, s in zip(items, _solutions(args.problems))]
    rng = random.Random(0)  # bench_math.py's seed: the first problems get the same responses
    answers = [str(i["reference"]) for i in items]
    pairs = [(k, r) for k, (item, row) in enumerate(zip(items, rows))
             for r in responses_for({"answer": item["reference"], "solution": row["solution"]}, answers, rng)]
    samples = [sample_for(items[k], r) for k, r in pairs]
    kinds = [kind_of(r, str(items[k]["reference"])) for k, r in pairs]
    truths = [truth(kind, r, str(items[k]["reference"])) for kind, (k, r) in zip(kinds, pairs)]

    with Scorer(ScoringConfig(format_rules=EVAL_FORMAT, domain_options={"math": {"workers": args.workers}})) as scorer:
        _, warm_s = timed(lambda: scorer.warm_up(["math"]))
        scores, ours_s = timed(lambda: scorer.score_batch(samples))
    ours = [bool(s.scored and s.components.get("correct")) for s in scores]
    unscored = sum(not s.scored for s in scores)

    minerva_docs = list(minerva.process_docs(datasets.Dataset.from_list(rows)))
    hendrycks_docs = list(hendrycks.process_docs(datasets.Dataset.from_list(rows)))
    minerva_out, minerva_s = timed(lambda: [minerva.process_results(minerva_docs[k], [r]) for k, r in pairs])
    hendrycks_out, hendrycks_s = timed(lambda: [hendrycks.process_results(hendrycks_docs[k], [r]) for k, r in pairs])
    metrics = {
        "mdreward cgpo_math500": ours,
        "minerva_math500 exact_match": [bool(o["exact_match"]) for o in minerva_out],
        "minerva_math500 math_verify": [bool(o["math_verify"]) for o in minerva_out],
        "hendrycks_math500 exact_match": [bool(o["exact_match"]) for o in hendrycks_out],
    }
    seconds = {"mdreward cgpo_math500": ours_s, "minerva_math500 exact_match": minerva_s,
               "minerva_math500 math_verify": minerva_s, "hendrycks_math500 exact_match": hendrycks_s}
    n = len(samples)
    summary, disagreements = {}, {}
    for name, verdicts in metrics.items():
        summary[name] = {"accuracy_pct": round(100 * sum(verdicts) / n, 2),
                         "agrees_with_truth_pct": round(100 * sum(v == t for v, t in zip(verdicts, truths)) / n, 2),
                         "scoring_s": round(seconds[name], 3), "samples_per_s": round(n / seconds[name], 1)}
        if name == "mdreward cgpo_math500":
            continue
        classes: Counter[tuple[str, str]] = Counter()
        examples: dict[str, list[dict[str, Any]]] = {}
        for idx, (mine, theirs) in enumerate(zip(ours, verdicts)):
            if mine == theirs:
                continue
            right = "mdreward" if mine == truths[idx] else "lm-eval"
            key = (kinds[idx], right)
            classes[key] += 1
            if len(examples.setdefault(f"{key[0]} / {right} right", [])) < 3:
                k, response = pairs[idx]
                examples[f"{key[0]} / {right} right"].append({
                    "id": items[k]["id"], "reference": items[k]["reference"], "response_end": response[-160:],
                    "mdreward": mine, "lm_eval": theirs, "truth": truths[idx]})
        disagreements[name] = {"total": sum(classes.values()),
                               "classes": [{"kind": kd, "right": who, "count": c, "why": label(name, kd, who)}
                                           for (kd, who), c in sorted(classes.items(), key=lambda x: -x[1])],
                               "examples": examples}
    ours_vs_truth = [{"id": items[k]["id"], "kind": kinds[i], "reference": items[k]["reference"],
                      "truth": truths[i], "mdreward": ours[i], "response_end": r[-160:]}
                     for i, (k, r) in enumerate(pairs) if ours[i] != truths[i]]
    baseline = summary["minerva_math500 exact_match"]["scoring_s"]
    for entry in summary.values():
        entry["time_vs_minerva"] = round(entry["scoring_s"] / baseline, 3)
    print(markdown_table(("scorer", "accuracy %", "agrees with truth %", "scoring s", "samples/s", "time vs minerva"),
                         [(k, v["accuracy_pct"], v["agrees_with_truth_pct"], v["scoring_s"], v["samples_per_s"],
                           v["time_vs_minerva"]) for k, v in summary.items()]))
    for name, found in disagreements.items():
        print(f"\n{name}: {found['total']} disagreements with mdreward")
        print(markdown_table(("response kind", "who is right", "count", "why (hand-checked)"),
                             [(c["kind"], c["right"], c["count"], c["why"]) for c in found["classes"]]))
    print(f"\nmdreward vs truth: {len(ours_vs_truth)} differences", ours_vs_truth[:5])
    save("eval_math", {
        "problems": len(items), "samples": n, "truth_correct_pct": round(100 * sum(truths) / n, 2),
        "kinds": dict(Counter(kinds)), "mdreward_unscored": unscored, "mdreward_warm_up_s": round(warm_s, 3),
        "workers": args.workers, "summary": summary, "mdreward_vs_truth": ours_vs_truth, "disagreements": disagreements,
        "versions": {"lm_eval": version("lm_eval"), "math_verify": version("math-verify"),
                     "antlr4": version("antlr4-python3-runtime"), "sympy": version("sympy")},
        "load_average": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()})
    return 0


def _solutions(count: int) -> list[str]:
    """The MATH500 worked solutions (lm-eval's process_docs reads the gold from their last box)."""
    import json

    with (SHARED_DATA / "math500" / "test.jsonl").open() as handle:
        return [json.loads(line)["solution"] for line in handle][:count]


if __name__ == "__main__":
    sys.exit(main())
