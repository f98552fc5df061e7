"""Benchmark loaders (mdreward.eval.datasets): real shared data, determinism across processes,
prompt rendering, AMC float answers, HumanEval body-only answers through the real sandbox."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mdreward import Status
from mdreward.eval import load_benchmark, sample_for
from mdreward.eval.datasets import (CHOICE_PROMPT, LETTERS, BenchmarkDataError, number_text, option_permutation,
                                    seeded_sample)

REPO = Path(__file__).resolve().parents[1]
#: ../shared/data next to the checkout (or next to a folder of worktrees); never copied into the repo.
SHARED_DATA = next((p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()),
                   REPO.parent / "shared" / "data")
needs_data = pytest.mark.skipif(not (SHARED_DATA / "math500" / "test.jsonl").exists(), reason="shared data absent")
SUPERGPQA_ROWS = 230


def write_supergpqa_fixture(folder: Path, rows: int = SUPERGPQA_ROWS) -> Path:
    """A SuperGPQA-schema file (fields of the published SuperGPQA-all.jsonl) with ``rows`` questions."""
    path = folder / "supergpqa" / "SuperGPQA-all.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for k in range(rows):
            count = 4 + k % 7  # 4 to 10 options
            options = [f"value {k}-{j} ({'xyz'[j % 3]})" for j in range(count)]
            letter = LETTERS[(k * 7) % count]
            handle.write(json.dumps({
                "uuid": f"uuid-{k:04d}", "question": f"Question number {k}: which value is right?",
                "options": options, "answer": options[LETTERS.index(letter)], "answer_letter": letter,
                "discipline": "Science", "field": "Physics", "subfield": "Optics",
                "difficulty": ["easy", "middle", "hard"][k % 3], "is_calculation": bool(k % 2)}) + "\n")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The shared data folder's benchmarks (linked, not copied) plus the SuperGPQA fixture."""
    folder = tmp_path_factory.mktemp("data")
    for name in ("math500", "amc23", "humaneval", "mbpp", "gpqa", "writingbench"):
        if (SHARED_DATA / name).exists():
            (folder / name).symlink_to(SHARED_DATA / name)
    write_supergpqa_fixture(folder)
    return folder


@needs_data
@pytest.mark.parametrize("name, count, domain", [
    ("math500", 500, "math"), ("amc23", 40, "math"), ("humaneval", 164, "code"), ("mbpp", 500, "code"),
    ("gpqa_diamond", 198, "choice"), ("writingbench", 200, "writingbench"), ("supergpqa", 200, "choice")])
def test_counts_ids_and_domains_on_real_files(data_dir, name, count, domain):
    items = load_benchmark(name, data_dir)
    assert len(items) == count
    assert len({item["id"] for item in items}) == count
    assert all(item["id"].startswith(name + "/") and item["domain"] == domain for item in items)
    assert all(item["prompt"].strip() and item["metadata"]["benchmark"] == name for item in items)
    json.dumps(items)  # plain data: lm-eval docs and per-sample logs carry them


@needs_data
def test_mbpp_is_the_test_split_with_its_asserts(data_dir):
    items = load_benchmark("mbpp", data_dir)
    assert [int(i["id"].split("/")[1]) for i in items] == list(range(11, 511))
    rows = {r["task_id"]: r for r in map(json.loads, (SHARED_DATA / "mbpp" / "mbpp.jsonl").read_text().splitlines())}
    first = items[0]
    assert first["tests"]["assert"] == "\n".join(rows[11]["test_list"])
    assert first["tests"]["entry_point"] == "remove_Occ"
    with_setup = [i for i in items if "setup" in i["tests"]]
    assert [i["id"] for i in with_setup] == [f"mbpp/{t}" for t, r in rows.items()
                                            if 11 <= t <= 510 and r["test_setup_code"].strip()]
    assert rows[11]["test_list"][0] in first["prompt"] and rows[11]["text"] in first["prompt"]


