"""False-fail rate of the code domain: correct solutions that do not score 1.0.

Workloads: the HumanEval canonical solutions (164) and the MBPP test-split reference solutions
(500), each as written and rewritten into the shapes of ``tests/code_support.SHAPES`` (the entry
point as a bound method of a class, as a closure, and returning namedtuples/OrderedDicts; Python's
semantics unchanged), plus the ``shapes`` cases of ``tests/cases/code_adversarial.jsonl``
(generators, map, range, views, closures, lambdas as arguments, in-place changes through keywords,
deques and aliases, big ints, namedtuples, ``from solution import``, class APIs). Target: 0.

    python benchmarks/code_false_fails.py [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from common import ROOT, markdown_table, save

sys.path.insert(0, str(ROOT / "tests"))
from code_support import (SHAPES, code_sample, humaneval_problems, humaneval_sample, mbpp_entry_point,  # noqa: E402
                          mbpp_sample, mbpp_test_split, reshaped)

from mdreward import Scorer, ScoringConfig  # noqa: E402


def workloads() -> dict[str, list]:
    problems = humaneval_problems()
    rows = mbpp_test_split()
    human = [(humaneval_sample(p, p["canonical_solution"]), p["entry_point"]) for p in problems]
    mbpp = [(mbpp_sample(r), mbpp_entry_point(r)) for r in rows]
    out: dict[str, list] = {"humaneval": [s for s, _ in human], "mbpp": [s for s, _ in mbpp]}
    for shape in SHAPES:
        out[f"humaneval:{shape}"] = [reshaped(s, entry, shape) for s, entry in human]
        out[f"mbpp:{shape}"] = [reshaped(s, entry, shape) for s, entry in mbpp]
    cases = [json.loads(line) for line in (ROOT / "tests" / "cases" / "code_adversarial.jsonl").read_text().splitlines()]
    out["shape cases"] = [code_sample(c["code"], c["tests"], c["id"]) for c in cases if c["category"] == "shapes"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    table, payload = [], {}
    with Scorer(ScoringConfig(domain_options={"code": {"workers": args.workers}})) as scorer:
        for name, samples in workloads().items():
            started = time.perf_counter()
            scores = scorer.score_batch(samples)
            failed = {s.id: s_.error or s_.components.get("first_failure") for s, s_ in zip(samples, scores)
                      if s_.reward != 1.0}
            table.append([name, len(samples), len(failed), f"{100 * len(failed) / len(samples):.2f}%",
                          "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))[:300] or "-"])
            payload[name] = {"samples": len(samples), "false_fails": failed, "wall_s": round(time.perf_counter() - started, 2)}
    print(markdown_table(["workload", "correct solutions", "not 1.0", "false-fail rate", "which, why"], table))
    save("code_false_fails", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
