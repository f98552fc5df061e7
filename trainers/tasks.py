"""Prompts: synthetic verifiable tasks (scored by mdreward domains) and JSONL prompt files.

A task's training domain (``Prompt.domain``: what the update rules split by) may differ from the
mdreward domain that scores it (``Prompt.score_domain``): e.g. ``arith`` and ``max`` are two
training domains both scored by mdreward's ``math``.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

SYSTEM_PROMPT = ("Think step by step inside <think></think>, then give only the final answer "
                 "inside <answer></answer>.")


@dataclass(frozen=True)
class Prompt:
    id: str
    domain: str
    score_domain: str
    question: str
    reference: str | None = None
    tests: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    question: str
    reference: str | None
    tests: Mapping[str, Any] | None
    solution: str            # the worked response, correct and well formatted
    wrong_solution: str      # a well-formatted response with a wrong answer
    bad_format: tuple[str, ...]  # responses that break the format rules


@dataclass(frozen=True)
class SyntheticTask:
    """A generator of small verifiable problems scored by an mdreward domain."""

    name: str
    score_domain: str
    make: Callable[[random.Random], Problem]


def _math_problem(question: str, work: str, answer: int, rng: random.Random) -> Problem:
    wrong = answer + rng.choice([-2, -1, 1, 2])
    return Problem(question, str(answer), None, f"<think>{work}</think><answer>{answer}</answer>",
                   f"<think>{work}</think><answer>{wrong}</answer>",
                   (f"<think>{work} <answer>{answer}</answer>", f"<think>{work}</think> {answer}"))


def _arith(rng: random.Random) -> Problem:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return _math_problem(f"{a}+{b}=?", f"{a}+{b}={a + b}", a + b, rng)


def _max(rng: random.Random) -> Problem:
    xs = [rng.randint(0, 9) for _ in range(3)]
    return _math_problem(f"max {xs[0]} {xs[1]} {xs[2]}?", f"max of {xs[0]} {xs[1]} {xs[2]}", max(xs), rng)


def _prog(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 9), rng.randint(0, 9)
    tests = {"assert": f"assert f(0) == {b}\nassert f(2) == {2 * a + b}\nassert f(5) == {5 * a + b}",
             "entry_point": "f"}

    def code(k: int, c: int) -> str:
        return f"```python\ndef f(x):\n    return x*{k}+{c}\n```"

    wa, wb = (a + rng.choice([-1, 1]), b) if rng.random() < 0.5 else (a, b + rng.choice([-1, 1]))
    return Problem(f"f(x)=x*{a}+{b} in python", None, tests, f"<think>x*{a}+{b}</think>\n{code(a, b)}",
                   f"<think>x*{a}+{b}</think>\n{code(wa, wb)}",
                   (f"<think>x*{a}+{b}\n{code(a, b)}", f"<think>x*{a}+{b}</think>\nreturn x*{a}+{b}"))


def _pick(position: int, rng: random.Random) -> Problem:
    """The conflicting pair: ``first a b`` answers ``a``, ``last a b`` answers ``b`` (``a != b``).

    The two tasks share every prompt but the marker word, and each one's wrong answer is exactly the
    other's right answer (badly formatted responses carry either digit too), so a warm start on
    ``p_wrong = 0.5`` sees both digits equally often after either marker: the policy starts blind to
    the marker, and the two domains' policy gradients pull the shared weights in opposite directions
    (docs/trainers.md, "A task whose domains conflict").
    """
    a, b = rng.sample(range(10), 2)
    answer, other = (a, b) if position == 0 else (b, a)
    question = f"{'first' if position == 0 else 'last'} {a} {b}"
    return Problem(question, str(answer), None, f"<answer>{answer}</answer>", f"<answer>{other}</answer>",
                   (str(answer), str(other), f"<answer>{answer}", f"<answer>{other}"))


TASKS: dict[str, SyntheticTask] = {
    "arith": SyntheticTask("arith", "math", _arith),
    "max": SyntheticTask("max", "math", _max),
    "prog": SyntheticTask("prog", "code", _prog),
    "first": SyntheticTask("first", "math", lambda rng: _pick(0, rng)),
    "last": SyntheticTask("last", "math", lambda rng: _pick(1, rng)),
}


def synthetic_prompts(task: str, n: int, seed: int) -> list[Prompt]:
    """``n`` prompts of a synthetic task, deterministic in ``seed``."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; known: {sorted(TASKS)}")
    spec = TASKS[task]
    rng = random.Random(f"{task}:{seed}")
    out = []
    for i in range(n):
        prob = spec.make(rng)
        out.append(Prompt(f"{task}-{seed}-{i}", task, spec.score_domain, prob.question, prob.reference, prob.tests))
    return out


def load_prompt_file(path: str | Path) -> list[Prompt]:
    """Prompts from JSONL: ``domain`` and ``prompt`` required; ``score_domain`` defaults to ``domain``.

    Other fields follow mdreward's record contract (``reference``, ``tests``, ``id``, ``metadata``).
    """
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {line_no}: not JSON: {exc}") from None
            for key in ("domain", "prompt"):
                if not isinstance(rec.get(key), str) or not rec[key]:
                    raise ValueError(f"{path}: line {line_no}: field {key!r} must be a non-empty string")
            out.append(Prompt(str(rec.get("id", f"{Path(path).stem}-{line_no}")), rec["domain"],
                              rec.get("score_domain", rec["domain"]), rec["prompt"], rec.get("reference"),
                              rec.get("tests"), rec.get("metadata") or {}))
    return out


def sft_example(task: str, rng: random.Random, *, p_wrong: float, p_bad_format: float) -> tuple[str, str]:
    """A (question, response) pair for warm-starting a tiny model: noisy on purpose.

    ``p_wrong`` of the responses carry a wrong answer and ``p_bad_format`` break the format rules, so
    the warm-started policy is sometimes right and has room to learn.
    """
    prob = TASKS[task].make(rng)
    if rng.random() < p_bad_format:
        return prob.question, rng.choice(prob.bad_format)
    return prob.question, prob.wrong_solution if rng.random() < p_wrong else prob.solution
