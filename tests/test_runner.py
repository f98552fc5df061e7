"""`mdreward score` on hostile files: every record comes out as strict UTF-8 JSON, resume is exact or refused."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SURROGATE = re.compile("[\ud800-\udfff]")
LINE_BREAKS = ("\u2028", "\u2029", "\u0085")


def mdreward(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mdreward.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def strict_records(path: Path) -> list[dict[str, Any]]:
    """The output parsed as strictly as any JSON reader would: UTF-8, one object per '\\n' line, no NaN."""
    text = path.read_bytes().decode("utf-8")  # raises on anything that is not valid UTF-8
    assert text.endswith("\n")
    assert len(text.splitlines()) == text.count("\n"), "a line break other than \\n would split a record"

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in output")

    records = [json.loads(line, parse_constant=refuse) for line in text.split("\n")[:-1]]
    for record in records:
        assert not SURROGATE.search(json.dumps(record, ensure_ascii=False)), record
    return records


def write_lines(path: Path, records: list[Any]) -> None:
    """One record per line, non-ASCII written raw (lone surrogates as JSON escapes: they have no UTF-8 form)."""
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass") for r in records]
    fixed = [SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line.decode("utf-8", "surrogatepass"))
             for line in lines]
    path.write_text("".join(line + "\n" for line in fixed), encoding="utf-8")


def test_lone_surrogates_anywhere_never_lose_the_batch(tmp_path: Path) -> None:
    lone = "\ud800"
    records = [
        {"id": f"id{lone}", "domain": "math", "reference": "1", "response": f"<think>a{lone}</think> \\boxed{{1}}"},
        {"id": "ref", "domain": "math", "reference": f"2{lone}", "response": "<think>t</think> \\boxed{2}"},
        {"id": "meta", "domain": "math", "reference": "3", "response": "<think>t</think> \\boxed{3}",
         "metadata": {f"k{lone}": ["v\udfff"]}, "prompt": f"p{lone}"},
        {"id": "domain", "domain": f"ma{lone}th", "response": "r"},
        {"id": "code", "domain": "code", "tests": {"assert": "assert f() == 1"},
         "response": "<think>t</think>\n```python\ndef f():\n    raise ValueError(chr(0xdc80) + 'x')\n```"},
        {"id": "last", "domain": "math", "reference": "4", "response": "<think>t</think> \\boxed{4}"},
    ]
    rollouts = tmp_path / "in.jsonl"
    write_lines(rollouts, records)
    out = tmp_path / "out.jsonl"
    result = mdreward("score", str(rollouts), "-o", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    scored = strict_records(out)
    assert len(scored) == len(records)
    by_id = {r["id"]: r for r in scored}
    assert by_id["id\ufffd"]["reward"] == 1.0 and by_id["last"]["reward"] == 1.0
    assert by_id["meta"]["metadata"] == {"k\ufffd": ["v\ufffd"]} and by_id["meta"]["reward"] == 1.0
    assert by_id["code"]["status"] == "ok" and "\ufffdx" in by_id["code"]["components"]["first_failure"]
    assert by_id["domain"]["status"] == "error"
    # resuming that output (here: all of it, then the last line torn) works
    assert mdreward("score", str(rollouts), "-o", str(out), "--resume", "--no-progress").returncode == 0
    out.write_bytes(out.read_bytes()[:-5])
    resumed = mdreward("score", str(rollouts), "-o", str(out), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert strict_records(out) == scored


def test_input_splits_on_newline_only_and_output_escapes_unicode_line_breaks(tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "domain": "math", "reference": str(i),
                "response": f"<think>one{brk}two\x0bthree\x1cfour</think> \\boxed{{{i}}}", "note": f"a{brk}b"}
               for i, brk in enumerate(LINE_BREAKS)]
    rollouts = tmp_path / "in.jsonl"
    write_lines(rollouts, records)
    assert len(rollouts.read_text().splitlines()) > len(records)  # str.splitlines would break these records
    out = tmp_path / "out.jsonl"
    result = mdreward("score", str(rollouts), "-o", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    raw = out.read_bytes()
    assert not any(brk.encode() in raw for brk in LINE_BREAKS)
    scored = strict_records(out)
    assert [(r["id"], r["note"], r["reward"]) for r in scored] == [(r["id"], r["note"], 1.0) for r in records]
    resumed = mdreward("score", str(rollouts), "-o", str(out), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: 3 records" in resumed.stdout


def test_strict_json_in_and_out(tmp_path: Path) -> None:
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_bytes(b'\xef\xbb\xbf'
                         b'{"domain": "math", "reference": "1", "response": "<think>t</think> \\\\boxed{1}"}\n'
                         b'{"domain": "math", "reference": "1", "response": "r", "x": NaN}\n'
                         b'{"domain": "math", "reference": "1", "response": "\xff\xfe"}\n'
                         + b"[" * 100_000 + b"\n")
    out = tmp_path / "out.jsonl"
    result = mdreward("score", str(rollouts), "-o", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    first, nan, not_utf8, deep = strict_records(out)
    assert first["reward"] == 1.0  # a byte-order mark is not part of the record
    assert nan["status"] == "error" and "NaN is not a JSON value" in nan["error"] and "line 2" in nan["error"]
    assert not_utf8["status"] == "error" and "line 3: not valid UTF-8" in not_utf8["error"]
    assert deep["status"] == "error" and "line 4" in deep["error"]


def test_resume_refuses_output_of_a_changed_input(tmp_path: Path) -> None:
    records = [{"domain": "math", "reference": str(i), "response": f"<think>t</think> \\boxed{{{i}}}"}
               for i in range(4)]
    rollouts = tmp_path / "in.jsonl"
    write_lines(rollouts, records)
    out = tmp_path / "out.jsonl"
    assert mdreward("score", str(rollouts), "-o", str(out), "--no-progress").returncode == 0
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:3]))  # an interrupted run
    before = out.read_bytes()
    records[1]["reference"] = "99"  # the user fixed a reference: line 2's score is now stale
    write_lines(rollouts, records)
    result = mdreward("score", str(rollouts), "-o", str(out), "--resume", "--no-progress")
    assert result.returncode == 2
    assert "input line 2 changed" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == before
    # an output written by something else is refused too, naming the line
    out.write_text('{"reward": 1.0}\n')
    result = mdreward("score", str(rollouts), "-o", str(out), "--resume", "--no-progress")
    assert result.returncode == 2 and "line 1 has no 'input_sha256'" in result.stderr


def test_ctrl_c_prints_one_line_and_resume_finishes_the_file(tmp_path: Path) -> None:
    count = 20_000
    records = [{"id": f"r{i}", "domain": "math", "reference": str(i), "response": f"<think>t</think> \\boxed{{{i}}}"}
               for i in range(count)]
    rollouts = tmp_path / "in.jsonl"
    write_lines(rollouts, records)
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "mdreward.cli", "score", str(rollouts), "-o", str(out), "--batch-size", "8"]
    # a new session stands for the terminal: Ctrl-C signals the whole foreground process group
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.stat().st_size > 0):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    messages = [line for line in stderr.splitlines() if line.strip() and not line.startswith("scoring")]
    assert messages == ["interrupted; rerun with --resume"], stderr
    partial = strict_records(out)  # ends at a whole record
    assert 0 < len(partial) < count
    result = mdreward("score", str(rollouts), "-o", str(out), "--resume", "--no-progress")
    assert result.returncode == 0, result.stderr
    scored = strict_records(out)
    assert [r["id"] for r in scored] == [r["id"] for r in records]
    assert all(r["reward"] == 1.0 for r in scored)
    assert f"resumed: {len(partial)} records" in result.stdout


def test_summary_names_scored_and_correct_apart(tmp_path: Path) -> None:
    records = [
        {"domain": "math", "reference": "1", "response": "<think>t</think> \\boxed{1}"},
        {"domain": "math", "reference": "1", "response": "<think>t</think> \\boxed{2}"},
        {"domain": "math", "reference": "1", "response": "<think>t</think> \\boxed{3}"},
        {"domain": "math", "reference": "1", "response": "no think \\boxed{1}"},
    ]
    rollouts = tmp_path / "in.jsonl"
    write_lines(rollouts, records)
    result = mdreward("score", str(rollouts), "-o", str(tmp_path / "out.jsonl"), "--no-progress")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    row = dict(zip(header, lines[2].split()))
    assert row["domain"] == "math" and row["records"] == "4"
    assert row["correct"] == "25.0%"       # right answers of all records
    assert row["checked"] == "75.0%"       # scored right or wrong: not a success rate
    assert row["format error"] == "25.0%" and row["unscored"] == "0.0%"
    assert "ok" not in header
    assert any(line.strip().startswith("checked:") for line in lines)  # the legend says what each column means
