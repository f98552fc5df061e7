"""The six-domain experiment's plugin-scored tasks (cgpo_zebra, cgpo_hitab): Guru-schema loaders, prompts, scoring
through lm-eval's task loading path (no model), the missing-plugin error and the Table 8 report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mdreward.eval import cli, harness, report
from mdreward.eval.datasets import GURU_FILES, BenchmarkDataError, load_benchmark
from mdreward.registry import DISABLE_AUTOLOAD_ENV

ZEBRA_TABLES = [
    {"header": ["House", "Name", "Pet"], "rows": [["1", "Arnold", "cat"], ["2", "Eric", "dog"]]},
    {"header": ["House", "Name", "Drink"],
     "rows": [["1", "Peter", "tea"], ["2", "Alice", "milk"], ["3", "Bob", "water"]]},
]
HITAB_ANSWERS = ["45.2", "ontario|quebec"]


def guru_row(source: str, index: int, question: str, truth: Any) -> dict[str, Any]:
    """One row in Guru's parquet schema (Reasoning360's verl format)."""
    return {"data_source": source, "prompt": [{"role": "user", "content": question}], "ability": source.split("__")[0],
            "reward_model": {"style": "rule", "ground_truth": truth}, "extra_info": {"index": index, "split": "test"}}


def zebra_rows() -> list[dict[str, Any]]:
    return [guru_row("logic__zebra_puzzle_dataset", 10 + k, f"Zebra puzzle {k}: who keeps what? Answer in <answer>.",
                     table) for k, table in enumerate(ZEBRA_TABLES)]


def hitab_rows() -> list[dict[str, Any]]:
    return [guru_row("table__hitab", 7 + k, f"Table {k} ... Put the final answer in \\boxed{{}}.", answer)
            for k, answer in enumerate(HITAB_ANSWERS)]


def write_guru_fixtures(folder: Path, suffix: str = ".parquet") -> Path:
    """``folder`` laid out for ``--data-dir`` with small Zebra and HiTab files in Guru's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, rows in (("zebra", zebra_rows()), ("hitab", hitab_rows())):
        path = folder / (GURU_FILES[name] + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return write_guru_fixtures(tmp_path)


def test_loaders_map_guru_rows_to_the_plugin_domains(data_dir):
    zebra = load_benchmark("zebra", data_dir)
    assert [item["id"] for item in zebra] == ["zebra/10", "zebra/11"]
    assert {item["domain"] for item in zebra} == {"logic"}
    assert [json.loads(item["reference"] or "") for item in zebra] == ZEBRA_TABLES
    assert zebra[0]["prompt"] == "Zebra puzzle 0: who keeps what? Answer in <answer>."
    assert zebra[0]["metadata"]["data_source"] == "logic__zebra_puzzle_dataset"
    hitab = load_benchmark("hitab", data_dir)
    assert [(item["id"], item["domain"], item["reference"]) for item in hitab] == [
        ("hitab/7", "table", "45.2"), ("hitab/8", "table", "ontario|quebec")]
    assert hitab[1]["prompt"].startswith("Table 1 ...")


def test_loading_is_deterministic_and_jsonl_reads_the_same(data_dir, tmp_path):
    jsonl = write_guru_fixtures(tmp_path / "jsonl", ".jsonl")
    for name in ("zebra", "hitab"):
        first, again, other = (load_benchmark(name, folder) for folder in (data_dir, data_dir, jsonl))
        assert first == again
        strip = [{**item, "metadata": {**item["metadata"], "source": None}} for item in first]
        assert strip == [{**item, "metadata": {**item["metadata"], "source": None}} for item in other]


def test_list_answers_are_joined_and_bad_records_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / (GURU_FILES["hitab"] + ".parquet")
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([guru_row("table__hitab", 1, "q", ["ontario", "quebec"])]), path)
    assert load_benchmark("hitab", tmp_path)[0]["reference"] == "ontario|quebec"
    pq.write_table(pa.Table.from_pylist([guru_row("table__hitab", 3, "q", ["a|b", "c"])]), path)
    with pytest.raises(BenchmarkDataError, match="hitab record '3'.*'\\|'"):
        load_benchmark("hitab", tmp_path)
    broken = {**ZEBRA_TABLES[0], "rows": [["1", "Arnold"]]}  # a row shorter than the header
    zebra = tmp_path / (GURU_FILES["zebra"] + ".jsonl")
    zebra.write_text(json.dumps(guru_row("logic__zebra_puzzle_dataset", 5, "q", broken)) + "\n")
    with pytest.raises(BenchmarkDataError, match="zebra record '5': reward_model.ground_truth"):
        load_benchmark("zebra", tmp_path)
    with pytest.raises(BenchmarkDataError, match="missing benchmark file"):
        load_benchmark("zebra", tmp_path / "nowhere")


