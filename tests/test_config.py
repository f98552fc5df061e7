"""The one config loader (mdreward.config.load_config): CLI, server and adapters read a file the same way."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pytest

from judge_server import JudgeServer, ScriptedEngine
from judge_support import route_script
from mdreward import Sample, Score, Scorer
from mdreward.config import ConfigError, load_config
from mdreward.registry import DomainSpec, Registry
from mdreward.types import RewardTable

SCIENCE = {"id": "s1", "domain": "science", "prompt": "What gas?", "reference": "Nitrogen gas!",
           "response": "<think>t</think><answer>Nitrogen gas</answer>"}
FAST_RETRIES = "[timeouts]\njudge_backoff_s = 0.01\njudge_backoff_max_s = 0.05\n"


def mdreward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mdreward.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_reads_the_documented_judge_table(tmp_path: Path) -> None:
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text(json.dumps(SCIENCE) + "\n")
    out = tmp_path / "out.jsonl"
    with JudgeServer(ScriptedEngine(route_script)) as server:
        config = tmp_path / "j.toml"
        config.write_text(f'[judge]\nurl = "{server.url}"\nmodel = "file-judge"\n{FAST_RETRIES}')
        result = mdreward("score", str(rollouts), "-o", str(out), "--config", str(config), "--no-progress")
        assert result.returncode == 0, result.stderr
        assert {body["model"] for body in server.faults.bodies} == {"file-judge"}
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["status"], record["reward"]) == ("ok", 1.0)


def test_judge_flags_merge_into_the_files_judge_options(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[judge]\nmax_concurrency = 16\n[domains.science]\njudge = {batch_size = 8}\n')
    loaded = load_config(config, judge_url="http://flag:9/v1", judge_model="flag-model")
    assert loaded.judge == {"max_concurrency": 16, "url": "http://flag:9/v1", "model": "flag-model"}
    with Scorer(loaded) as scorer:  # the client the science domain really builds keeps the file's batch_size
        science = scorer._domain("science")
        assert not isinstance(science, Exception), science
        judge = science.judge  # type: ignore[union-attr]
        assert (judge.batch_size, judge.max_concurrency, judge.model) == (8, 16, "flag-model")


def test_domain_options_argument_merges_judge_tables_key_by_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[domains.science]\nrule_only = false\njudge = {batch_size = 8, model = "a", url = "http://h/v1"}\n')
    loaded = load_config(config, domain_options={"science": {"judge": {"model": "b"}}})
    assert loaded.domain_options["science"] == {"rule_only": False, "judge": {"batch_size": 8, "model": "b", "url": "http://h/v1"}}


@pytest.mark.parametrize("text,message", [
    (None, "cannot read it"),
    ("[judge\nurl=", "invalid TOML"),
    ("format = 3\n", "[format] must be a table"),
    ("[timeouts]\nmath_hard_kill_s = \"ten\"\n", "[timeouts].math_hard_kill_s: expected a non-negative float"),
    ("[format]\nthink_in_prompt = 1\n", "[format].think_in_prompt: expected true or false"),
    ("[judge]\nurl = \"http://h/v1\"\nmodel = \"m\"\nconcurency = 4\n", "unknown key(s) ['concurency']"),
    ("[judge]\nurl = \"http://h/v1\"\n", None),
    ("[domains]\nscience = 3\n", "[domains.science] must be a table"),
    ("[models]\n", "unknown sections ['models']"),
])
def test_a_bad_config_is_one_line_without_traceback(tmp_path: Path, text: str | None, message: str | None) -> None:
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text(json.dumps(SCIENCE) + "\n")
    config = tmp_path / "bad.toml"
    if text is not None:
        config.write_text(text)
    flags = ["--judge-url", "http://h/v1"] if message is None else []
    result = mdreward("score", str(rollouts), "-o", str(tmp_path / "out.jsonl"), "--config", str(config), *flags)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (message or "--judge-url needs --judge-model") in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_load_config_raises_config_error_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=r"science\]\.judge: unknown key"):
        load_config(domain_options={"science": {"judge": {"url": "http://h/v1", "model": "m", "bach_size": 2}}})


@dataclass
class _RecordingDomain:
    options: dict[str, Any]
    name: str = "acme.graded"
    table: RewardTable = field(default_factory=lambda: RewardTable({"correct": 1.0, "wrong": 0.0}))

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        return [Score.ok(1.0, judge_model=self.options["judge"]["model"]) for _ in samples]

    async def aclose(self) -> None:
        return None


def _judged_plugin(**kwargs: Any) -> _RecordingDomain:
    if kwargs.get("judge") is None:
        from mdreward.registry import DomainUnavailable
        raise DomainUnavailable("acme.graded needs a judge")
    return _RecordingDomain(options=kwargs)


def test_a_plugin_domain_that_needs_a_judge_gets_the_judge_flags() -> None:
    from mdreward.judges import judged_domains

    registry: Registry[DomainSpec] = Registry("domain")
    registry.register("acme.graded", DomainSpec("acme.graded", _judged_plugin, "a judged plugin",
                                                 RewardTable({"correct": 1.0, "wrong": 0.0}), needs=("judge",)),
                      provider="acme-rewards")
    registry.register("acme.plain", DomainSpec("acme.plain", _judged_plugin, "needs nothing",
                                               RewardTable({"correct": 1.0, "wrong": 0.0})), provider="acme-rewards")
    assert judged_domains(registry) == ("acme.graded",)
    config = load_config(judge_url="http://judge:8000/v1", judge_model="plugin-judge")
    with Scorer(config, registry=registry) as scorer:
        graded, plain = scorer.score_batch([Sample("graded", "r"), Sample("acme.plain", "r")])
    assert graded.components["judge_model"] == "plugin-judge", graded
    assert plain.status.value == "error" and "needs a judge" in (plain.error or "")


def test_a_wrong_domain_option_names_itself_in_every_record_of_that_domain() -> None:
    config = load_config(domain_options={"math": {"wokers": 2}})
    with Scorer(config) as scorer:
        wrong, other = scorer.score_batch([Sample("math", "<think>t</think> \\boxed{1}", reference="1"),
                                           {"domain": "nope", "response": "r"}])
    assert wrong.status.value == "error" and wrong.reward is None
    assert "wokers" in (wrong.error or "") and "unavailable" in (wrong.error or "")
    assert other.status.value == "error"


def test_serve_reads_the_config_with_the_same_loader(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[judge]\nurl = "http://h/v1"\nmodel = "m"\nconcurency = 4\n')
    result = mdreward("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown key(s) ['concurency']" in result.stderr and len(result.stderr.strip().splitlines()) == 1
