#!/usr/bin/env bash
# CGPO (or another mdreward update rule) as verl 0.9's actor update, rewards from mdreward's reward manager.
# docs/verl.md explains every mdreward setting. Any verl override can be appended: bash run_cgpo.sh trainer.total_epochs=3
#
#   MODEL=Qwen/Qwen2.5-7B-Instruct TRAIN=train.parquet VAL=val.parquet NGPUS=8 bash examples/verl/run_cgpo.sh
#   RULE=joint bash examples/verl/run_cgpo.sh       # the joint control in the same pipeline
set -euo pipefail

MODEL=${MODEL:?set MODEL to a Hugging Face model id or path}
TRAIN=${TRAIN:?set TRAIN to a verl parquet file (data_source, prompt, reward_model.ground_truth, extra_info)}
VAL=${VAL:-$TRAIN}
NGPUS=${NGPUS:-8}
RULE=${RULE:-cgpo}             # joint | cgpo | cgpo_fix | pcgrad (one data-parallel rank) | famo
ALPHA=${ALPHA:-1.2}            # CGPO's interpolation factor
SCALING=${SCALING:-lr}         # lr: the paper's text; loss: the authors' code
SHARE_BY=${SHARE_BY:-samples}  # samples | units | micro_batches

rule_options=()
case "$RULE" in
  cgpo|cgpo_fix) rule_options=(+mdreward_update.alpha="$ALPHA" +mdreward_update.scaling="$SCALING"
                               +mdreward_update.share_by="$SHARE_BY" +mdreward_update.seed=0) ;;
  joint|pcgrad) rule_options=(+mdreward_update.share_by="$SHARE_BY") ;;
esac

# trainer.use_v1=false: verl's v0 trainer hands the actor the whole batch, data_source included;
# with the v1 (transfer-queue) trainer make sure data_source reaches the actor (docs/verl.md).
python -m mdreward.integrations.verl_update \
    data.train_files="$TRAIN" data.val_files="$VAL" \
    data.train_batch_size=256 data.max_prompt_length=1024 data.max_response_length=4096 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.actor.use_kl_loss=true actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 \
    reward.reward_manager.source=importlib \
    reward.reward_manager.module.path=pkg://mdreward.integrations.verl_loop \
    reward.reward_manager.name=MdrewardRewardManager \
    +reward.reward_kwargs.think_in_prompt=true \
    algorithm.adv_estimator=mdreward_grpo \
    trainer.use_v1=false \
    trainer.n_gpus_per_node="$NGPUS" trainer.nnodes=1 \
    +mdreward_update.rule="$RULE" "${rule_options[@]}" \
    "$@"