@pytest.fixture()
def loaded(data_dir):
    pytest.importorskip("lm_eval")
    if cli.missing_plugins(list(report.PLUGIN_TASKS)):  # scripts/setup-tests.sh and CI install both plugins
        pytest.skip("the logic/table plugin domains are not installed")
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(cli.TASKS_PATH), include_defaults=False,
                          metadata={"data_dir": str(data_dir)})
    return manager.load(["cgpo_zebra", "cgpo_hitab"])["tasks"]


def _scored(task: Any, responses: list[list[str]]) -> list[list[dict[str, Any]]]:
    docs = list(task.test_docs())
    (score_filter,) = task._filters
    filtered = score_filter.filters[0]().apply(responses, docs)  # the filter lm-eval built from the task file
    return [[harness.parse_sample_result(text) for text in per_doc] for per_doc in filtered]


def test_tasks_render_prompts_and_keep_the_paper_settings(loaded):
    for name, task in loaded.items():
        docs = list(task.test_docs())
        assert len(docs) == 2
        assert task.doc_to_text(docs[0]) == docs[0]["prompt"]
        kwargs = task.config.generation_kwargs
        assert task.config.repeats == 4 and kwargs["do_sample"] is True and kwargs["until"] == []
        assert [f.name for f in task._filters] == [harness.FILTER_NAME], name


def test_zebra_scores_right_wrong_and_partial_tables(loaded):
    right = f"<think>solved</think><answer>{json.dumps(ZEBRA_TABLES[0])}</answer>"
    half = {**ZEBRA_TABLES[0], "rows": [["1", "Eric", "dog"], ["2", "Eric", "dog"]]}  # 4 of 6 cells right
    wrong = {**ZEBRA_TABLES[1], "rows": [["3", "Bob", "milk"], ["1", "Peter", "water"], ["2", "Alice", "tea"]]}
    results = _scored(loaded["cgpo_zebra"], [
        [right, f"<answer>{json.dumps(half)}</answer>"],
        [f"<answer>{json.dumps(wrong)}</answer>", "no answer block"]])
    assert [s["value"] for s in results[0]] == [100.0, pytest.approx(100 * 4 / 6)]
    assert [s["value"] for s in results[1]] == [0.0, 0.0]
    assert [s["status"] for s in results[1]] == ["ok", "format_error"]
    assert all(s["value"] is not None for doc in results for s in doc)  # nothing unscored


def test_hitab_scores_a_right_and_a_wrong_answer(loaded):
    results = _scored(loaded["cgpo_hitab"], [["\\boxed{45.2\\%}", "\\boxed{45.21}"],
                                             ["\\boxed{Quebec | Ontario}", "\\boxed{ontario}"]])
    assert [[s["value"] for s in doc] for doc in results] == [[100.0, 0.0], [100.0, 0.0]]


def test_plugin_tasks_are_not_in_the_seven_and_form_the_six_domain_group(data_dir):
    assert cli.expand_tasks("cgpo_zebra,cgpo_hitab") == ["cgpo_zebra", "cgpo_hitab"]
    assert cli.expand_tasks("cgpo_seven") == list(report.TASKS)
    assert cli.expand_tasks("cgpo_six_domain") == list(report.TASKS) + ["cgpo_zebra", "cgpo_hitab"]
    group = (cli.TASKS_PATH / "cgpo_six_domain.yaml").read_text()
    assert all(f"  - {task}\n" in group for task in report.SIX_DOMAIN_TASKS)
    assert "zebra" not in (cli.TASKS_PATH / "cgpo_seven.yaml").read_text()


