"""The code domain's contract: the tests field, test splitting, stdout comparison, the plain-data
boundary and the strict reading of sandbox reports (no sandbox needed except where noted)."""
from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from code_support import code_sample
from mdreward import Sample, Scorer, ScoringConfig, Status
from mdreward.domains.code import CodeDomain, TestsFieldError, assert_steps, job_for
from mdreward.sandbox import AssertJob, LocalSandbox, StdioJob, normalize_stdout, stdout_matches
from mdreward.sandbox.harness import DecodeLimit, Decoder, Encoder, Unencodable, decode, encode
from mdreward.sandbox.verdict import ProtocolViolation, assert_results
from mdreward.timeouts import Timeouts
from mdreward.types import DEFAULT_FORMAT

FAST = Timeouts(sandbox_test_s=2.0, sandbox_run_s=4.0, sandbox_cpu_s=2.0)


# ---- the tests field ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tests, message", [
    (None, "field 'tests' is required"),
    ({}, "exactly one of 'assert' or 'stdio'"),
    ({"assert": "assert f() == 1", "stdio": []}, "exactly one of"),
    ({"assert": ""}, "non-empty string"),
    ({"assert": "assert f(("}, "not valid python"),
    ({"assert": "x = 1"}, "no top-level assert"),
    ({"assert": "def check(candidate):\n    assert candidate() == 1"}, "no check function with an entry_point"),
    ({"assert": "def check(c):\n    pass", "entry_point": "not a name"}, "not a python identifier"),
    ({"assert": "assert f() == 1", "entry_point": 3}, "entry_point must be a string"),
    ({"assert": "assert f() == 1", "setup": "def ("}, "tests.setup is not valid python"),
    ({"stdio": []}, "non-empty list"),
    ({"stdio": [{"input": "1"}]}, "tests.stdio[0]"),
    ({"stdio": [{"input": "1", "output": 2}]}, "tests.stdio[0]"),
    ({"stdio": [{"input": "", "output": ""}], "float_tol": -1}, "float_tol"),
    ({"stdio": [{"input": "", "output": ""}], "float_tol": True}, "float_tol"),
])
def test_bad_tests_fields_are_rejected_with_the_field_named(tests, message):
    with pytest.raises(TestsFieldError, match=message.replace("(", r"\(").replace("[", r"\[")):
        job_for(tests, "pass", stop_first=True)


def test_bad_tests_field_gives_an_unscored_record_naming_it():
    with Scorer(ScoringConfig(timeouts=FAST, domain_options={"code": {"workers": 1}})) as scorer:
        score = scorer.score({"domain": "code", "id": "p-9", "response": "<think>t</think>\n```python\nx = 1\n```",
                              "tests": {"stdio": "not a list"}})
        missing = scorer.score({"domain": "code", "id": "p-10", "response": "<think>t</think>\n```python\nx = 1\n```"})
        both_bad = scorer.score({"domain": "code", "id": "p-11", "response": "no think, no code", "tests": {"assert": ""}})
    assert both_bad.status is Status.ERROR  # the record's defect comes first: no -1.0 for an unusable record
    assert score.status is Status.ERROR and score.reward is None
    assert "record 'p-9'" in score.error and "tests.stdio" in score.error
    assert missing.status is Status.ERROR and "'tests'" in missing.error


def test_assert_steps_split_top_level_asserts_and_keep_other_statements():
    steps = assert_steps("import math\nassert f(1) == 1\nx = 2\ny = 3\nassert f(x) == y\n", "f")
    assert [(s.is_test, s.source) for s in steps] == [
        (False, "import math"), (True, "assert f(1) == 1"), (False, "x = 2\ny = 3"), (True, "assert f(x) == y")]
    looped = assert_steps("cases = [(1, 1), (2, 4)]\nfor x, y in cases:\n    assert sq(x) == y\ntry:\n    sq('a')\nexcept TypeError:\n    pass\n", "sq")
    assert [s.is_test for s in looped] == [False, True, True]  # a call in a try can fail: it is a test
    humaneval = assert_steps("METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 2\n", "inc")
    assert [s.is_test for s in humaneval] == [False, True] and humaneval[-1].source == "check(inc)"


