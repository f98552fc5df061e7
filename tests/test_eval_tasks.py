"""The cgpo_* lm-eval tasks without a model: the paper's settings survive lm-eval's task loading (the footguns),
the scoring filter keeps and scores every repeat, unscored samples are counted and left out of the mean,
per-repeat seeds of the API backends, and the Table 1 report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mdreward.eval import backends, harness, report
from mdreward.eval.cli import TASKS_PATH, expand_tasks

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def loaded_tasks(tmp_path_factory):
    from eval_support import offline_data_dir, shared_data_present
    from lm_eval.tasks import TaskManager

    if not shared_data_present():
        pytest.skip("shared data absent")
    folder = offline_data_dir(tmp_path_factory.mktemp("data"))
    manager = TaskManager(include_path=str(TASKS_PATH), include_defaults=False, metadata={"data_dir": str(folder)})
    return manager.load(["cgpo_seven"])


def test_group_holds_the_seven_tasks(loaded_tasks):
    assert sorted(loaded_tasks["tasks"]) == sorted(report.TASKS)
    assert list(loaded_tasks["groups"]) == ["cgpo_seven"]


@pytest.mark.parametrize("name", report.TASKS)
def test_paper_settings_survive_task_loading(loaded_tasks, name):
    task = loaded_tasks["tasks"][name]
    config = task.config
    assert config.repeats == harness.PAPER_SAMPLES == 4
    kwargs = config.generation_kwargs
    # greedy unless do_sample is true; "\n\n" stop unless until is given; vllm's 256 unless max_gen_toks is given
    assert kwargs["do_sample"] is True and kwargs["until"] == [] and kwargs["max_gen_toks"] == 8192
    assert (kwargs["temperature"], kwargs["top_p"]) == (0.6, 0.95)
    # one filter, ours: the default take_first would keep one repeat of four
    assert [f.name for f in task._filters] == [harness.FILTER_NAME]
    assert len(task.test_docs()) > 0 and task.doc_to_text(task.test_docs()[0]) == task.test_docs()[0]["prompt"]


def test_task_files_do_not_depend_on_the_working_directory(tmp_path):
    """Documents come from a loader function: loading works from any directory (no relative data_files)."""
    from test_eval_datasets import SHARED_DATA

    code = ("from lm_eval.tasks import TaskManager; import sys;"
            f"m = TaskManager(include_path={str(TASKS_PATH)!r}, include_defaults=False,"
            f" metadata={{'data_dir': {str(SHARED_DATA)!r}}});"
            "t = m.load(['cgpo_math500'])['tasks']['cgpo_math500']; print(len(t.test_docs()))")
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "500"


def _doc(item: dict) -> dict:
    return {"id": item["id"], "prompt": item["prompt"], "item": json.dumps(item)}


def test_filter_scores_every_repeat_and_counts_unscored():
    good = {"id": "t/1", "domain": "math", "prompt": "1+1?", "reference": "2", "tests": None,
            "metadata": {"benchmark": "t"}}
    broken = {**good, "id": "t/2", "reference": None}  # the math domain needs a reference: unscored, not wrong
    resps = [["\\boxed{2}", "\\boxed{3}", "\\boxed{2.0}", "no answer"], ["\\boxed{2}"] * 4]
    filtered = harness.ScoreWithMdreward().apply(resps, [_doc(good), _doc(broken)])
    assert [len(f) for f in filtered] == [4, 4]
    first = [harness.parse_sample_result(t) for t in filtered[0]]
    assert [s["value"] for s in first] == [100.0, 0.0, 100.0, 0.0]
    assert [s["status"] for s in first] == ["ok", "ok", "ok", "format_error"]
    assert first[0]["response"] == "\\boxed{2}" and first[0]["components"]["correct"] is True
    per_doc = [harness.process_results(d, [f]) for d, f in zip([_doc(good), _doc(broken)], filtered)]
    assert [p["unscored"] for p in per_doc] == [0, 4]
    assert all(harness.parse_sample_result(t)["error"] for t in filtered[1])
    assert harness.mean_of_samples([p["score"] for p in per_doc]) == 50.0  # 2 of 4 scored; unscored left out
    assert harness.total(p["samples"] for p in per_doc) == 8


def test_critic_scores_are_reported_times_ten():
    from mdreward.types import Score

    assert harness.sample_value("writingbench", Score.ok(7.5)) == 75.0
    assert harness.sample_value("math", Score.ok(1.0, correct=True)) == 100.0
    assert harness.sample_value("math", Score.unscored("judge down")) is None


def test_mean_is_over_samples_and_stderr_over_documents():
    assert harness.mean_of_samples([[100.0, 0.0, 0.0], [100.0]]) == 50.0
    assert harness.standard_error([[100.0, 100.0], [0.0, 0.0]]) == pytest.approx(50.0)
    assert harness.mean_of_samples([[], []]) != harness.mean_of_samples([[], []])  # NaN: nothing scored


def test_each_repeat_gets_its_own_reproducible_seed():
    from lm_eval.api.instance import Instance

    def request(doc_id: int) -> Instance:
        return Instance("generate_until", {"id": f"bench/{doc_id}"}, ("prompt", {"temperature": 0.6}), 0,
                        ("cgpo_x", doc_id, 4))

    first, second = request(0), request(1)
    seeded = backends.with_repeat_seeds([first] * 4 + [second] * 4, base_seed=1234)
    seeds = [r.args[1]["seed"] for r in seeded]
    assert len(set(seeds)) == 8
    assert seeds[:4] == [backends.repeat_seed(1234, "bench/0", k) for k in range(4)]
    assert "seed" not in first.args[1]  # the original request is left alone
    alone = backends.with_repeat_seeds([second] * 4, base_seed=1234)  # --limit or order does not change seeds
    assert [r.args[1]["seed"] for r in alone] == seeds[4:]
    assert [r.args[1]["seed"] for r in backends.with_repeat_seeds([second] * 4, base_seed=1)] != seeds[4:]


def test_seeded_backends_are_registered():
    from lm_eval.api.registry import get_model

    backends.register_backends()
    for name in backends.SEEDED_BACKENDS.values():
        assert get_model(name).generate_until is not None


def test_expand_tasks():
    assert expand_tasks("cgpo_seven") == list(report.TASKS)
    assert expand_tasks("cgpo_mbpp,cgpo_math500,cgpo_mbpp") == ["cgpo_mbpp", "cgpo_math500"]
    with pytest.raises(ValueError, match="unknown task 'gsm8k'"):
        expand_tasks("gsm8k")


def _summary(scores: dict[str, float]) -> dict:
    tasks = {t: {"score": s, "items": 2, "samples": 8, "unscored": 0, "stderr": 1.0} for t, s in scores.items()}
    return {"tasks": tasks, "avg": report.average(tasks), "settings": {"model": "hf", "samples": 4}}


def test_table_has_this_run_compared_runs_and_the_papers_rows(tmp_path):
    this = _summary({"cgpo_math500": 50.0, "cgpo_amc23": 25.0})
    other_dir = tmp_path / "baseline"
    other_dir.mkdir()
    (other_dir / "summary.json").write_text(json.dumps(_summary(dict.fromkeys(report.TASKS, 10.0))))
    table = report.table_markdown(this, report.load_compared([str(other_dir)]))
    lines = table.splitlines()
    assert "| **this run** | 50.00 | 25.00 | - | - | - | - | - | 37.50 (tasks run) |" in lines
    assert "| baseline | " + " | ".join(["10.00"] * 8) + " |" in lines
    assert "| paper: CGPO (7B) | 75.55 | 59.38 | 84.15 | 72.00 | 26.77 | 32.75 | 66.52 | 59.59 |" in lines
    assert "| paper: Joint Learning (3B) | 64.50 | 39.38 | 72.39 | 59.40 | 24.87 | 24.12 | 58.61 | 49.04 |" in lines
    assert sum(line.startswith("| paper:") for line in lines) == 10
    assert "Table 1 of the CGPO paper" in table


def test_published_averages_are_the_means_of_their_rows():
    """Guards the copy: each AVG is its row's mean up to rounding, except the paper's own 3B CGPO row
    (its seven scores average 50.43; the paper prints 50.42, copied as printed)."""
    for key, values in report.PAPER_TABLE1.items():
        tolerance = 0.015 if key == ("Qwen2.5-3B-Instruct", "CGPO") else 0.006
        assert sum(values[:7]) / 7 == pytest.approx(values[7], abs=tolerance), key


def test_average_is_none_when_a_task_has_no_score():
    assert report.average({"a": {"score": 10.0}, "b": {"score": None}}) is None


def test_writingbench_without_a_judge_is_a_clear_error_not_a_zero(tmp_path, capsys):
    from mdreward.cli import main

    rc = main(["eval", "--tasks", "cgpo_writingbench", "--output-dir", str(tmp_path)])
    assert rc == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    entry = summary["tasks"]["cgpo_writingbench"]
    assert entry["score"] is None and "--judge-url" in entry["error"]
    assert summary["avg"] is None and summary["timing"]["scoring_share_of_generation"] is None  # valid JSON, no NaN
    assert "--judge-url" in capsys.readouterr().err


def test_lm_eval_command_line_with_seeded_backend(tmp_path):
    """lm-eval's own CLI (through the wrapper that registers the seeded backends) against a real HTTP server."""
    from judge_server import JudgeServer, ScriptedEngine
    from test_eval_datasets import SHARED_DATA

    reply = "Converting: r = 3 and theta = pi/2, so \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"
    with JudgeServer(ScriptedEngine(lambda prompt: reply), model="scripted") as server:
        out = subprocess.run(
            [sys.executable, "-m", "mdreward.eval.lm_eval_cli", "--model", "mdreward-local-chat-completions",
             "--model_args", f"base_url={server.url}/chat/completions,model=scripted,max_retries=1",
             "--include_path", str(TASKS_PATH), "--tasks", "cgpo_math500", "--limit", "1", "--apply_chat_template",
             "--metadata", json.dumps({"data_dir": str(SHARED_DATA)}), "--output_path", str(tmp_path)],
            check=False, capture_output=True, text=True, timeout=300)
        seeds = [body["seed"] for body in server.faults.bodies]
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(seeds) == sorted(backends.repeat_seed(1234, "math500/test/precalculus/807.json", k) for k in range(4))
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())["results"]["cgpo_math500"]
    assert (results["score,mdreward"], results["samples,mdreward"], results["unscored,mdreward"]) == (100.0, 4, 0)


def test_think_block_is_stripped_by_default_and_required_on_request():
    item = {"id": "t/3", "domain": "math", "prompt": "1+1?", "reference": "2", "tests": None,
            "metadata": {"benchmark": "t"}}
    responses = [["<think>maybe \\boxed{3}</think> so \\boxed{2}", "\\boxed{2}"]]
    try:
        harness.RUN_SETTINGS.configure(harness.ScoringSettings())
        default = [harness.parse_sample_result(t) for t in harness.ScoreWithMdreward().apply(responses, [_doc(item)])[0]]
        harness.RUN_SETTINGS.configure(harness.ScoringSettings.from_metadata({"require_think": "true"}))
        strict = [harness.parse_sample_result(t) for t in harness.ScoreWithMdreward().apply(responses, [_doc(item)])[0]]
    finally:
        harness.RUN_SETTINGS.configure(harness.ScoringSettings())
    assert [r["value"] for r in default] == [100.0, 100.0]  # the answer after </think> counts, not the draft inside
    assert [r["value"] for r in strict] == [100.0, 0.0] and strict[1]["status"] == "format_error"
