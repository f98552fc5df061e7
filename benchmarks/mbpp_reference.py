"""MBPP reference solutions through the code domain: pass rate and every failure with its reason.

Records: the test split (task_ids 11-510) of ../shared/data/mbpp/mbpp.jsonl; the response is the
reference ``code`` in a fenced block; tests are the three ``test_list`` asserts, the
``test_setup_code`` as setup, and the function the first assert calls as entry point.
The analysis of each failure is in docs/code.md.

    python benchmarks/mbpp_reference.py [--workers 2]
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time

from common import SHARED_DATA, markdown_table, save

from mdreward import Sample, Scorer, ScoringConfig


def entry_point(test: str) -> str | None:
    for node in ast.walk(ast.parse(test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (SHARED_DATA / "mbpp" / "mbpp.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if 11 <= r["task_id"] <= 510]
    samples = []
    for row in rows:
        tests = {"assert": "\n".join(row["test_list"]), "entry_point": entry_point(row["test_list"][0])}
        if row["test_setup_code"].strip():
            tests["setup"] = row["test_setup_code"]
        samples.append(Sample(domain="code", id=str(row["task_id"]), tests=tests,
                              response=f"<think>Reference solution.</think>\n```python\n{row['code']}\n```"))
    with Scorer(ScoringConfig(domain_options={"code": {"workers": args.workers}})) as scorer:
        started = time.perf_counter()
        scores = scorer.score_batch(samples)
        wall = time.perf_counter() - started
    failures = [(row["task_id"], score) for row, score in zip(rows, scores) if score.reward != 1.0]
    passed = len(rows) - len(failures)
    print(f"MBPP test split: {passed}/{len(rows)} reference solutions pass ({100 * passed / len(rows):.1f}%), "
          f"{wall:.1f}s with {args.workers} workers")
    table = [[task, score.status.value, score.reward, score.error or score.components.get("first_failure")]
             for task, score in failures]
    print(markdown_table(["task_id", "status", "reward", "why"], table))
    save("mbpp_reference", {"problems": len(rows), "passed": passed, "wall_s": round(wall, 2),
                            "failures": [{"task_id": t, "why": w} for t, _, _, w in table]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
