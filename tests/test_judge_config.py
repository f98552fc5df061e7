"""Judge configuration: CLI flags + config file -> domain options -> working judged domains."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from judge_server import JudgeServer, ScriptedEngine
from judge_support import TEST_TIMEOUTS, route_script
from mdreward import Sample, Scorer, ScoringConfig, Status
from mdreward.judges import JudgeConfigError, build_judge, judge_options_from_cli
from mdreward.judges.openai_client import OpenAIJudge


@pytest.fixture()
def write(tmp_path: Path):
    def write_file(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write_file


def test_cli_flags_point_every_judged_domain_at_one_endpoint():
    options = judge_options_from_cli("http://h:8000/v1", "m", None)
    assert options == {d: {"judge": {"url": "http://h:8000/v1", "model": "m"}}
                       for d in ("science", "writing", "writingbench")}


def test_nothing_configured_gives_no_judge():
    assert judge_options_from_cli(None, None, None) == {}


def test_config_file_overrides_per_domain_and_cli_overrides_the_default(write):
    path = write("judges.toml", """
[judge]
url = "http://default:8000/v1"
model = "big-judge"
max_concurrency = 16

[science]
judge = { model = "TIGER-Lab/general-verifier", url = "http://verifier:8001/v1" }

[writingbench]
max_attempts = 2
[writingbench.judge]
model = "critic"
""")
    options = judge_options_from_cli("http://cli:9000/v1", None, path)
    assert options["science"] == {"judge": {"url": "http://verifier:8001/v1", "model": "TIGER-Lab/general-verifier",
                                            "max_concurrency": 16}}
    assert options["writing"] == {"judge": {"url": "http://cli:9000/v1", "model": "big-judge", "max_concurrency": 16}}
    assert options["writingbench"] == {"max_attempts": 2, "judge": {"url": "http://cli:9000/v1", "model": "critic",
                                                                    "max_concurrency": 16}}


def test_a_whole_mdreward_config_is_read_for_its_judge_parts():
    config = {"format": {"think_in_prompt": True}, "judge": {"url": "http://h/v1", "model": "m"},
              "domains": {"math": {"workers": 2}, "science": {"rule_only": False, "judge": {"model": "verifier"}},
                          "writing": {"rewards": {"tie": 0.0}}}}
    options = judge_options_from_cli(None, None, config)
    assert set(options) == {"science", "writing", "writingbench"}
    assert options["science"] == {"rule_only": False, "judge": {"url": "http://h/v1", "model": "verifier"}}
    assert options["writing"] == {"rewards": {"tie": 0.0}, "judge": {"url": "http://h/v1", "model": "m"}}


def test_json_config_and_rule_only_science_without_a_judge(write):
    path = write("judges.json", json.dumps({"science": {"rule_only": True}}))
    assert judge_options_from_cli(None, None, path) == {"science": {"rule_only": True}}


@pytest.mark.parametrize("url,model,config,message", [
    ("http://h/v1", None, None, "--judge-url needs --judge-model"),
    (None, None, {"sciense": {}}, "unknown section"),
    (None, None, {"judge": "http://h"}, "must be a table"),
    (None, None, {"writing": {"judge": {"url": "http://h/v1"}}}, "writing.judge.model"),
])
def test_config_errors_name_the_place(url, model, config, message):
    with pytest.raises(JudgeConfigError, match=message):
        judge_options_from_cli(url, model, config)


def test_unreadable_or_invalid_files_are_clear_errors(write):
    with pytest.raises(JudgeConfigError, match="cannot read"):
        judge_options_from_cli(None, None, "/nonexistent/judges.toml")
    with pytest.raises(JudgeConfigError, match="invalid TOML"):
        judge_options_from_cli(None, None, write("bad.toml", "[judge\nurl="))
    with pytest.raises(JudgeConfigError, match="invalid JSON at line"):
        judge_options_from_cli(None, None, write("bad.json", "{\n  'x': 1}"))


def test_build_judge_validates_specs():
    judge = build_judge({"url": "http://h/v1", "model": "m", "max_concurrency": 4, "batch_size": 8,
                         "requests_per_minute": 100}, timeouts=TEST_TIMEOUTS)
    assert isinstance(judge, OpenAIJudge) and judge.max_concurrency == 4 and judge.batch_size == 8
    assert build_judge(judge) is judge
    with pytest.raises(JudgeConfigError, match="unknown key"):
        build_judge({"url": "http://h/v1", "model": "m", "concurency": 4})
    with pytest.raises(JudgeConfigError, match="unknown backend"):
        build_judge({"backend": "ollama", "model": "m"})
    with pytest.raises(JudgeConfigError, match="base URL"):
        build_judge({"model": "m"})


def test_one_endpoint_from_the_cli_serves_all_three_domains():
    with JudgeServer(ScriptedEngine(route_script)) as server:
        options = judge_options_from_cli(server.url, "one-judge", None)
        with Scorer(ScoringConfig(timeouts=TEST_TIMEOUTS, domain_options=options)) as scorer:
            science, writing, bench = scorer.score_batch([
                Sample("science", "<think>t</think><answer>Nitrogen gas</answer>", reference="Nitrogen gas!",
                       prompt="q"),
                Sample("writing", "<think>t</think>A long and careful line about rain.", reference="Rain."),
                Sample("writingbench", "<think>t</think>Note.", prompt="q",
                       metadata={"criteria": [{"name": "c6"}, {"name": "c8"}]}),
            ])
        assert {b["model"] for b in server.faults.bodies} == {"one-judge"}
    assert (science.status, writing.status, bench.status) == (Status.OK,) * 3
    assert (science.reward, writing.reward, bench.reward) == (1.0, 1.0, 7.0)


@pytest.mark.parametrize("option,message", [
    ({"transport": "curl"}, r"science\.judge: transport must be one of"),
    ({"batch_size": 0}, r"science\.judge: max_concurrency and batch_size must be >= 1"),
])
def test_bad_client_option_values_name_the_judge(option, message):
    spec = {"url": "http://h/v1", "model": "verifier", **option}
    with pytest.raises(JudgeConfigError, match=message):
        build_judge(spec, where="science.judge")
