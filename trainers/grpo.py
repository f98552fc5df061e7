"""GRPO core: group-normalized advantages, the clipped surrogate, the k3 KL penalty, loss aggregation.

All functions are pure tensor code (no model, no engine). Shapes: ``[batch, response_len]`` for
per-token tensors, with a 0/1 ``mask`` marking real response tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

#: verl's ``loss_agg_mode`` names; TRL's ``loss_type`` names map onto them (see ``LOSS_AGG_ALIASES``).
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LOSS_AGG_ALIASES = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
                    "dr_grpo": "seq-mean-token-sum-norm"}


def resolve_loss_agg(mode: str) -> str:
    """A verl mode name, or a TRL ``loss_type`` alias, as the verl name."""
    mode = LOSS_AGG_ALIASES.get(mode, mode)
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; use one of {LOSS_AGG_MODES} "
                         f"or a TRL alias {sorted(LOSS_AGG_ALIASES)}")
    return mode


def group_advantages(rewards: Sequence[float | None], group_ids: Sequence[int], *, eps: float = 1e-6,
                     scale: bool = True) -> list[float]:
    """GRPO advantages ``(r - mean) / (std + eps)`` within each group of responses to one prompt.

    ``None`` rewards (unscored: infrastructure failure) get advantage 0 and are left out of their
    group's mean and std, so an outage never reads as a wrong answer. A group with fewer than two
    scored members, or with all rewards equal, gives 0 to every member. ``std`` is the unbiased
    sample standard deviation (``torch.std``, as in verl and TRL). ``scale=False`` gives Dr. GRPO's
    mean-centred advantages.
    """
    if len(rewards) != len(group_ids):
        raise ValueError(f"{len(rewards)} rewards for {len(group_ids)} group ids")
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    out = [0.0] * len(rewards)
    for idx in members.values():
        values = {i: reward for i in idx if (reward := rewards[i]) is not None}
        scored = list(values)
        if len(scored) < 2:
            continue
        r = torch.tensor([float(values[i]) for i in scored], dtype=torch.float64)
        centred = r - r.mean()
        if scale:
            std = r.std()
            if float(std) == 0.0:
                continue
            centred = centred / (std + eps)
        for i, a in zip(scored, centred.tolist()):
            out[i] = a
    return out


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, *, clamp: float | None = 10.0) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: ``exp(d) - d - 1`` with ``d = ref - logp``.

    Non-negative, unbiased in expectation under pi. ``clamp`` bounds the value (verl's ``low_var_kl``
    clamps to [-10, 10]); ``None`` disables it.
    """
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1.0
    return kl.clamp(min=-clamp, max=clamp) if clamp is not None else kl


@dataclass(frozen=True)
class Aggregate:
    """A loss summed over its units (tokens or sequences) and the number of units.

    Summing ``total`` and ``units`` over micro-batches, then dividing, gives exactly the loss of the
    whole mini-batch: this is what makes gradient accumulation and per-domain splitting exact.
    """

    total: torch.Tensor
    units: float


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, *, max_response_len: int | None = None) -> Aggregate:
    """Aggregate a per-token loss into (sum over units, number of units) for ``mode`` (verl names).

    token-mean: every response token counts once (DAPO; TRL ``bnpo``/``dapo``).
    seq-mean-token-mean: mean over each sequence's tokens, then over sequences (TRL ``grpo``).
    seq-mean-token-sum: sum over each sequence's tokens, mean over sequences.
    seq-mean-token-sum-norm: token sum divided by a constant ``max_response_len``, mean over sequences
    (Dr. GRPO; TRL ``dr_grpo``).
    """
    mode = resolve_loss_agg(mode)
    mask = mask.to(loss_mat.dtype)
    per_token = loss_mat * mask
    if mode == "token-mean":
        return Aggregate(per_token.sum(), float(mask.sum()))
    seq_sum = per_token.sum(-1)
    n_seq = float(loss_mat.shape[0])
    if mode == "seq-mean-token-mean":
        return Aggregate((seq_sum / mask.sum(-1).clamp(min=1.0)).sum(), n_seq)
    if mode == "seq-mean-token-sum":
        return Aggregate(seq_sum.sum(), n_seq)
    norm = float(max_response_len if max_response_len is not None else loss_mat.shape[-1])
    return Aggregate(seq_sum.sum() / norm, n_seq)


