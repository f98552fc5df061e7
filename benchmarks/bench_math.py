"""Math scoring throughput: mdreward vs the loop most RL stacks run.

Baseline (same run): ``math_verify.verify(parse(gold), parse(response))`` per sample, one process,
with the gold wrapped in ``\boxed{}`` as verl does (a bare MATH500 answer otherwise fails to parse).
Batches: GRPO-like, 8 responses per MATH500 problem mixing correct, equivalent-but-rewritten,
wrong, hedged and malformed answers (scored in 128-sample calls); a GRPO batch of simple answers
(the worked solution as reasoning, mostly the reference boxed, some rewritten or wrong, scored in
512-sample steps: what an RL run mostly sees); plus an all-unique batch (one response per problem)
where deduplication and caching cannot help.

    python benchmarks/bench_math.py [--problems 200] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from fractions import Fraction
from typing import Any

from common import SHARED_DATA, latency_summary, markdown_table, save

from mdreward import DEFAULT_TIMEOUTS, Sample, Scorer, ScoringConfig


def rewrite_equivalent(answer: str, rng: random.Random) -> str:
    """A differently written but equal answer, when one is easy to make; else spacing changes."""
    frac = re.fullmatch(r"\\frac\{(-?\d+)\}\{(\d+)\}", answer)
    if frac:
        value = Fraction(int(frac.group(1)), int(frac.group(2)))
        options = [f"{value.numerator}/{value.denominator}", answer.replace("\\frac", "\\dfrac")]
        if 10 ** 6 % value.denominator == 0:
            options.append(str(float(value)))
        return rng.choice(options)
    if re.fullmatch(r"-?\d+", answer):
        return rng.choice([f"{answer}.0", f"{{{answer}}}", f"\\text{{{answer}}}", f"{answer}\\,"])
    return rng.choice([answer.replace(",", ", "), f"{answer} ", answer.replace("\\frac", "\\dfrac")])


def wrong_answer(answer: str, others: list[str], rng: random.Random) -> str:
    if re.fullmatch(r"-?\d+", answer):
        return str(int(answer) + rng.choice([-2, -1, 1, 3, 10]))
    return rng.choice(others)


def responses_for(problem: dict, others: list[str], rng: random.Random) -> list[str]:
    gold = problem["answer"]
    think = "<think>" + problem["solution"][:1500].replace("\\boxed", "") + "</think>"
    made = [
        think + f" So the final answer is $\\boxed{{{gold}}}$.",
        think + f" So the final answer is $\\boxed{{{gold}}}$.",
        think + f" <answer>{rewrite_equivalent(gold, rng)}</answer>",
        think + f" Therefore \\boxed{{{rewrite_equivalent(gold, rng)}}}.",
        think + f" The answer is \\boxed{{{wrong_answer(gold, others, rng)}}}.",
        think + f" The answer is \\boxed{{{gold}}} or \\boxed{{{wrong_answer(gold, others, rng)}}}.",
        problem["solution"][:800] + f" \\boxed{{{gold}}}",  # no think block: malformed
        think + f" The answer is \\boxed{{{gold}",  # unterminated box: malformed
    ]
    rng.shuffle(made)
    return made


def simple_responses_for(problem: dict, others: list[str], rng: random.Random) -> list[str]:
    """A GRPO group of 8 on one problem late in training: mostly the reference, one rewritten, two wrong."""
    gold = problem["answer"]
    think = "<think>" + problem["solution"].replace("\\boxed", "") + "</think>"
    finals = [gold] * 5 + [rewrite_equivalent(gold, rng), wrong_answer(gold, others, rng), wrong_answer(gold, others, rng)]
    made = [think + f" The final answer is $\\boxed{{{final}}}$." for final in finals]
    rng.shuffle(made)
    return made


def load_problems(n: int) -> list[dict]:
    with (SHARED_DATA / "math500" / "test.jsonl").open() as f:
        return [json.loads(line) for line in f][:n]


def naive(samples: list[Sample]) -> tuple[list[bool], list[float]]:
    from math_verify import parse, verify

    verdicts, latencies = [], []
    for s in samples:
        started = time.perf_counter()
        # gold wrapped as verl's Math-Verify reward does: a bare MATH500 answer has no LaTeX delimiters
        verdicts.append(bool(verify(parse("\\boxed{" + s.reference + "}"), parse(s.response))))
        latencies.append(time.perf_counter() - started)
    return verdicts, latencies


def ours_batch(samples: list[Sample], workers: int, batch_size: int) -> tuple[list[Any], float]:
    with Scorer(ScoringConfig(domain_options={"math": {"workers": workers}})) as scorer:
        scorer.warm_up(["math"])
        started = time.perf_counter()
        scores = []
        for i in range(0, len(samples), batch_size):
            scores += scorer.score_batch(samples[i:i + batch_size])
        return scores, time.perf_counter() - started


def ours_latency(samples: list[Sample], workers: int) -> list[float]:
    with Scorer(ScoringConfig(domain_options={"math": {"workers": workers}})) as scorer:
        scorer.warm_up(["math"])
        latencies = []
        for s in samples:
            started = time.perf_counter()
            scorer.score(s)
            latencies.append(time.perf_counter() - started)
        return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="samples per scoring call (a GRPO step's batch)")
    parser.add_argument("--simple-batch-size", type=int, default=512, help="samples per step for the simple batch")
    args = parser.parse_args()
    rng = random.Random(0)
    problems = load_problems(args.problems)
    answers = [p["answer"] for p in problems]
    grpo = [Sample("math", r, reference=p["answer"]) for p in problems for r in responses_for(p, answers, rng)]
    simple = [Sample("math", r, reference=p["answer"]) for p in problems for r in simple_responses_for(p, answers, rng)]
    # one response per problem, of a random kind: no two (answer, reference) pairs repeat
    unique = [Sample("math", rng.choice(responses_for(p, answers, rng)), reference=p["answer"]) for p in problems]

    from mdreward.domains.math_check import warm_up

    warm_up()  # the naive loop gets the same sympy warm-up the workers get
    rows, results = [], {}
    batches = (("GRPO batches (8 per problem)", grpo, args.batch_size),
               ("GRPO simple answers (8 per problem, worked solution as reasoning)", simple, args.simple_batch_size),
               ("all-unique", unique, args.batch_size))
    for name, samples, batch_size in batches:
        print(f"[{name}] naive loop over {len(samples)} samples...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        naive_verdicts, naive_lat = naive(samples)
        naive_s = time.perf_counter() - started
        print(f"[{name}] mdreward...", file=sys.stderr, flush=True)
        scores, ours_s = ours_batch(samples, args.workers, batch_size)
        ours_lat = ours_latency(samples[: min(len(samples), 200)], args.workers)
        naive_rate, ours_rate = len(samples) / naive_s, len(samples) / ours_s
        judged = [(v, sc) for v, sc in zip(naive_verdicts, scores)
                  if sc.status.value == "ok" and sc.components.get("method") not in ("hedged", "several_final_answers")]
        disagree = [(sc.answer, v, sc.components["correct"]) for v, sc in judged if v != sc.components["correct"]]
        results[name] = {"samples": len(samples), "batch_size": batch_size, "naive_samples_per_s": naive_rate, "mdreward_samples_per_s": ours_rate,
                         "speedup": ours_rate / naive_rate, "naive_latency": latency_summary(naive_lat),
                         "mdreward_latency_single_call": latency_summary(ours_lat),
                         "verdict_agreement_on_well_formed": 1 - len(disagree) / max(1, len(judged)),
                         "disagreements": disagree[:20],
                         "naive_true_ours_false": [d for d in disagree if d[1]][:20],
                         "rewards": {str(k): sum(1 for s in scores if s.reward == k) for k in (1.0, -0.5, -1.0, None)}}
        rows.append((name, len(samples), f"{naive_rate:.1f}", f"{ours_rate:.1f}", f"{ours_rate / naive_rate:.2f}x",
                     f"{latency_summary(naive_lat)['p50_ms']:.1f} / {latency_summary(naive_lat)['p99_ms']:.1f}",
                     f"{latency_summary(ours_lat)['p50_ms']:.1f} / {latency_summary(ours_lat)['p99_ms']:.1f}"))
    print(markdown_table(("batch", "samples", "naive samples/s", "mdreward samples/s", "ratio",
                          "naive p50/p99 ms", "mdreward p50/p99 ms (one call per sample)"), rows))
    for name, r in results.items():
        print(f"{name}: verdict agreement with the naive loop on well-formed, unhedged answers: "
              f"{100 * r['verdict_agreement_on_well_formed']:.1f}%; first disagreements (answer, naive, ours): "
              f"{r['disagreements'][:5]}; naive-correct/ours-wrong: {r['naive_true_ours_false'][:8]}")
    load = os.getloadavg()
    print(f"workers={args.workers}, timeouts enforced (hard kill {DEFAULT_TIMEOUTS.math_hard_kill_s}s), "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    path = save("math", {"workers": args.workers, "problems": args.problems, "load_average": load, "results": results})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