def test_test_code_runs_as_a_program_every_statement_counts():
    """Trailing calls, helper calls and ``if __name__ == '__main__':`` blocks are tests; statements
    after the last test belong to it, so nothing that runs can fail without failing the record."""
    steps = assert_steps("def check(c):\n    assert c(1) == 2\nassert f(0) == 1\ncheck(f)\n", "f")
    assert [s.is_test for s in steps] == [False, True, True] and steps[-1].source == "check(f)"
    helper = assert_steps("def close(a, b):\n    assert abs(a - b) < 1e-9\nclose(f(1), 2.0)\nclose(f(2), 3.0)\n", "f")
    assert [s.is_test for s in helper] == [False, True, True]
    main = assert_steps("if __name__ == '__main__':\n    assert f(1) == 2\n", "f")
    assert [s.is_test for s in main] == [True]
    trailing = assert_steps("assert f(1) == 2\nx = {}['missing']\n", "f")
    assert [(s.is_test, s.source) for s in trailing] == [(True, "assert f(1) == 2\nx = {}['missing']")]


def test_jobs_carry_what_the_record_says():
    job = job_for({"stdio": [{"input": "1\n", "output": "2\n"}], "float_tol": 1e-6}, "print(2)", stop_first=False)
    assert isinstance(job, StdioJob) and job.float_tol == 1e-6 and not job.stop_first and job.total == 1
    job = job_for({"assert": "assert f() == 1", "entry_point": "f", "setup": "import os"}, "def f(): return 1", stop_first=True)
    assert isinstance(job, AssertJob) and job.setup == "import os" and job.entry_point == "f" and job.total == 1


# ---- stdout comparison ------------------------------------------------------------------------------------
@pytest.mark.parametrize("actual, expected, tol, same", [
    ("3\n", "3", None, True),
    ("3  \r\n\n\n", "3\n", None, True),
    ("1 2\n3\n", "1 2\n3", None, True),
    ("1  2\n", "1 2\n", None, False),          # inner whitespace is exact
    ("\n3\n", "3\n", None, False),             # leading blank lines count
    ("3.0\n", "3\n", None, False),             # no numeric equivalence unless asked
    ("3.0000001\n", "3\n", 1e-6, True),
    ("3.1\n", "3\n", 1e-6, False),
    ("1e6 x\n", "1000000.0 x\n", 0.0, True),   # tolerance mode compares numbers by value
    ("nan\n", "nan\n", 1e-6, True),            # identical text is identical
    ("nan\n", "NaN\n", 1e-6, False),
    ("inf\n", "1e308\n", 1e-6, False),
    ("abc\n", "abd\n", 1.0, False),
    ("1 2\n", "1 2 3\n", 1.0, False),
])
def test_stdout_comparison_rule(actual, expected, tol, same):
    assert stdout_matches(actual, expected, tol) is same


def test_normalize_stdout():
    assert normalize_stdout("a \nb\t\n\n") == ["a", "b"]
    assert normalize_stdout("") == []


# ---- the plain-data boundary ------------------------------------------------------------------------------
plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4)
                   | st.frozensets(st.integers() | st.text(max_size=4), max_size=4)),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(plain)
def test_plain_values_cross_exactly(value):
    back = decode(encode(value))
    assert back == value
    assert _types(back) == _types(value)


def _types(value):
    if isinstance(value, (list, tuple)):
        return (type(value), [_types(v) for v in value])
    if isinstance(value, dict):
        return (dict, sorted((repr(k), _types(v)) for k, v in value.items()))
    return type(value)


