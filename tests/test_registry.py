import json
import os
import subprocess
import sys
import textwrap

import pytest

from mdreward.registry import Registry, UnknownName, load_domains

PLUGIN = textwrap.dedent('''
    from mdreward import DomainSpec, RewardTable, Sample, Score

    TABLE = RewardTable({"correct": 1.0, "wrong": 0.0, "format_error": -1.0})

    class Echo:
        name = "acme.echo"
        def __init__(self, *, format_rules, timeouts, table):
            self.table = table
        async def score_batch(self, samples):
            return [Score.ok(self.table["correct" if s.response == s.reference else "wrong"]) for s in samples]
        async def aclose(self):
            pass

    spec = DomainSpec(name="acme.echo", factory=Echo, description="echo test domain", table=TABLE,
                      required_fields=("response", "reference"),
                      example=Sample(domain="acme.echo", response="x", reference="x"))
''')


@pytest.fixture
def plugin_path(tmp_path):
    (tmp_path / "acme_plugin.py").write_text(PLUGIN)
    (tmp_path / "acme_broken.py").write_text("raise ImportError('boom')\n")
    dist = tmp_path / "acme_plugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugin\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(
        "[mdreward.domains]\necho = acme_plugin:spec\nbroken = acme_broken:spec\n")
    return tmp_path


def run_cli(args, plugin_path, **env):
    environment = {**os.environ, "PYTHONPATH": str(plugin_path), **env}
    return subprocess.run([sys.executable, "-m", "mdreward.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_plugin_domain_is_listed_with_its_package_and_a_broken_one_only_warns(plugin_path):
    result = run_cli(["domains"], plugin_path)
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith("acme.echo"))
    assert "acme-plugin" in line and "1.2.3" in line
    assert "math" in result.stdout
    assert "broken" in result.stderr and "failed to load" in result.stderr


def test_plugin_domain_scores_by_short_name(plugin_path, tmp_path):
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text('{"domain": "echo", "response": "a", "reference": "a"}\n')
    result = run_cli(["score", str(rollouts), "-o", str(tmp_path / "out.jsonl"), "--no-progress"], plugin_path)
    assert result.returncode == 0, result.stderr
    assert '"reward": 1.0' in (tmp_path / "out.jsonl").read_text()


def test_autoload_can_be_turned_off(plugin_path):
    result = run_cli(["domains"], plugin_path, MDREWARD_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "acme.echo" not in result.stdout and "math" in result.stdout
    assert "failed to load" not in result.stderr


def test_did_you_mean_and_ambiguity():
    registry: Registry[int] = Registry("domain")
    registry.register("math", 1)
    registry.register("acme.logic", 2, provider="acme")
    registry.register("zeta.logic", 3, provider="zeta")
    assert registry.get("acme.logic") == 2
    with pytest.raises(UnknownName, match="did you mean 'math'"):
        registry.get("mth")
    with pytest.raises(UnknownName, match="ambiguous"):
        registry.get("logic")
    with pytest.raises(ValueError, match="registered by"):
        registry.register("math", 4, provider="other")


def test_builtin_domains_come_through_the_entry_point_group():
    registry = load_domains(autoload_plugins=False)
    assert registry.entry("math").provider == "mdreward"


JUDGED_PLUGIN = textwrap.dedent('''
    from mdreward import DomainSpec, DomainUnavailable, RewardTable, Sample, Score

    TABLE = RewardTable({"correct": 1.0, "wrong": 0.0, "format_error": -1.0})

    class Judged:
        name = "acme.judged"
        def __init__(self, *, format_rules, timeouts, table, judge=None):
            if not judge or not judge.get("url"):
                raise DomainUnavailable("no judge configured: pass --judge-url and --judge-model")
            self.table, self.judge = table, judge
        async def score_batch(self, samples):
            return [Score.ok(1.0, judge_url=self.judge["url"], judge_model=self.judge["model"]) for s in samples]
        async def aclose(self):
            pass

    spec = DomainSpec(name="acme.judged", factory=Judged, description="needs a judge", table=TABLE,
                      needs=("judge",), example=Sample(domain="acme.judged", response="x"))
''')


def test_a_judge_needing_plugin_gets_the_judge_flags_and_config(tmp_path):
    (tmp_path / "acme_judged.py").write_text(JUDGED_PLUGIN)
    dist = tmp_path / "acme_judged-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-judged\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mdreward.domains]\njudged = acme_judged:spec\n")
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text('{"domain": "judged", "response": "a", "id": "j1"}\n')
    out = tmp_path / "out.jsonl"
    without = run_cli(["score", str(rollouts), "-o", str(out), "--overwrite", "--no-progress"], tmp_path)
    assert "no judge configured" in out.read_text(), without.stderr
    flags = run_cli(["score", str(rollouts), "-o", str(out), "--overwrite", "--no-progress", "--judge-url", "http://127.0.0.1:9/v1",
                     "--judge-model", "judge-7b"], tmp_path)
    assert flags.returncode == 0, flags.stderr
    components = json.loads(out.read_text())["components"]
    assert components == {"judge_url": "http://127.0.0.1:9/v1", "judge_model": "judge-7b"}
    config = tmp_path / "mdreward.toml"
    config.write_text('[judge]\nurl = "http://127.0.0.1:9/v1"\nmodel = "judge-7b"\n'
                      '[domains."acme.judged".judge]\nmodel = "own-judge"\n')
    from_config = run_cli(["score", str(rollouts), "-o", str(out), "--overwrite", "--no-progress", "--config", str(config)], tmp_path)
    assert from_config.returncode == 0, from_config.stderr
    assert json.loads(out.read_text())["components"]["judge_model"] == "own-judge"