def aggregation_units(mask: torch.Tensor, mode: str) -> float:
    """The number of units ``aggregate`` will count for ``mask`` (known before any forward pass)."""
    mode = resolve_loss_agg(mode)
    return float(mask.sum()) if mode == "token-mean" else float(mask.shape[0])


@dataclass(frozen=True)
class GRPOConfig:
    """Hyper-parameters of the GRPO surrogate (defaults: the CGPO paper, Appendix C.4)."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    beta: float = 0.001
    loss_agg: str = "token-mean"
    max_response_len: int | None = None
    kl_clamp: float | None = 10.0
    #: The authors' code applies the KL term only to responses whose advantage is non-zero; the
    #: paper's Eq. 1 applies it to every response. Default: the paper.
    kl_only_nonzero_advantage: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss_agg", resolve_loss_agg(self.loss_agg))
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0 and self.beta >= 0):
            raise ValueError(f"bad GRPO hyper-parameters: {self}")


@dataclass(frozen=True)
class TokenLosses:
    """Per-token pieces of the GRPO loss (for inspection and metrics)."""

    policy: torch.Tensor   # max(-A r, -A clip(r)) per token
    kl: torch.Tensor       # k3 per token (zeros when beta == 0)
    clipped: torch.Tensor  # 1.0 where the clipped branch is the active one
    ratio: torch.Tensor


def token_losses(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                 ref_logp: torch.Tensor | None, cfg: GRPOConfig) -> TokenLosses:
    """The clipped surrogate (to minimise) and the KL per token.

    ``old_logp`` must be the log-probabilities recorded when the responses were sampled. It is
    never recomputed here: for the later domains of a CGPO step the current policy has already
    moved, and ``logp.detach()`` as the old policy would make every ratio 1 and switch clipping off.
    ``advantages`` is per sequence ``[batch]`` or per token ``[batch, len]``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    policy = torch.maximum(unclipped, clipped)
    if cfg.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probabilities")
        kl = k3_kl(logp, ref_logp, clamp=cfg.kl_clamp)
    else:
        kl = torch.zeros_like(logp)
    return TokenLosses(policy, kl, (clipped > unclipped).to(logp.dtype), ratio.detach())


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None, cfg: GRPOConfig) -> tuple[Aggregate, dict[str, float]]:
    """The GRPO loss of one micro-batch as an ``Aggregate`` (sum over units, units) plus metric sums.

    Metric values are sums over response tokens (``*_tok``) so callers can average them exactly
    across micro-batches by dividing by ``tokens``.
    """
    parts = token_losses(logp, old_logp, advantages, ref_logp, cfg)
    total = parts.policy
    if cfg.beta > 0:
        kl_mask = mask
        if cfg.kl_only_nonzero_advantage:
            adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)
            kl_mask = mask * (adv != 0).to(mask.dtype).expand_as(mask)
        total = total + cfg.beta * parts.kl * kl_mask.to(total.dtype)
    agg = aggregate(total, mask, cfg.loss_agg, max_response_len=cfg.max_response_len)
    m = mask.to(logp.dtype)
    with torch.no_grad():
        stats = {
            "tokens": float(m.sum()),
            "kl_tok": float((parts.kl * m).sum()),
            "clip_tok": float((parts.clipped * m).sum()),
            "ratio_tok": float((parts.ratio * m).sum()),
            "policy_loss_tok": float((parts.policy.detach() * m).sum()),
        }
    return agg, stats


def mean_stats(stats: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Token-averaged metrics from summed ``grpo_loss`` stats: kl, clip_fraction, ratio, policy_loss."""
    tokens = sum(s["tokens"] for s in stats)
    if tokens == 0:
        return {}
    total = lambda key: sum(s[key] for s in stats)  # noqa: E731
    return {"kl": total("kl_tok") / tokens, "clip_fraction": total("clip_tok") / tokens,
            "ratio": total("ratio_tok") / tokens, "policy_loss": total("policy_loss_tok") / tokens}