@needs_data
def test_math_prompts_ask_for_a_boxed_answer(data_dir):
    item = load_benchmark("math500", data_dir)[0]
    assert item["id"] == "math500/test/precalculus/807.json"
    assert item["prompt"].startswith("Convert the point $(0,3)$") and item["prompt"].endswith("within \\boxed{}.")
    assert item["reference"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_amc_float_answers_become_numbers_as_written():
    assert [number_text(v) for v in (27.0, -3.0, 0.5, "27.0", "36", 1e3)] == ["27", "-3", "0.5", "27", "36", "1000"]
    with pytest.raises(BenchmarkDataError):
        number_text(True)


@needs_data
def test_amc_answers_score_with_the_math_domain(data_dir, scorer):
    items = load_benchmark("amc23", data_dir)
    raw = json.loads((SHARED_DATA / "amc23" / "test.jsonl").read_text().splitlines()[0])["answer"]
    first = items[0]
    assert raw == 27.0 and first["reference"] == "27"
    replies = ["<think>45*18/30</think> \\boxed{27}", "<think>45*18/30</think> \\boxed{27.0}",
               "<think>guess</think> \\boxed{28}"]
    scores = scorer.score_batch([sample_for(first, r) for r in replies])
    assert [s.reward for s in scores] == [1.0, 1.0, -0.5]


@needs_data
def test_gpqa_options_follow_the_seeded_permutation(data_dir):
    items = load_benchmark("gpqa_diamond", data_dir)
    first = items[0]
    options = first["metadata"]["options"]
    assert len(options) == 4 and first["reference"] in "ABCD"
    assert options[LETTERS.index(first["reference"])] == first["metadata"]["answer_text"]
    native = first["id"].split("/", 1)[1]
    order = option_permutation(f"gpqa/{native}", 4)
    assert options[order.index(0)] == first["metadata"]["answer_text"]
    for letter, text in zip(LETTERS, options):
        assert f"\n{letter}) {text}\n" in first["prompt"] + "\n"
    # randomized: the correct option is not always in the same place
    assert len({item["reference"] for item in items}) == 4
    assert max(sum(i["reference"] == x for i in items) for x in "ABCD") < 70


def test_option_permutation_is_a_stable_hash_not_python_hash():
    digest = hashlib.sha256(b"gpqa/rec06pnAkLOr2t2mp").digest()
    expected = list(range(4))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(expected)
    assert option_permutation("gpqa/rec06pnAkLOr2t2mp", 4) == expected
    assert sorted(option_permutation("x", 10)) == list(range(10))


def test_seeded_sample_is_the_guru_recipe():
    indices = list(range(1000))
    state = random.getstate()
    try:
        random.seed(42)
        random.shuffle(indices)
    finally:
        random.setstate(state)
    assert seeded_sample(1000) == indices[:200]
    assert seeded_sample(150) == seeded_sample(150, size=500)  # fewer rows than asked: all of them


def test_supergpqa_fixture_sample_options_and_letters(data_dir):
    items = load_benchmark("supergpqa", data_dir)
    rows = [json.loads(line) for line in (data_dir / "supergpqa" / "SuperGPQA-all.jsonl").read_text().splitlines()]
    assert [i["metadata"]["row"] for i in items] == seeded_sample(SUPERGPQA_ROWS)
    for item in items:
        row = rows[item["metadata"]["row"]]
        assert item["metadata"]["options"] == row["options"]  # as given, not shuffled
        assert item["reference"] == row["answer_letter"]
        assert item["prompt"].startswith(CHOICE_PROMPT.split("{question}")[0] + row["question"])
        assert f"\n{LETTERS[len(row['options']) - 1]}) {row['options'][-1]}\n" in item["prompt"]


def test_supergpqa_bad_letter_names_the_record(tmp_path):
    path = write_supergpqa_fixture(tmp_path, rows=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["answer_letter"] = "J"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchmarkDataError, match="supergpqa record 'uuid-0001': answer_letter 'J'"):
        load_benchmark("supergpqa", tmp_path)


@needs_data
def test_writingbench_items_carry_their_own_criteria(data_dir):
    items = load_benchmark("writingbench", data_dir)
    path = SHARED_DATA / "writingbench" / "v2_current" / "requirement" / "length" / "length_subset.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [i["id"] for i in items] == [f"writingbench/{rows[k]['index']}" for k in seeded_sample(len(rows))]
    by_index = {str(r["index"]): r for r in rows}
    for item in items:
        row = by_index[item["id"].split("/")[1]]
        assert item["metadata"]["criteria"] == row["checklist"] and item["prompt"] == row["query"]
        assert item["metadata"]["partial"] is True


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(BenchmarkDataError, match="math500/test.jsonl"):
        load_benchmark("math500", tmp_path)
    with pytest.raises(KeyError, match="unknown benchmark 'gpqa'"):
        load_benchmark("gpqa", tmp_path)


FINGERPRINT = """
import hashlib, json, sys
from mdreward.eval import load_benchmark
out = {}
for name in sys.argv[2:]:
    items = load_benchmark(name, sys.argv[1])
    out[name] = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
print(json.dumps(out))
"""


@needs_data
def test_items_are_identical_across_processes(data_dir):
    """Prompts, permutations and seed-42 samples do not depend on the process (nor on PYTHONHASHSEED)."""
    names = ["math500", "amc23", "humaneval", "mbpp", "gpqa_diamond", "supergpqa", "writingbench"]
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = subprocess.run([sys.executable, "-c", FINGERPRINT, str(data_dir), *names], capture_output=True,
                              text=True, env=env, timeout=300, check=True)
        runs.append(json.loads(done.stdout))
    here = {name: hashlib.sha256(json.dumps(load_benchmark(name, data_dir), sort_keys=True).encode()).hexdigest()
            for name in names}
    assert runs[0] == runs[1] == here


@pytest.fixture(scope="module")
def code_scorer():
    from mdreward import Scorer, ScoringConfig

    with Scorer(ScoringConfig(domain_options={"code": {"workers": 2}})) as s:
        yield s


@needs_data
def test_humaneval_body_only_and_full_answers_through_the_sandbox(data_dir, code_scorer):
    items = {i["id"]: i for i in load_benchmark("humaneval", data_dir)}
    with gzip.open(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as handle:
        problems = {f"humaneval/{p['task_id']}": p for p in map(json.loads, handle)}
    chosen = ["humaneval/HumanEval/0", "humaneval/HumanEval/32", "humaneval/HumanEval/53"]
    samples, expected = [], []
    for task in chosen:
        item, problem = items[task], problems[task]
        body = problem["canonical_solution"]
        flush_left = "\n".join(line.removeprefix("    ") for line in body.splitlines())
        for code, reward in [(body, 1.0), (flush_left, 1.0), (problem["prompt"] + body, 1.0),
                             ("    return None\n", -0.5)]:
            samples.append(sample_for(item, f"<think>Write it.</think>\n```python\n{code}\n```"))
            expected.append(reward)
    scores = code_scorer.score_batch(samples)
    assert [s.reward for s in scores] == expected, [(s.status, s.error, s.components.get("first_failure"))
                                                    for s in scores]
    assert all(s.status is Status.OK for s in scores)


@needs_data
def test_mbpp_reference_code_passes_and_a_wrong_one_fails(data_dir, code_scorer):
    items = load_benchmark("mbpp", data_dir)[:3]
    rows = {r["task_id"]: r for r in map(json.loads, (SHARED_DATA / "mbpp" / "mbpp.jsonl").read_text().splitlines())}
    samples = [sample_for(i, f"<think>x</think>\n```python\n{rows[int(i['id'].split('/')[1])]['code']}\n```")
               for i in items]
    samples.append(sample_for(items[0], "<think>x</think>\n```python\ndef remove_Occ(s, ch):\n    return s\n```"))
    assert [s.reward for s in code_scorer.score_batch(samples)] == [1.0, 1.0, 1.0, -0.5]


def test_complete_function_rules():
    from mdreward.extract import complete_function

    prefix = "def inc(x):\n    \"\"\"Add one.\"\"\"\n"
    whole = "def inc(x):\n    return x + 1\n"
    assert complete_function(whole, prefix, "inc") == whole
    assert complete_function("    return x + 1\n", prefix, "inc") == prefix.rstrip() + "\n    return x + 1\n"
    assert complete_function("return x + 1", prefix, "inc") == prefix.rstrip() + "\n    return x + 1\n"
    assert complete_function("  return (\n", prefix, "inc") == "  return (\n"  # cannot be completed: left as is


def test_bad_prefix_field_is_unscored(code_scorer):
    from mdreward import Sample

    sample = Sample("code", "<think>x</think>\n```python\n    return 1\n```", id="h1",
                    tests={"assert": "assert f() == 1", "entry_point": "f", "prefix": 7})
    score = code_scorer.score(sample)
    assert score.status is Status.ERROR and "tests.prefix" in score.error and "h1" in score.error


@needs_data
def test_code_and_amc_prompts(data_dir):
    with gzip.open(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as handle:
        first = json.loads(handle.readline())
    item = load_benchmark("humaneval", data_dir)[0]
    assert f"```python\n{first['prompt']}```" in item["prompt"] and "complete function" in item["prompt"]
    assert item["tests"] == {"assert": first["test"], "entry_point": first["entry_point"], "setup": first["prompt"],
                             "prefix": first["prompt"]}
    amc = load_benchmark("amc23", data_dir)[0]
    assert amc["prompt"].startswith("Cities $A$ and $B$ are $45$ miles apart.") and "\\boxed{}" in amc["prompt"]
