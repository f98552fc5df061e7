"""verl 0.9's reward loop, run with verl's own code: its Hydra config, its loader of a reward manager
by config (``resolve_reward_manager_cls`` / ``load_reward_manager`` inside ``RewardLoopWorker``), its
custom-reward-function loader, and its ``compute_advantage``."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

verl = pytest.importorskip("verl", reason="verl is not installed (scripts/setup-tests.sh installs it)")
torch = pytest.importorskip("torch")

from hydra import compose, initialize_config_dir
from integration_helpers import tiny_tokenizer
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils.ray_utils import get_event_loop

from mdreward.domains.math import TABLE as MATH
from mdreward.integrations import verl as mdverl
from mdreward.integrations import verl_loop

CORPUS = ["<think>add the numbers</think> The answer is \\boxed{4}.", "What is 2 + 2? Answer with a box.",
          "<think>hmm</think> \\boxed{5}", "no reasoning \\boxed{4}"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer(CORPUS).save_pretrained(path)
    return str(path)


def verl_config(tokenizer_dir: str, *overrides: str):
    """verl's own trainer config (its Hydra files), with ``overrides`` as on verl's command line."""
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=[f"actor_rollout_ref.model.path={tokenizer_dir}",
                                                             *overrides])


MANAGER = ("reward.reward_manager.source=importlib",
           "reward.reward_manager.module.path=pkg://mdreward.integrations.verl_loop",
           "reward.reward_manager.name=MdrewardRewardManager",
           "reward.num_workers=4")


def rollout_batch(tokenizer, rows: list[tuple[str, str, str]], uids: list[str] | None = None) -> DataProto:
    """What verl's reward loop hands a worker: left-padded prompts, right-padded responses, masks,
    and the dataset's non-tensor fields."""
    prompt = tokenizer("What is 2 + 2?", add_special_tokens=False)["input_ids"]
    responses = [tokenizer(text, add_special_tokens=False)["input_ids"] for _, text, _ in rows]
    width = max(len(r) for r in responses) + 2
    pad = tokenizer.pad_token_id or 0
    resp = torch.tensor([r + [pad] * (width - len(r)) for r in responses])
    prompts = torch.tensor([prompt] * len(rows))
    attention = torch.cat([torch.ones_like(prompts), (torch.arange(width)[None, :] < torch.tensor(
        [len(r) for r in responses])[:, None]).long()], dim=1)
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": resp, "attention_mask": attention,
                 "input_ids": torch.cat([prompts, resp], dim=1)},
        non_tensors={"data_source": np.array([ds for ds, _, _ in rows], dtype=object),
                     "reward_model": np.array([{"ground_truth": gt} for _, _, gt in rows], dtype=object),
                     "extra_info": np.array([{"index": i} for i in range(len(rows))], dtype=object),
                     "uid": np.array(uids or [str(i) for i in range(len(rows))], dtype=object)})


ROWS = [("openai/gsm8k", "<think>add the numbers</think> The answer is \\boxed{4}.", "4"),
        ("math__x", "<think>hmm</think> \\boxed{5}", "4"),
        ("no_such_source", "<think>hmm</think> \\boxed{4}", "4"),
        ("math__x", "no reasoning \\boxed{4}", "4")]


def run_in_verls_loop(worker: RewardLoopWorker, batch: DataProto) -> list[dict]:
    """``compute_score_batch`` on the event loop verl's managers captured (a Ray actor's loop)."""
    return get_event_loop().run_until_complete(worker.compute_score_batch(batch))


def worker_scores(config, batch: DataProto) -> list[dict]:
    """verl's RewardLoopWorker (the class verl runs as a Ray actor), called as the reward loop calls it."""
    return run_in_verls_loop(RewardLoopWorker(config), batch)