def test_rigged_subclasses_are_reduced_to_their_builtin_value():
    class Rigged(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    back = decode(encode(Rigged(5)))
    assert type(back) is int and back == 5 and back != 6


def test_objects_without_a_plain_value_cannot_cross():
    class Anything:
        def __eq__(self, other):
            return True

    with pytest.raises(Unencodable):
        encode(Anything())
    with pytest.raises(Unencodable):
        encode([1, {2: lambda: 3}])


@pytest.mark.parametrize("node", [["X", 1], ["I", "1"], ["L", "ab"], ["D", [[["I", 1]]]], ["F"], "I", [], ["R", "f"],
                                  ["Fr", "1/0"], ["N", 1]])
def test_malformed_values_are_rejected(node):
    with pytest.raises(ValueError):
        decode(node)


def test_value_shapes_cross():
    import collections
    from fractions import Fraction
    point = collections.namedtuple("Point", "x y")(1, 2)
    back = decode(encode(point))
    assert back == (1, 2) and back.x == 1 and type(back).__name__ == "Point"
    assert decode(encode(range(2, 9, 3))) == range(2, 9, 3)
    assert decode(encode({"a": 1}.keys())) == {"a"} and sorted(decode(encode({"a": 1, "b": 2}.values()))) == [1, 2]
    big = 3 ** 20000
    assert decode(encode(big)) == big and decode(encode(-big)) == -big
    assert decode(encode(Fraction(big, 7))) == Fraction(big, 7)


def test_aliases_and_in_place_changes_come_back_to_the_original_objects():
    row = [0, 0]
    grid = [row, row]
    extra = {"k": [1]}
    encoder = Encoder()
    node = encoder(((grid,), {"extra": extra}))
    sent = Decoder(bounded=False)
    args, kwargs = sent(node)
    assert args[0][0] is args[0][1]  # one object on the other side too
    args[0][0][0] = 5
    kwargs["extra"]["k"].append(2)
    origins = {id(obj): number for number, obj in enumerate(sent.table)}
    reply = Decoder(originals=encoder.containers)
    back = reply(Encoder(origins=origins)((None, tuple(sent.table))))
    reply.apply()
    assert back[0] is None and row == [5, 0] and grid[0] is row and extra == {"k": [1, 2]}


@pytest.mark.parametrize("node, why", [
    (["E", [["I", 1 + i * ((1 << 61) - 1)] for i in range(1000)]], "one hash value"),
    (["D", [[["I", 1 + i * ((1 << 61) - 1)], ["N"]] for i in range(1000)]], "one hash value"),
    (["Fr", ["Ih", "f" * 20000], ["I", 3]], "Fraction"),
    (["Ih", "f" * (1 << 19)], "int"),
    (["Dc", "1e999999999"], "Decimal"),
])
def test_values_too_costly_to_rebuild_are_refused(node, why):
    with pytest.raises(DecodeLimit, match=why):
        decode(node)


def test_special_floats_cross():
    assert math.isnan(decode(encode(float("nan"))))
    assert decode(encode([float("inf"), -0.0])) == [float("inf"), -0.0]


# ---- strict reports ------------------------------------------------------------------------------------------
def test_reports_must_be_in_order_and_in_range():
    ok = [{"ev": "test", "i": 0, "ok": True}, {"ev": "test", "i": 1, "ok": False, "err": "AssertionError"}]
    results, note = assert_results(ok, 2)
    assert [r.passed for r in results] == [True, False] and note is None
    for bad in ([{"ev": "test", "i": 1, "ok": True}], [{"ev": "test", "i": 0, "ok": 1}],
                [{"ev": "test", "i": 0, "ok": True}, {"ev": "test", "i": 0, "ok": True}],
                [{"ev": "test", "i": 2, "ok": True}], [{"ev": "surprise"}]):
        with pytest.raises(ProtocolViolation):
            assert_results(bad, 2)


# ---- batching (real sandbox) -----------------------------------------------------------------------------------
class CountingSandbox:
    """The real local sandbox, counting the jobs it is given."""

    name = "counting"

    def __init__(self, inner: LocalSandbox) -> None:
        self.inner = inner
        self.jobs = 0

    async def run(self, job):
        self.jobs += 1
        return await self.inner.run(job)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_identical_samples_in_a_batch_run_once():
    tests = {"assert": "assert sq(3) == 9", "entry_point": "sq"}
    sandbox = CountingSandbox(LocalSandbox(workers=1, timeouts=FAST).start())
    domain = CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST, sandbox=sandbox)
    good, bad = code_sample("def sq(x):\n    return x * x\n", tests), code_sample("def sq(x):\n    return x\n", tests)
    scores = asyncio.run(domain.score_batch([good, bad, good, good, bad]))
    asyncio.run(sandbox.aclose())
    assert [s.reward for s in scores] == [1.0, -0.5, 1.0, 1.0, -0.5]
    assert sandbox.jobs == 2


def test_every_record_comes_out_in_order():
    tests = {"assert": "assert one() == 1", "entry_point": "one"}
    records = [code_sample("def one():\n    return 1\n", tests, "a"),
               Sample("code", "no think block", tests=tests, id="b"),
               code_sample("def one():\n    return 2\n", {"stdio": "bad"}, "c"),
               code_sample("def one():\n    return 2\n", tests, "d")]
    with Scorer(ScoringConfig(timeouts=FAST, domain_options={"code": {"workers": 1}})) as scorer:
        scores = scorer.score_batch(records)
    assert [(s.status, s.reward) for s in scores] == [
        (Status.OK, 1.0), (Status.FORMAT_ERROR, -1.0), (Status.ERROR, None), (Status.OK, -0.5)]