def test_missing_plugin_is_a_clear_error_and_the_other_tasks_still_run(monkeypatch, tmp_path, capsys):
    assert cli.missing_plugins(["cgpo_zebra", "cgpo_hitab", "cgpo_math500"]) == {}
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")  # the plugins' entry points are not loaded: as if not installed
    missing = cli.missing_plugins(["cgpo_zebra", "cgpo_hitab", "cgpo_math500"])
    assert set(missing) == {"cgpo_zebra", "cgpo_hitab"}
    assert "'logic' domain" in missing["cgpo_zebra"] and "mdreward-logic" in missing["cgpo_zebra"]
    ran: list[list[str]] = []

    def fake_run(args: Any, tasks: list[str]) -> dict[str, Any]:  # stands in for the model run only
        ran.append(tasks)
        metrics = {"score,mdreward": 50.0, "samples,mdreward": 8, "unscored,mdreward": 0, "score_se,mdreward": 1.0}
        return {"results": {t: metrics for t in tasks}, "n-samples": {t: {"effective": 2} for t in tasks}}

    monkeypatch.setattr(cli, "run_lm_eval", fake_run)
    from mdreward.cli import build_parser

    args = build_parser().parse_args(["eval", "--tasks", "cgpo_zebra,cgpo_math500,cgpo_hitab",
                                      "--output-dir", str(tmp_path)])
    assert cli.cmd_eval(args) == 1
    assert ran == [["cgpo_math500"]]
    assert "error: cgpo_zebra needs the 'logic' domain" in capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks"]["cgpo_math500"]["score"] == 50.0
    hitab = summary["tasks"]["cgpo_hitab"]
    assert hitab["score"] is None and "mdreward-table" in hitab["error"]


def test_table8_rows_as_printed(tmp_path):
    summary = {"tasks": {"cgpo_zebra": {"score": 40.0}, "cgpo_hitab": {"score": 60.0}}, "avg": 50.0, "settings": {}}
    table = report.table_markdown(summary)
    lines = table.splitlines()
    assert lines[0] == "# Table 8 (six domains)"
    assert ("| run | MATH500 | AMC | HumanEval | MBPP | GPQA-diamond | SuperGPQA | WritingBench | Zebra | HiTab | AVG |"
            in lines)
    assert "| **this run** | - | - | - | - | - | - | - | 40.00 | 60.00 | 50.00 (tasks run) |" in lines
    assert ("| paper: CGPO (7B) | 74.90 | 59.84 | 83.88 | 70.80 | 26.91 | 31.72 | 65.08 | 37.63 | 69.57 | 57.81 |"
            in lines)
    assert ("| paper: FAMO (7B) | 75.30 | 55.02 | 82.93 | 68.60 | 22.64 | 31.58 | 63.09 | 36.84 | 68.71 | 56.08 |"
            in lines)
    assert "Table 8 of the CGPO paper" in table
    for values in report.PAPER_TABLE8.values():  # AVG as printed is the plain mean of the nine
        assert sum(values[:-1]) / 9 == pytest.approx(values[-1], abs=0.005)
    assert report.table_markdown({"tasks": {"cgpo_math500": {"score": 1.0}}, "settings": {}}).startswith("# Table 1")
    pytest.importorskip("matplotlib")
    assert report.table_png(tmp_path / "table.png", summary) and (tmp_path / "table.png").stat().st_size > 0


def test_hub_default_asks_for_the_pinned_guru_files(monkeypatch):
    """Without data_dir the loaders ask the hub for Guru's file at the pinned revision (no network here: the
    ``datasets`` call is recorded and answered with fixture rows)."""
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[Any, ...]] = []

    def load_dataset(path: str, config: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((path, config, kwargs))
        return zebra_rows() if "zebra" in kwargs["data_files"] else hitab_rows()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    zebra, hitab = load_benchmark("zebra"), load_benchmark("hitab")
    assert calls == [
        ("LLM360/guru-RL-92k", None, {"split": "train", "revision": "99b6793c4e57ad1bf4fecf737c098b8b7b50610b",
                                      "data_files": "offline_eval/logic__zebra_puzzle_dataset_200.parquet"}),
        ("LLM360/guru-RL-92k", None, {"split": "train", "revision": "main",
                                      "data_files": "offline_eval/table__hitab_300.parquet"})]
    assert zebra[0]["metadata"]["source"] == ("hub:LLM360/guru-RL-92k@99b6793c4e57ad1bf4fecf737c098b8b7b50610b "
                                              "offline_eval/logic__zebra_puzzle_dataset_200.parquet (train)")
    assert [item["reference"] for item in hitab] == HITAB_ANSWERS
