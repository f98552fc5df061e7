"""TRL integration: reward functions called as GRPOTrainer calls them, and a real GRPOTrainer run."""
from __future__ import annotations

import asyncio
import json
import logging
import math

import pytest

import mdreward
from mdreward.domains.math import TABLE as MATH
from mdreward.integrations.trl import (AsyncMdrewardReward, Columns, MdrewardReward, completion_text, prompt_text,
                                       reward_functions)

from integration_helpers import KEYWORD, KEYWORD_TABLE, registry_with, tiny_qwen2, tiny_tokenizer

HAS_CODE = "code" in mdreward.load_domains().names()


@pytest.fixture(scope="module")
def scorer():
    s = mdreward.Scorer(registry=registry_with(KEYWORD))
    yield s
    s.close()


MATH_OK = "<think>3 + 4 = 7</think> The answer is \\boxed{7}."
MATH_WRONG = "<think>guess</think> \\boxed{8}"
ROWS = {
    "prompts": ["What is 3 + 4?", "What is 3 + 4?", "Say blue.", "What is 3 + 4?", "Say blue.", "?"],
    "completions": [MATH_OK, MATH_WRONG, "<think>ok</think> BLUE!", "no think at all", "<think>x</think> red", "z"],
    "domain": ["math", "math", "keyword", "math", "keyword", "nonexistent"],
    "reference": ["7", "7", "blue", "7", None, "1"],
}


