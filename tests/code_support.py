"""Shared helpers of the code-domain tests: records from code, real benchmark loaders."""
from __future__ import annotations

import ast
import gzip
import json
import os
from pathlib import Path
from typing import Any

from mdreward.types import Sample

SHARED_DATA = Path(os.environ.get("MDREWARD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HUMANEVAL = SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"
MBPP = SHARED_DATA / "mbpp" / "mbpp.jsonl"


def response_with(code: str, reasoning: str = "Plan the function.") -> str:
    return f"<think>{reasoning}</think>\nHere is my solution.\n```python\n{code}\n```\n"


def code_sample(code: str, tests: dict[str, Any], sample_id: str | None = None) -> Sample:
    return Sample(domain="code", response=response_with(code), tests=tests, id=sample_id)


def humaneval_problems() -> list[dict[str, Any]]:
    with gzip.open(HUMANEVAL, "rt") as handle:
        return [json.loads(line) for line in handle]


def humaneval_tests(problem: dict[str, Any]) -> dict[str, Any]:
    """The prompt is trusted setup: helpers the tests call (``poly``, ``encode_cyclic``) come from
    it, not from the candidate; the entry point is rebound to the candidate after it."""
    return {"assert": problem["test"], "entry_point": problem["entry_point"], "setup": problem["prompt"]}


def humaneval_sample(problem: dict[str, Any], body: str) -> Sample:
    return code_sample(problem["prompt"] + body, humaneval_tests(problem), problem["task_id"])


def mbpp_test_split() -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in MBPP.read_text().splitlines() if line.strip()]
    return [r for r in rows if 11 <= r["task_id"] <= 510]


def mbpp_entry_point(row: dict[str, Any]) -> str:
    """The function the first assert calls (MBPP records name no entry point)."""
    for node in ast.walk(ast.parse(row["test_list"][0])):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id
    raise ValueError(f"MBPP task {row['task_id']}: no call in its first assert")


def mbpp_sample(row: dict[str, Any]) -> Sample:
    tests = {"assert": "\n".join(row["test_list"]), "entry_point": mbpp_entry_point(row)}
    if row["test_setup_code"].strip():
        tests["setup"] = row["test_setup_code"]
    return code_sample(row["code"], tests, str(row["task_id"]))


#: The same solution in the shapes real solutions take at the boundary (Python semantics unchanged):
#: the entry point as a bound method of a class, as a closure, and returning namedtuples for tuples
#: and OrderedDicts for dicts. ``{entry}`` is the entry point's name.
SHAPES = {
    "class_method": ("\n\nclass _Solution:\n    def __init__(self, impl):\n        self.impl = impl\n\n"
                     "    def solve(self, *args, **kwargs):\n        return self.impl(*args, **kwargs)\n\n\n"
                     "{entry} = _Solution({entry}).solve\n"),
    "closure": ("\n\ndef _wrap(impl):\n    def entry(*args, **kwargs):\n        return impl(*args, **kwargs)\n    return entry\n\n\n"
                "{entry} = _wrap({entry})\n"),
    "shaped_results": ("\n\nimport collections as _collections\n\n\ndef _shaped(impl):\n"
                       "    def entry(*args, **kwargs):\n        value = impl(*args, **kwargs)\n"
                       "        if type(value) is tuple and 0 < len(value) < 100:\n"
                       "            return _collections.namedtuple('Result', ['f%d' % i for i in range(len(value))])(*value)\n"
                       "        if type(value) is dict:\n            return _collections.OrderedDict(value)\n"
                       "        return value\n    return entry\n\n\n{entry} = _shaped({entry})\n"),
}


def reshaped(sample: Sample, entry: str, shape: str) -> Sample:
    """``sample`` with its code rewritten into ``shape`` (see ``SHAPES``)."""
    code = sample.response.split("```python\n", 1)[1].rsplit("\n```", 1)[0]
    return code_sample(code + SHAPES[shape].format(entry=entry), dict(sample.tests or {}), f"{sample.id}:{shape}")
