import json
import subprocess
import sys

import pytest


def mdreward(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mdreward.cli", *args], capture_output=True, text=True, timeout=timeout)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_example_run_keeps_every_record_in_order_with_a_summary(tmp_path):
    out = tmp_path / "scored.jsonl"
    result = mdreward("score", "--example", "-o", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    example = mdreward("example").stdout.splitlines()
    scored = read(out)
    assert len(scored) == len(example)
    for source, got in zip(example, scored):
        try:
            original = json.loads(source)
        except json.JSONDecodeError:
            assert got["status"] == "error" and f"line {len(example)}" in got["error"]
            continue
        assert {k: got[k] for k in original} == original  # every input field kept
        assert got["status"] in {"ok", "format_error", "error"}
        assert (got["reward"] is None) == (got["status"] == "error")
    by_id = {r.get("id"): r for r in scored}
    assert by_id["math-correct"]["reward"] == 1.0
    assert by_id["math-hedged"]["reward"] == -0.5
    assert by_id["math-no-think"]["status"] == "format_error"
    assert "reference" in by_id["math-missing-reference"]["error"]
    assert "did you mean 'math'" in by_id["plugin-unknown"]["error"]
    header = result.stdout.splitlines()[0]
    for column in ("domain", "records", "mean reward", "correct", "checked", "format error", "unscored", "wall s"):
        assert column in header
    assert "math" in result.stdout


def test_resume_scores_only_the_unfinished_lines(tmp_path):
    rollouts = tmp_path / "in.jsonl"
    records = [{"id": f"r{i}", "domain": "math", "reference": str(i),
                "response": f"<think>t</think> \\boxed{{{i}}}"} for i in range(6)]
    rollouts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    assert mdreward("score", str(rollouts), "-o", str(out), "--no-progress").returncode == 0
    lines = out.read_text().splitlines()
    # an interrupted run: three finished lines (one marked so re-scoring would show) and a torn fourth
    marked = json.loads(lines[0]) | {"components": {"marker": "from the first run"}}
    out.write_text(json.dumps(marked) + "\n" + "\n".join(lines[1:3]) + "\n" + lines[3][:10])
    result = mdreward("score", str(rollouts), "-o", str(out), "--resume", "--no-progress")
    assert result.returncode == 0, result.stderr
    scored = read(out)
    assert [r["id"] for r in scored] == [r["id"] for r in records]
    assert scored[0]["components"] == {"marker": "from the first run"}
    assert all(r["reward"] == 1.0 for r in scored)
    assert "resumed: 3" in result.stdout


def test_existing_output_is_not_overwritten_silently(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    result = mdreward("score", "--example", "-o", str(out))
    assert result.returncode == 2 and "--resume" in result.stderr
    assert out.read_text() == "keep me\n"


def test_resume_refuses_an_output_of_another_input(tmp_path):
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text(json.dumps({"id": "a", "domain": "math", "response": "x", "reference": "1"}) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "other", "reward": 1.0, "status": "ok"}) + "\n")
    result = mdreward("score", str(rollouts), "-o", str(out), "--resume")
    assert result.returncode == 2 and "cannot resume" in result.stderr


@pytest.mark.parametrize("line, message", [
    ('{"domain": "math"}', "field 'response' is required"),
    ('{"domain": "math", "response": 3, "reference": "1"}', "field 'response' must be a string"),
    ('[1, 2]', "expected a JSON object"),
    ('{"domain": "math", "response": "x", "reference": "1", "tests": "no"}', "field 'tests' must be an object"),
])
def test_bad_records_name_line_and_field(tmp_path, line, message):
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text(line + "\n")
    out = tmp_path / "out.jsonl"
    assert mdreward("score", str(rollouts), "-o", str(out), "--no-progress").returncode == 0
    (record,) = read(out)
    assert record["status"] == "error" and record["reward"] is None
    assert message in record["error"] and "line 1" in record["error"]


def test_config_file_sets_rules_and_unknown_keys_are_named(tmp_path):
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text(json.dumps({"domain": "math", "response": "r</think> \\boxed{2}", "reference": "3"}) + "\n")
    config = tmp_path / "mdreward.toml"
    config.write_text("[format]\nthink_in_prompt = true\n[domains.math]\nrewards = {wrong = -0.25}\n")
    out = tmp_path / "out.jsonl"
    assert mdreward("score", str(rollouts), "-o", str(out), "--config", str(config), "--no-progress").returncode == 0
    assert read(out)[0]["reward"] == -0.25
    config.write_text("[format]\nthink_in_promt = true\n")
    result = mdreward("score", str(rollouts), "-o", str(out), "--overwrite", "--config", str(config))
    assert result.returncode == 2 and "think_in_promt" in result.stderr


def test_domain_catalogue_in_docs_is_generated_from_the_registry():
    from pathlib import Path

    from mdreward.cli import domain_catalogue

    docs = Path(__file__).resolve().parents[1] / "docs" / "domains.md"
    assert docs.read_text() == domain_catalogue(), "regenerate: mdreward domains --markdown > docs/domains.md"
