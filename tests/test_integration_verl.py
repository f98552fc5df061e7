"""verl integration: compute_score and its batch form, called the way verl's reward managers call them."""
from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import logging
import os

import numpy as np
import pytest

import mdreward
from mdreward.domains.math import TABLE as MATH
from mdreward.integrations import verl
from mdreward.integrations.verl import (DEFAULT_TABLE, RESULT_KEYS, DataSourceTable, GroundTruthError, VerlReward,
                                        code_tests)

HAS_CODE = "code" in mdreward.load_domains().names()


@pytest.fixture(scope="module")
def reward():
    r = VerlReward(mdreward.Scorer(), unscored_score=-7.0)
    yield r
    r.close()


def test_data_source_table_prefix_rules_and_overrides():
    assert DEFAULT_TABLE.domain_for("math__deepscaler_preview") == "math"
    assert DEFAULT_TABLE.domain_for("openai/gsm8k") == "math"
    assert DEFAULT_TABLE.domain_for("lighteval/MATH") == "math"
    assert DEFAULT_TABLE.domain_for("codegen__leetcode2k") == "code"
    assert DEFAULT_TABLE.domain_for("codeparrot/apps") == "code"
    assert DEFAULT_TABLE.domain_for("stem__webinstruct") == "science"
    assert DEFAULT_TABLE.domain_for("Idavidrein/gpqa") == "science"
    assert DEFAULT_TABLE.domain_for("mdreward:writing") == "writing"
    assert DEFAULT_TABLE.domain_for("my_private_set") is None
    custom = DEFAULT_TABLE.with_rules({"my_*": "math", "math__hard*": "science"})
    assert custom.domain_for("my_private_set") == "math"
    assert custom.domain_for("math__hard_olympiad") == "science"  # user rules come first
    assert custom.domain_for("math__easy") == "math"
    assert DataSourceTable((("x*", "code"),)).domain_for("math") is None


def test_math_rewards_follow_the_table_and_keys_never_change(reward):
    results = reward.compute_score_batch(
        ["math__a", "openai/gsm8k", "lighteval/MATH", "unknown_source", "math__b"],
        ["<think>2+2</think> The answer is \\boxed{4}.", "<think>hm</think> \\boxed{5}", "no think block \\boxed{4}",
         "<think>x</think> \\boxed{4}", "<think>x</think> <answer>1/2</answer>"],
        ["4", "4", "4", "4", "0.5"],
        [{"index": 0}, {"index": 1}, {"index": 2}, {"index": 3}, {"index": 4}])
    assert [r["score"] for r in results] == [MATH["correct"], MATH["wrong"], MATH["format_error"], -7.0, MATH["correct"]]
    assert [r["status"] for r in results] == ["ok", "ok", "format_error", "error", "ok"]
    assert [r["scored"] for r in results] == [True, True, True, False, True]
    assert [r["acc"] for r in results] == [1.0, 0.0, 0.0, None, 1.0]
    assert [r["pred"] for r in results][:2] == ["4", "5"]
    assert "'unknown_source'" in results[3]["error"] and "'3'" in results[3]["error"]
    for r in results:  # verl stacks every key across the batch: same keys, same types
        assert tuple(r) == RESULT_KEYS
        assert isinstance(r["score"], float) and isinstance(r["acc"], (float, type(None))) and isinstance(r["format_ok"], float)
        assert isinstance(r["status"], str) and isinstance(r["error"], str) and isinstance(r["pred"], str)
    stacked = {k: np.array([r[k] for r in results]) for k in RESULT_KEYS}
    assert stacked["score"].dtype == np.float64 and stacked["scored"].dtype == np.bool_
    assert verl.scored_mask(stacked) == [True, True, True, False, True]


def test_batch_equals_per_sample_and_accepts_numpy_like_verl(reward):
    sources = np.array(["math__x", "math__y", "math__z"], dtype=object)
    solutions = np.array(["<think>a</think> \\boxed{\\frac{6}{4}}", "<think>a</think> \\boxed{2}", "<think>a"], dtype=object)
    truths = np.array(["1.5", "3", "1"], dtype=object)
    extras = np.array([{"index": 10}, {"index": 11, "question": "what?"}, None], dtype=object)
    batch = reward.compute_score_batch(sources, solutions, truths, extras)
    single = [reward.compute_score(s, r, t, e) for s, r, t, e in zip(sources, solutions, truths, extras)]
    assert batch == single
    assert [r["score"] for r in batch] == [MATH["correct"], MATH["wrong"], MATH["format_error"]]
    with pytest.raises(ValueError, match="differ in length"):
        reward.compute_score_batch(["math"], ["a", "b"], ["1"], None)