class Recorder:
    """Collects what a reward function logs through TRL's log_metric / log_extra."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.extra: dict[str, list] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name] = value

    def log_extra(self, column: str, values: list) -> None:
        self.extra[column] = values


def call(fn, rows=ROWS, recorder=None, **extra):
    columns = {k: v for k, v in rows.items() if k not in ("prompts", "completions")}
    if recorder is not None:
        extra.update(log_metric=recorder.log_metric, log_extra=recorder.log_extra)
    out = fn(prompts=rows["prompts"], completions=rows["completions"], completion_ids=None, trainer_state=None,
             **columns, **extra)
    return asyncio.run(out) if asyncio.iscoroutine(out) else out


def test_per_domain_functions_route_rows_and_leave_others_none(scorer):
    math_fn, keyword_fn = reward_functions(scorer, ["math", "keyword"])
    assert (math_fn.__name__, keyword_fn.__name__) == ("mdreward_math", "mdreward_keyword")
    assert call(math_fn) == [MATH["correct"], MATH["wrong"], None, MATH["format_error"], None, None]
    # the keyword row without a reference could not be scored: None, never 0
    assert call(keyword_fn) == [None, None, KEYWORD_TABLE["correct"], None, None, None]


def test_all_domains_function_scores_every_known_row(scorer):
    everything = MdrewardReward(scorer)
    assert everything.__name__ == "mdreward"
    assert call(everything) == [MATH["correct"], MATH["wrong"], KEYWORD_TABLE["correct"], MATH["format_error"],
                                None, None]


def test_logs_per_domain_rates_and_statuses(scorer):
    recorder = Recorder()
    call(MdrewardReward(scorer), recorder=recorder)
    m = recorder.metrics
    assert m["mdreward/math/reward_mean"] == pytest.approx((MATH["correct"] + MATH["wrong"] + MATH["format_error"]) / 3)
    assert m["mdreward/math/correct_frac"] == pytest.approx(1 / 3)
    assert m["mdreward/math/format_error_frac"] == pytest.approx(1 / 3)
    assert m["mdreward/math/unscored_frac"] == 0.0
    assert m["mdreward/keyword/unscored_frac"] == pytest.approx(1 / 2)
    assert m["mdreward/nonexistent/unscored_frac"] == 1.0
    assert recorder.extra["mdreward_status"] == ["ok", "ok", "ok", "format_error", "error", "error"]


def test_async_function_gives_the_same_rewards(scorer):
    sync = call(MdrewardReward(scorer, "math"))
    assert call(AsyncMdrewardReward(scorer, "math")) == sync
    assert asyncio.iscoroutinefunction(AsyncMdrewardReward.__call__)


def test_conversational_prompts_and_completions(scorer):
    rows = {
        "prompts": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 4?"}]] * 2,
        "completions": [[{"role": "assistant", "content": MATH_OK}],
                        [{"role": "assistant", "content": [{"type": "text", "text": "<think>a</think>"},
                                                           {"type": "text", "text": " \\boxed{8}"}]}]],
        "domain": ["math", "math"], "reference": ["7", "7"],
    }
    assert call(MdrewardReward(scorer, "math"), rows) == [MATH["correct"], MATH["wrong"]]
    assert prompt_text(rows["prompts"][0]) == "3 + 4?"
    assert completion_text(rows["completions"][1]) == "<think>a</think> \\boxed{8}"
    with pytest.raises(TypeError):
        completion_text(42)


def test_columns_are_configurable_and_a_missing_domain_column_is_a_clear_error(scorer):
    rows = {"prompts": ["q"], "completions": [MATH_OK], "task": ["math"], "answer": ["7"]}
    fn = MdrewardReward(scorer, columns=Columns(domain="task", reference="answer"))
    assert call(fn, rows) == [MATH["correct"]]
    with pytest.raises(ValueError, match="no domain column 'domain'.*answer"):
        call(MdrewardReward(scorer), rows)
    single = MdrewardReward(scorer, "math", columns=Columns(reference="answer"))  # single-domain dataset
    assert call(single, rows) == [MATH["correct"]]
    with pytest.raises(KeyError, match="did you mean"):
        MdrewardReward(scorer, "maths")


def test_a_bad_tests_column_is_unscored_and_named(scorer):
    rows = {"prompts": ["p", "p"], "completions": ["<think>x</think> blue", "<think>x</think> blue"],
            "domain": ["keyword", "keyword"], "reference": ["blue", "blue"], "id": ["a", "b"],
            "tests": ["{not json", None]}
    recorder = Recorder()
    assert call(MdrewardReward(scorer, "keyword"), rows, recorder) == [None, KEYWORD_TABLE["correct"]]
    assert recorder.metrics["mdreward/keyword/unscored_frac"] == 0.5
    assert recorder.extra["mdreward_keyword_status"] == ["error", "ok"]


@pytest.mark.skipif(not HAS_CODE, reason="the code domain is not installed yet")
def test_code_rows_with_tests_as_json_column(scorer):
    rows = {"prompts": ["add"], "completions": ["<think>x</think>\n```python\ndef add(a, b):\n    return a + b\n```"],
            "domain": ["code"], "reference": [None],
            "tests": [json.dumps({"assert": "assert add(1, 2) == 3", "entry_point": "add"})]}
    table = mdreward.load_domains().get("code").table
    assert call(MdrewardReward(scorer, "code"), rows) == [table["correct"]]


@pytest.mark.slow
def test_grpo_trainer_runs_with_mdreward_rewards_and_logs_per_domain_metrics(tmp_path):
    """A real GRPOTrainer, a tiny Qwen2 built here, a mixed math + code (when installed) + keyword dataset.

    No think block is required here, so the keyword rows ("does the completion contain an 'x'?") get
    rewards that differ within a group even from a random model: the rewards must move the weights.
    """
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    domains = ["math", "code", "keyword"] if HAS_CODE else ["math", "keyword"]
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "domain": "math",
             "reference": str(a + b), "tests": None} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    rows += [{"prompt": [{"role": "user", "content": f"Say something with a {c}."}], "domain": "keyword",
              "reference": c, "tests": None} for c in ("e", "x", "+", "q")]
    if HAS_CODE:
        rows += [{"prompt": [{"role": "user", "content": f"Write f(x) returning x + {k}."}], "domain": "code",
                  "reference": None, "tests": json.dumps({"assert": f"assert f(1) == {1 + k}", "entry_point": "f"})}
                 for k in range(4)]
    dataset = Dataset.from_list(rows)
    corpus = [MATH_OK, MATH_WRONG, "What is 1 + 2? Say something with a q. Write f(x) returning x + 1.",
              "```python\ndef f(x):\n    return x + 1\n```", "user assistant system"]
    tokenizer = tiny_tokenizer(corpus)
    model = tiny_qwen2(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = mdreward.ScoringConfig(format_rules=mdreward.FormatRules(require_think=False))
    scorer = mdreward.Scorer(config, registry=registry_with(KEYWORD))
    try:
        funcs = [MdrewardReward(scorer, "math"), AsyncMdrewardReward(scorer, "keyword")]
        funcs += [AsyncMdrewardReward(scorer, "code")] if HAS_CODE else []
        args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4 * len(domains), num_generations=4,
                          max_completion_length=16, max_steps=3, logging_steps=1, learning_rate=1e-2,
                          report_to="none", use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True,
                          seed=0)
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                              processing_class=tokenizer)
        trainer.train()
    finally:
        scorer.close()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry or "reward" in entry]
    assert len(logs) >= 3
    shown = [k for k in sorted(logs[0]) if k.startswith(("rewards/mdreward", "mdreward/"))]
    for entry in logs:  # visible with pytest -s: the per-domain metrics of each step
        print({k: round(entry[k], 3) for k in shown if isinstance(entry.get(k), float)})
    tables = {"math": MATH, "keyword": KEYWORD_TABLE}
    if HAS_CODE:
        tables["code"] = mdreward.load_domains().get("code").table
    for domain, table in tables.items():
        means = [e[f"rewards/mdreward_{domain}/mean"] for e in logs if f"rewards/mdreward_{domain}/mean" in e]
        finite = [v for v in means if v is not None and not math.isnan(v)]  # None/NaN: no row of it that step
        assert finite, f"no finite reward mean logged for {domain}: {means}"
        low, high = min(table.values.values()), max(table.values.values())
        assert all(low - 1e-6 <= v <= high + 1e-6 for v in finite), (domain, finite)
        rates = [e[f"mdreward/{domain}/unscored_frac"] for e in logs
                 if e.get(f"mdreward/{domain}/unscored_frac") is not None]
        assert rates and all(r == 0.0 for r in rates), (domain, rates)
        assert any(f"mdreward/{domain}/format_error_frac" in e for e in logs)
    assert any((e.get("rewards/mdreward_keyword/std") or 0) > 0 for e in logs), "keyword rewards never varied"
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters())
    assert moved > 0, "the rewards did not move the weights"


def test_rows_no_function_claims_are_reported_with_counts_and_reasons(scorer, caplog):
    rows = {"prompts": ["q"] * 5, "completions": [MATH_OK] * 5,
            "domain": ["math", "maths", "maths", "keyword", "math"], "reference": ["7"] * 5}
    recorder = Recorder()
    funcs = reward_functions(scorer, ["math"])
    with caplog.at_level(logging.WARNING, logger="mdreward.integrations.trl"):
        assert call(funcs[0], rows, recorder) == [MATH["correct"], None, None, None, MATH["correct"]]
    lines = [r.getMessage() for r in caplog.records if "no reward function scores" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "3 of 5 rows" in lines[0] and "'maths' x2" in lines[0] and "did you mean 'math'" in lines[0]
    assert "'keyword' x1" in lines[0] and "pass it to reward_functions" in lines[0]
    assert recorder.metrics["mdreward/unclaimed_frac"] == pytest.approx(3 / 5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mdreward.integrations.trl"):
        call(reward_functions(scorer, ["math", "keyword"])[1], rows)  # only the first function of a set reports
        call(reward_functions(scorer, ["math", "keyword"])[0], {**rows, "domain": ["math"] * 5})
    assert not [r for r in caplog.records if "no reward function scores" in r.getMessage()]


def test_status_column_comes_with_the_reason(scorer):
    recorder = Recorder()
    call(MdrewardReward(scorer), recorder=recorder)
    errors = recorder.extra["mdreward_error"]
    assert errors[:3] == [None, None, None]
    assert "think" in errors[3].lower()  # the format rule that failed
    assert "reference" in errors[4] and "did you mean" not in errors[4]
    assert "unknown domain 'nonexistent'" in errors[5]


def test_trl_floor_masks_rows_every_function_left_none(caplog):
    """The extra requires the first TRL whose GRPO leaves all-None rows out (reward 0 before: a hack)."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    from mdreward.integrations import trl as adapter

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    trl_req = next(Requirement(r) for r in pyproject["project"]["optional-dependencies"]["trl"]
                   if r.startswith("trl"))
    assert "1.5.1" not in trl_req.specifier and "1.6.0" in trl_req.specifier
    assert adapter.MIN_TRL == (1, 6)
    with caplog.at_level(logging.WARNING, logger="mdreward.integrations.trl"):
        adapter.check_trl_version("0.19.1")
        adapter.check_trl_version("1.16.0")
    assert len([r for r in caplog.records if "trl>=1.6" in r.getMessage()]) == 1