def test_reward_manager_loaded_by_verl_from_config_and_batched(tokenizer_dir):
    config = verl_config(tokenizer_dir, *MANAGER, "+reward.reward_kwargs.unscored_score=-3.0")
    worker = RewardLoopWorker(config)  # verl's loader: resolve_reward_manager_cls + load_reward_manager
    assert isinstance(worker.reward_manager, verl_loop.MdrewardRewardManager)
    assert get_reward_manager_cls("mdreward") is verl_loop.MdrewardRewardManager  # also in verl's registry
    calls = []
    reward = worker.reward_manager.reward
    original = reward.acompute_score_batch

    async def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return await original(*args, **kwargs)

    reward.acompute_score_batch = counting
    try:
        outputs = run_in_verls_loop(worker, rollout_batch(worker.input_tokenizer, ROWS))
    finally:
        reward.acompute_score_batch = original
    assert calls == [4]  # verl's four concurrent run_single calls: one Scorer batch
    assert [o["reward_score"] for o in outputs] == [MATH["correct"], MATH["wrong"], -3.0, MATH["format_error"]]
    infos = [o["reward_extra_info"] for o in outputs]
    assert [i["scored"] for i in infos] == [True, True, False, True]
    assert [i["acc"] for i in infos] == [1.0, 0.0, None, 0.0]  # unscored: None, which verl's metrics skip
    assert "'no_such_source'" in infos[2]["error"]
    # the Scorer's CPU pools are shared out among verl's reward.num_workers workers
    assert reward.scorer.config.domain_options["math"]["workers"] == max(1, (os.cpu_count() or 1) // 4)


def test_custom_reward_function_through_verls_loader(tokenizer_dir):
    config = verl_config(tokenizer_dir, "reward.custom_reward_function.path=pkg://mdreward.integrations.verl",
                         "reward.custom_reward_function.name=acompute_score",
                         "+reward.custom_reward_function.reward_kwargs.require_think=true")
    outputs = worker_scores(config, rollout_batch(tiny_tokenizer(CORPUS), ROWS))
    assert [o["reward_score"] for o in outputs] == [MATH["correct"], MATH["wrong"], 0.0, MATH["format_error"]]
    assert [o["reward_extra_info"]["acc"] for o in outputs] == [1.0, 0.0, None, 0.0]
    mdverl.close_shared()


def test_verls_batch_reward_manager_is_gone_in_0_9(tokenizer_dir):
    """Why the docs no longer offer reward_manager=batch: verl 0.9's reward loop has no such manager."""
    with pytest.raises(ValueError, match="Unknown reward manager: batch"):
        RewardLoopWorker(verl_config(tokenizer_dir, "reward.reward_manager.name=batch"))


def advantage_batch(rewards: list[float], uids: list[str], length: int = 3) -> DataProto:
    scores = torch.zeros(len(rewards), length)
    scores[:, -1] = torch.tensor(rewards)
    return DataProto.from_dict(
        tensors={"token_level_rewards": scores, "token_level_scores": scores,
                 "response_mask": torch.ones(len(rewards), length, dtype=torch.long)},
        non_tensors={"uid": np.array(uids, dtype=object)})


def test_masking_estimator_runs_inside_verls_compute_advantage(tokenizer_dir):
    config = verl_config(tokenizer_dir, *MANAGER, "algorithm.adv_estimator=mdreward_grpo")
    outputs = worker_scores(config, rollout_batch(tiny_tokenizer(CORPUS), ROWS))
    rewards = [o["reward_score"] for o in outputs]
    assert math.isnan(rewards[2]) and not any(math.isnan(r) for i, r in enumerate(rewards) if i != 2)
    # a group of four: right, wrong, unscored, format error
    data = advantage_batch(rewards, ["g"] * 4)
    data = compute_advantage(data, adv_estimator=config.algorithm.adv_estimator, config=config.algorithm)
    adv = data.batch["advantages"][:, -1]
    reference = advantage_batch([rewards[0], rewards[1], rewards[3]], ["g"] * 3)
    reference = compute_advantage(reference, adv_estimator="grpo", config=config.algorithm)
    assert adv[2] == 0 and data.batch["response_mask"][2].sum() == 0  # out of the loss
    assert torch.allclose(adv[[0, 1, 3]], reference.batch["advantages"][:, -1])  # group stats without it
    assert not torch.isnan(data.batch["token_level_scores"]).any()
    # with the placeholder instead, the unscored response beats the wrong one: what masking prevents
    unmasked = compute_advantage(advantage_batch([rewards[0], rewards[1], 0.0, rewards[3]], ["g"] * 4),
                                 adv_estimator="grpo", config=config.algorithm).batch["advantages"][:, -1]
    assert unmasked[2] > unmasked[1]


def test_unmasked_manager_warns_that_placeholder_stays(tokenizer_dir, caplog):
    with caplog.at_level("WARNING", logger="mdreward.integrations.verl_loop"):
        RewardLoopWorker(verl_config(tokenizer_dir, *MANAGER))
    assert any("mdreward_grpo" in r.getMessage() and "placeholder" in r.getMessage() for r in caplog.records)