def test_bad_ground_truth_is_unscored_and_named(reward):
    out = reward.compute_score("math__x", "<think>a</think> \\boxed{1}", {"not": "a string"}, {"index": 42})
    assert out["scored"] is False and out["score"] == -7.0
    assert "'42'" in out["error"] and "ground_truth" in out["error"]
    batch = reward.compute_score_batch(["math__x", "math__x"], ["<think>a</think> \\boxed{1}"] * 2, ["1", 3j], None)
    assert batch[0]["scored"] and not batch[1]["scored"] and batch[1]["error"].startswith("batch item 1 ")
    one_item_list = reward.compute_score("math__x", "<think>a</think> \\boxed{1}", np.array(["1"], dtype=object))
    assert one_item_list["score"] == MATH["correct"]


def test_unscored_records_are_logged_never_silent(reward, caplog):
    with caplog.at_level(logging.WARNING, logger="mdreward.integrations.verl"):
        out = reward.compute_score("no_such_source", "<think>a</think> \\boxed{1}", "1")
    assert out["scored"] is False and out["status"] == "error"
    assert any("could not be scored" in rec.message for rec in caplog.records)


def test_async_form(reward):
    out = asyncio.run(reward.acompute_score("math__x", "<think>a</think> \\boxed{7}", "7"))
    assert out["score"] == MATH["correct"] and out["domain"] == "math"


