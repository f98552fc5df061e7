"""verl 0.9's reward loop: a reward manager that scores with mdreward, and an advantage estimator
that leaves unscored responses out of GRPO.

verl >= 0.9 computes rewards in ``RewardLoopWorker`` actors (``reward.num_workers``, 8 by default),
one ``run_single`` per response, and finds the manager class in its reward-loop registry or by
import. This module needs verl (it subclasses verl's ``RewardManagerBase``)::

    reward.reward_manager.source=importlib
    reward.reward_manager.module.path=pkg://mdreward.integrations.verl_loop
    reward.reward_manager.name=MdrewardRewardManager
    +reward.reward_kwargs.think_in_prompt=true           # the settings of mdreward.integrations.verl
    algorithm.adv_estimator=mdreward_grpo                 # optional: unscored responses leave the update

Importing the module also registers the manager as ``mdreward`` in verl's reward-loop registry and
the estimator as ``mdreward_grpo`` in verl's advantage-estimator registry (verl imports the module
in the driver when it resolves the manager class, so the estimator is there when the trainer asks).

Masking: with ``algorithm.adv_estimator=mdreward_grpo`` the manager gives an unscored response the
reward NaN, and the estimator takes every NaN row out: it is left out of its group's mean and std,
gets advantage 0, and its ``response_mask`` is zeroed in place (no policy-loss or KL tokens); its
NaN reward is replaced by 0 in place so the step's metrics stay finite. With any other estimator
the placeholder ``unscored_score`` is used, and a warning at start says that it is not masked.
"""
from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Mapping

import numpy as np
import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, register_adv_est

from mdreward.integrations.verl import SETTINGS, VerlReward, shared_reward

log = logging.getLogger(__name__)

#: The advantage estimator registered here; with it, unscored responses are masked.
MASKING_ESTIMATOR = "mdreward_grpo"


def _plain_settings(config: Any) -> dict[str, Any]:
    """``reward.reward_kwargs`` of verl's config (an OmegaConf node or a dict) as plain Python values."""
    reward_cfg = config.get("reward") or {}
    kwargs = reward_cfg.get("reward_kwargs") or {}
    from omegaconf import OmegaConf  # verl depends on it

    plain = OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else kwargs
    if not isinstance(plain, Mapping):
        raise TypeError(f"reward.reward_kwargs must be a mapping, got {type(plain).__name__}")
    settings = {str(k): v for k, v in plain.items() if k in SETTINGS}
    settings.setdefault("reward_workers", reward_cfg.get("num_workers"))
    return settings


@register("mdreward")
class MdrewardRewardManager(RewardManagerBase):
    """Scores each response with mdreward; concurrent ``run_single`` calls become one Scorer batch.

    verl's worker starts one task per response in the same event-loop turn; each task decodes its
    response and queues it, and the first one schedules a flush for the next turn, which scores
    everything queued in one call (parallel checks, deduplication). ``reward_extra_info`` carries
    mdreward's result keys (``scored``, ``status``, ``acc`` None when unscored, ...).
    """

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, reward_router_address: Any = None,
                 reward_model_tokenizer: Any = None, **_: Any) -> None:
        super().__init__(config, tokenizer, compute_score)
        self.reward: VerlReward = shared_reward(**_plain_settings(config))
        estimator = str((config.get("algorithm") or {}).get("adv_estimator") or "")
        self.masked = estimator == MASKING_ESTIMATOR
        self._queue: list[tuple[tuple[Any, str, Any, Any], asyncio.Future[dict[str, Any]]]] = []
        if not self.masked:
            log.warning("mdreward: unscored responses get the placeholder reward %s and stay in the update "
                        "(algorithm.adv_estimator=%s); set algorithm.adv_estimator=%s to leave them out",
                        self.reward.unscored_score, estimator or "?", MASKING_ESTIMATOR)

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        item = data[-1:][0]  # multi-sequence outputs: the last sequence carries the answer (as verl's managers)
        response_ids = item.batch["responses"]
        valid_length = int(item.batch["attention_mask"][-response_ids.shape[-1]:].sum())
        tokenizer: Any = self.tokenizer
        text = tokenizer.decode(response_ids[:valid_length], skip_special_tokens=True)
        non_tensor = item.non_tensor_batch
        reward_model = non_tensor.get("reward_model") or {}
        extra_info = non_tensor.get("extra_info")
        request = (non_tensor.get("data_source"), text, reward_model.get("ground_truth"),
                   dict(extra_info) if isinstance(extra_info, Mapping) else None)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        result = await future
        unscored_reward = math.nan if self.masked else self.reward.unscored_score
        return {"reward_score": result["score"] if result["scored"] else unscored_reward, "reward_extra_info": result}

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        columns = list(zip(*(request for request, _ in batch)))
        try:
            results = await self.reward.acompute_score_batch(*columns)
        except Exception as exc:  # noqa: BLE001 - hand the failure to every waiting run_single, where verl sees it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)


@register_adv_est(MASKING_ESTIMATOR)
def compute_grpo_advantage_scored_only(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                                       index: np.ndarray, epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool = True,
                                       config: Any | None = None, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GRPO advantage over the scored responses only; rows whose reward is NaN (unscored,
    from :class:`MdrewardRewardManager`) get advantage 0 and a zeroed ``response_mask`` (in place)."""
    if config is not None:
        norm_adv_by_std_in_grpo = bool(config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo))
    unscored = torch.isnan(token_level_rewards).any(dim=-1)
    token_level_rewards.nan_to_num_(0.0)
    advantages = torch.zeros_like(token_level_rewards)
    if bool(unscored.any()):
        response_mask[unscored] = 0
        log.warning("mdreward_grpo: %d of %d responses unscored; left out of the advantage and the loss",
                    int(unscored.sum()), len(unscored))
    keep = (~unscored).nonzero(as_tuple=True)[0]
    if len(keep):
        kept_adv, _ = compute_grpo_outcome_advantage(
            token_level_rewards[keep], response_mask[keep], np.asarray(index, dtype=object)[keep.numpy()],
            epsilon=epsilon, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config)
        advantages[keep] = kept_adv
    return advantages, advantages
