"""Thin, readable GRPO trainers (joint, CGPO, curricula, FAMO, PCGrad) whose rewards come from mdreward.

Import-light: ``trainers.grpo`` and ``trainers.updates`` need only torch; the engine needs
transformers (extra ``train``).
"""
from .grpo import GRPOConfig, group_advantages, grpo_loss, k3_kl
from .updates import CGPO, FAMO, DomainBatch, Joint, PCGrad, make_rule

__all__ = ["CGPO", "FAMO", "DomainBatch", "GRPOConfig", "Joint", "PCGrad", "group_advantages", "grpo_loss",
           "k3_kl", "make_rule"]