def test_module_functions_loaded_the_way_verl_loads_them():
    """verl loads ``path=/file.py`` with spec_from_file_location, or ``pkg://module``; then wraps
    the function with ``custom_reward_function.reward_kwargs``."""
    spec = importlib.util.spec_from_file_location("custom_module_test", verl.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    by_pkg = importlib.import_module("mdreward.integrations.verl")
    try:
        for loaded in (module, by_pkg):
            fn = functools.partial(loaded.compute_score, think_in_prompt=True, data_source_map={"mine*": "math"})
            # the chat template opened <think>: the response carries only '...</think>'
            out = fn(data_source="mine_v1", solution_str="reasoning</think> \\boxed{9}", ground_truth="9",
                     extra_info={"index": 3})
            assert out["score"] == MATH["correct"], out
            strict = loaded.compute_score("mine_v1", "reasoning</think> \\boxed{9}", "9")
            assert strict["scored"] is False  # the default table has no 'mine*' rule
            batch = loaded.compute_score_batch(["math__a", "math__b"], ["<think>x</think> \\boxed{1}", "nothing"],
                                               ["1", "1"], None, require_think=True)
            assert [b["score"] for b in batch] == [MATH["correct"], MATH["format_error"]]
    finally:
        module.close_shared()
        by_pkg.close_shared()


def test_code_tests_from_verl_ground_truth_shapes():
    stdio = code_tests('{"inputs": ["1 2\\n", ["3", "4"]], "outputs": ["3\\n", "7"]}')
    assert stdio == {"stdio": [{"input": "1 2\n", "output": "3\n"}, {"input": "3\n4", "output": "7"}]}
    call = code_tests({"inputs": [[1, 2], [[3], "a"]], "outputs": [3, None], "fn_name": "f"})
    assert call == {"assert": "assert f(*[1, 2]) == 3\nassert f(*[[3], 'a']) == None", "entry_point": "f"}
    assert code_tests({"inputs": [[float("inf")]], "outputs": [1], "fn_name": "g"})["assert"].startswith(
        "assert g(*__import__('json').loads(")
    assert code_tests({"functional": "assert add(1, 2) == 3"}, {"entry_point": "add"}) == {
        "assert": "assert add(1, 2) == 3", "entry_point": "add"}
    assert code_tests("def check(candidate):\n    assert candidate(1) == 2\n", {"entry_point": "inc"}) == {
        "assert": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "inc"}
    own = {"stdio": [{"input": "", "output": "hi"}], "float_tol": None}
    assert code_tests(own) == {"stdio": [{"input": "", "output": "hi"}]}
    for bad in ({"inputs": ["1"], "outputs": []}, {"weird": 1}, 12, "   "):
        with pytest.raises(GroundTruthError):
            code_tests(bad)


@pytest.mark.skipif(not HAS_CODE, reason="the code domain is not installed yet")
def test_code_records_through_the_real_code_domain(reward):
    program = "<think>read two ints</think>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    wrong = "<think>oops</think>\n```python\nprint(0)\n```"
    truth = '{"inputs": ["1 2\\n", "5 7\\n"], "outputs": ["3\\n", "12\\n"]}'
    results = reward.compute_score_batch(["codegen__x", "codecontests"], [program, wrong], [truth, truth], None)
    code_table = mdreward.load_domains().get("code").table
    assert [r["score"] for r in results] == [code_table["correct"], code_table["wrong"]], results
    assert all(r["domain"] == "code" for r in results)


def test_unscored_records_have_acc_none(reward):
    out = reward.compute_score("no_such_source", "<think>a</think> \\boxed{1}", "1")
    assert out["scored"] is False and out["acc"] is None  # verl's validation metrics skip None; 0.0 would count
    assert reward.compute_score("math__x", "<think>a</think> \\boxed{2}", "1")["acc"] == 0.0


def test_verl_reads_the_config_file_as_the_cli_does(tmp_path):
    """The [judge] table (and flags) reach verl's Scorer through the one loader the CLI uses."""
    from mdreward.config import load_config
    path = tmp_path / "mdreward.toml"
    path.write_text('[format]\nthink_in_prompt = true\n\n[judge]\nurl = "http://127.0.0.1:9/v1"\nmodel = "judge-m"\n')
    try:
        shared = verl.shared_reward(config=str(path), judge_model="other-m")
        expected = load_config(str(path), judge_model="other-m")
        assert shared.scorer.config.judge == expected.judge and shared.scorer.config.judge["url"] == "http://127.0.0.1:9/v1"
        assert shared.scorer.config.format_rules == expected.format_rules
    finally:
        verl.close_shared()


def test_cpu_pools_are_shared_among_verls_reward_workers():
    assert verl.bounded_workers({}, 8, cpus=64) == {"math": {"workers": 8}, "code": {"workers": 8}}
    assert verl.bounded_workers({}, 8, cpus=4) == {"math": {"workers": 1}, "code": {"workers": 1}}
    assert verl.bounded_workers({"math": {"workers": 3, "x": 1}}, 2, cpus=8)["math"] == {"workers": 3, "x": 1}
    try:
        shared = verl.shared_reward()  # no reward_workers: verl's default reward.num_workers (8)
        assert shared.scorer.config.domain_options["math"]["workers"] == max(1, (os.cpu_count() or 1) // 8)
    finally:
        verl.close_shared()


class _EchoJson:
    """Returns the reference it was given as the answer (to see what the adapter passed)."""

    name = "acme.grid"

    def __init__(self, *, table, **_):
        self.table = table

    async def score_batch(self, samples):
        return [mdreward.Score.ok(1.0, answer=s.reference, correct=True) for s in samples]

    async def aclose(self):
        return None


def test_a_domain_declares_its_data_sources_and_gets_structured_ground_truth_as_json():
    spec = mdreward.DomainSpec("acme.grid", _EchoJson, "grid", MATH, required_fields=("response", "reference"),
                               data_sources=("acme_grid*",), reference_format="json")
    registry = mdreward.load_domains(autoload_plugins=False)
    registry.register(spec.name, spec, provider="acme")
    reward = VerlReward(mdreward.Scorer(registry=registry))
    try:
        truth = {"header": np.array(["a", "b"]), "rows": np.array([["1", "x"], ["2", "y"]])}
        result = reward.compute_score("acme_grid_v2", "<think>t</think> x", truth, {"index": 1})
        assert result["domain"] == "acme.grid" and result["scored"], result
        assert result["pred"] == '{"header": ["a", "b"], "rows": [["1", "x"], ["2", "y"]]}'
        explicit = VerlReward(reward.scorer, table=DEFAULT_TABLE.with_rules({"acme_grid*": "math"}))
        assert explicit.table.domain_for("acme_grid_v2") == "math"  # data_source_map wins over a domain's rule
    finally:
        reward.close()
