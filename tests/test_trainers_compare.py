"""The rule x seed comparison (table, plot, reuse of finished runs) and the conflicting toy task."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from trainers import compare as cmp
from trainers.config import load_config
from trainers.tasks import TASKS, sft_example

CONFLICT = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "tiny_conflict.toml"


def write_run(path: Path, evals: list[dict[str, float]], step_s: float = 1.0, update_s: float = 0.25) -> Path:
    """A metrics.jsonl with one eval per record (domain -> reward) and per-step times."""
    path.mkdir(parents=True, exist_ok=True)
    lines = [{"step": -1, "eval": {d: {"reward": -1.0} for d in evals[0]}}]
    for i, ev in enumerate(evals):
        lines.append({"step": i, "train": {}, "time": {"step_s": step_s, "update_s": update_s},
                      "eval": {d: {"reward": r, "correct_rate": 0.0} for d, r in ev.items()}})
        lines.append({"step": i + 100, "train": {}, "time": {"step_s": step_s, "update_s": update_s}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path / "metrics.jsonl"


def test_final_scores_average_the_last_evaluations_per_domain_and_over_domains():
    records = [{"step": -1, "eval": {"a": {"reward": -1.0}, "b": {"reward": -1.0}}},
               {"step": 4, "eval": {"a": {"reward": 0.0}, "b": {"reward": 0.2}}},
               {"step": 5, "time": {"step_s": 2.0, "update_s": 0.5}},
               {"step": 9, "eval": {"a": {"reward": 0.4}, "b": {"reward": 0.6}}, "time": {"step_s": 4.0, "update_s": 1.5}}]
    scores = cmp.final_scores(records, last_evals=2)
    assert scores == pytest.approx({"a": 0.2, "b": 0.4, "average": 0.3})
    assert cmp.final_scores(records, last_evals=1) == pytest.approx({"a": 0.4, "b": 0.6, "average": 0.5})
    assert cmp.step_seconds(records) == pytest.approx({"step_s": 3.0, "update_s": 1.0})
    records[1]["eval"]["a"]["correct_rate"] = 0.25
    assert cmp.final_scores(records, last_evals=2, metric="correct_rate")["a"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no metric 'nope'"):
        cmp.final_scores(records, metric="nope")
    with pytest.raises(ValueError, match="no held-out evaluation"):
        cmp.final_scores([{"step": 0, "train": {}}])


def test_table_gives_mean_and_sample_std_over_seeds_and_bolds_the_best(tmp_path):
    metrics = {"joint": {1: write_run(tmp_path / "j1", [{"x": 0.0, "y": 0.2}, {"x": 0.2, "y": 0.4}], step_s=1.0),
                         2: write_run(tmp_path / "j2", [{"x": 0.4, "y": 0.0}, {"x": 0.4, "y": 0.2}], step_s=3.0)},
               "cgpo": {1: write_run(tmp_path / "c1", [{"x": 0.5, "y": -0.5}, {"x": 0.5, "y": -0.5}]),
                        2: write_run(tmp_path / "c2", [{"x": 0.5, "y": -0.1}, {"x": 0.5, "y": -0.1}])}}
    summary = cmp.summarize(metrics, last_evals=2)
    # joint: x = 0.1, 0.4 -> mean 0.25, sample std 0.2121; y = 0.3, 0.1 -> 0.2, 0.1414; avg 0.2, 0.25
    assert summary.stat("joint", "x") == pytest.approx((0.25, 0.212132), abs=1e-6)
    assert summary.stat("joint", "average") == pytest.approx((0.225, 0.035355), abs=1e-6)
    assert summary.stat("cgpo", "y") == pytest.approx((-0.3, 0.282843), abs=1e-6)
    assert summary.time_stat("joint", "step_s") == pytest.approx((2.0, 1.414214), abs=1e-6)
    table = cmp.markdown(summary)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert list(rows) == ["rule", "joint", "cgpo"]
    assert rows["rule"].split("|")[3:6] == [" x reward ", " y reward ", " average reward "]
    assert "**+0.500 ± 0.000**" in rows["cgpo"]          # cgpo best on x
    assert "**+0.200 ± 0.141**" in rows["joint"]          # joint best on y and on the average
    assert "**+0.225 ± 0.035**" in rows["joint"]
    assert "2.00 ± 1.41" in rows["joint"]
    assert "| x correct_rate |" in cmp.markdown(cmp.summarize(metrics, metric="correct_rate"))
    data = summary.to_dict()
    assert data["rules"]["cgpo"]["mean"]["average"] == pytest.approx(0.1)
    png = cmp.plot(metrics, tmp_path / "cmp.png")
    assert png.stat().st_size > 2000
    # the plot reads the table's metric: the last eval of joint seed 1 is reward 0.2 / 0.4, correct_rate 0 / 0
    assert cmp.eval_curves(metrics)["joint"][2][1] == pytest.approx({"x": 0.2, "y": 0.4, "average": 0.3})
    assert cmp.eval_curves(metrics, "correct_rate")["joint"][2][1] == {"x": 0.0, "y": 0.0, "average": 0.0}


def test_rules_come_from_the_registry_and_bad_specs_are_refused(monkeypatch):
    from trainers import updates

    monkeypatch.setitem(updates.RULES, "newrule", updates.Joint)  # a rule merged later appears by itself
    variants = cmp.parse_variants("all")
    assert {v.label for v in variants} == set(updates.RULES) | {"cgpo_fix"}
    assert "newrule" in {v.label for v in variants}
    v = cmp.parse_variants("joint", ["joint_3lr:update.rule=joint, update.lr=6e-4"])
    assert v[1] == cmp.Variant("joint_3lr", ("update.rule=joint", "update.lr=6e-4"))
    with pytest.raises(ValueError, match="unknown update rule 'nope'"):
        cmp.parse_variants("joint,nope")
    with pytest.raises(ValueError, match="must look like LABEL"):
        cmp.parse_variants(None, ["no-colon"])
    with pytest.raises(ValueError, match="duplicate labels"):
        cmp.parse_variants("joint", ["joint:update.lr=1"])
    with pytest.raises(ValueError, match="distinct"):
        cmp.parse_seeds("1,1")
    with pytest.raises(ValueError, match="joint seed 1: .*unknown field"):
        cmp.plan(CONFLICT, cmp.parse_variants("joint"), [1], "out", common=["update.nonsense=1"])


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    (run,) = cmp.plan(CONFLICT, cmp.parse_variants("cgpo"), [7], tmp_path, common=["run.steps=2"])
    assert run.out_dir == tmp_path / "cgpo" / "seed7" and run.config.run.seed == 7
    assert cmp.run_state(run) == "fresh"
    run.out_dir.mkdir(parents=True)
    (run.out_dir / cmp.RUN_CONFIG).write_text(json.dumps(run.config.to_dict()))
    (run.out_dir / "checkpoint.pt").write_bytes(b"x")
    assert cmp.run_state(run) == "resume"
    write_run(run.out_dir, [{"first": 0.0}])             # eval at step 0 only: not finished (2 steps)
    assert cmp.run_state(run) == "resume"
    write_run(run.out_dir, [{"first": 0.0}, {"first": 0.1}])   # eval at the last step (1)
    assert cmp.run_state(run) == "done"
    (changed,) = cmp.plan(CONFLICT, cmp.parse_variants("cgpo"), [7], tmp_path, common=["run.steps=2", "update.lr=1"])
    assert cmp.run_state(changed) == "fresh"


def test_conflict_task_warm_start_is_blind_to_the_marker():
    """The two domains share prompts; each one's wrong answer is the other's right one, and the warm-start
    data answers with the first operand half of the time after either marker."""
    first, last = TASKS["first"].make(random.Random(3)), TASKS["last"].make(random.Random(3))
    assert first.question.split()[1:] == last.question.split()[1:]
    assert (first.reference, last.reference) == (first.question.split()[1], last.question.split()[2])
    assert first.wrong_solution == f"<answer>{last.reference}</answer>"
    rng = random.Random(0)
    for task in ("first", "last"):
        hits = 0
        for _ in range(4000):
            q, r = sft_example(task, rng, p_wrong=0.5, p_bad_format=0.3)
            hits += re.search(r"\d", r).group() == q.split()[1]
        assert abs(hits / 4000 - 0.5) < 0.03, (task, hits)


def test_compare_runs_every_rule_and_seed_then_reuses_them(tmp_path, capsys):
    pytest.importorskip("transformers")
    from trainers.tiny import build_tiny_policy

    policy = build_tiny_policy(tmp_path / "policy", tasks=["first", "last"], sft_steps=5, batch_size=8, log_every=0)
    common = [f"model.path={policy}", "model.tiny_sft_steps=5", "run.steps=1", "run.eval_every=1", "data.eval_prompts=2", "data.eval_samples=1",
              "data.prompts_per_domain=2", "rollout.group_size=2", "data.pool_size=16"]
    out = tmp_path / "cmp"
    summary = cmp.compare(CONFLICT, cmp.parse_variants("joint,cgpo"), [1], out, common=common, jobs=2)
    printed = capsys.readouterr().out
    assert "2 to run" in printed and "2/2 done: " in printed and "start cgpo seed 1" in printed and "min left" in printed
    assert set(summary.per_seed) == {"joint", "cgpo"}
    assert set(summary.per_seed["cgpo"][1]) == {"first", "last", "average"}
    table = (out / "comparison.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 3 and "first reward" in table
    assert (out / "comparison.png").stat().st_size > 2000
    assert json.loads((out / "cgpo" / "seed1" / cmp.RUN_CONFIG).read_text())["update"]["rule"] == "cgpo"
    cmp.compare(CONFLICT, cmp.parse_variants("joint,cgpo"), [1], out, common=common)
    assert "2 finished already, 0 to run" in capsys.readouterr().out


def test_conflict_config_loads():
    cfg = load_config(CONFLICT)
    assert cfg.data.tasks == ["first", "last"] and cfg.model.tiny_tasks == ["first", "last"]
    assert not cfg.data.require_think


@pytest.mark.parametrize("name", ["tiny_cgpo.toml", "tiny_conflict.toml"])
def test_shipped_tiny_configs_take_the_paper_code_preset(name):
    """docs/trainers.md runs both with ``--set preset=paper-code``: a config that pins a field the preset
    sets to another value would refuse that."""
    cfg = load_config(CONFLICT.parent / name, ["preset=paper-code"])
    assert (cfg.update.scaling, cfg.update.share_by) == ("loss", "micro_batches")


def test_a_seed_without_a_score_is_counted_out_visibly(tmp_path):
    """A domain whose held-out metric is NaN in one seed (every eval unscored) leaves that seed out of the
    domain's and the average's mean: the cell must say over how many seeds it is, not pass for all of them."""
    nan = float("nan")
    metrics = {"joint": {1: write_run(tmp_path / "j1", [{"x": 0.2, "y": nan}, {"x": 0.2, "y": nan}]),
                         2: write_run(tmp_path / "j2", [{"x": 0.4, "y": 0.6}, {"x": 0.4, "y": 0.6}])}}
    summary = cmp.summarize(metrics)
    assert summary.stat("joint", "y") == pytest.approx((0.6, 0.0)) and summary.count("joint", "y") == 1
    row = next(line for line in cmp.markdown(summary).splitlines() if line.startswith("| joint"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "2" and cells[2] == "+0.300 ± 0.141"          # x: both seeds
    assert cells[3] == "+0.600 ± 0.000 (n=1)" and cells[4] == "+0.500 ± 0.000 (n=1)"  # y and the average: one


def test_a_tiny_policy_built_for_other_options_is_refused_not_reused(tmp_path):
    from trainers.tiny import ensure_tiny_policy

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    (policy / "tiny_policy.json").write_text(json.dumps({"tasks": ["first", "last"], "sft_steps": 800, "seed": 1}))
    assert ensure_tiny_policy(policy, tasks=["first", "last"], sft_steps=800, seed=7) == policy  # seed may differ
    with pytest.raises(ValueError, match=r"sft_steps: built 800, configured 200"):
        ensure_tiny_policy(policy, tasks=["first", "last"], sft_steps=200, seed=1)
    with pytest.raises(ValueError, match=r"tasks: built \['first', 'last'\], configured \['arith'\]"):
        ensure_tiny_policy(policy, tasks=["arith"], sft_steps=800, seed=1)
    assert ensure_tiny_policy(policy, tasks=["arith"], sft_steps=800, seed=1, strict=False) == policy  # a single run
