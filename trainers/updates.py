"""Update rules over one mini-batch split by domain: joint, CGPO (and CGPO_fix), FAMO, PCGrad.

Engine-agnostic: a rule gets the model, its optimizer, the mini-batch as ``DomainBatch`` es (each a
list of micro-batches of one domain) and an ``Objective`` that turns a micro-batch into a loss. It
never generates, scores, or moves data between devices, so a distributed engine reuses it as is.

Exactness convention: an objective returns each micro-batch's loss as a sum over its units (tokens
or sequences) plus the unit count. A domain's loss ``L_k`` is its summed total over its own units
(the configured aggregation, within the domain). Its share of the mini-batch (``share_by``) is, by
default, its share of the samples, ``n_k / sum_j n_j`` (Algorithm 1's ``|D_k| / sum |D|``);
``"units"`` uses ``units_k / sum_j units_j`` instead, and then ``sum_k share_k * L_k`` is exactly
the plain joint loss of the mini-batch for every aggregation mode; ``"micro_batches"`` counts
micro-batches (the authors' code).

Data parallelism (DDP, FSDP2, a verl actor group): an objective with a ``data_parallel``
attribute (:class:`DataParallel`) makes ``shares`` and ``backward_domain`` work on the global
mini-batch: counts and units are summed over the ranks, and every rank runs the same number of
forward/backward passes per domain (a rank short of rows runs the domain's ``filler``, or its
objective's ``filler()``, with weight 0), so the collectives inside forward and backward always
match. Every rank must then pass the same domain names in the same order (an empty
``micro_batches`` list where it holds no row of a domain).
"""
from __future__ import annotations

import contextlib
import math
from contextlib import AbstractContextManager, nullcontext
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Protocol, Sequence

import torch
import torch.distributed as dist

from .grpo import Aggregate, mean_stats


class Objective(Protocol):
    """Turns one micro-batch into a loss (``Aggregate``) and metric sums."""

    def units(self, micro_batch: Any, /) -> float: ...

    def samples(self, micro_batch: Any, /) -> int: ...

    def __call__(self, model: torch.nn.Module, micro_batch: Any, /) -> tuple[Aggregate, dict[str, float]]: ...


@dataclass
class DomainBatch:
    """The part of one mini-batch that belongs to one domain.

    ``mean_reward`` and ``reward_range`` (the domain's lowest and highest reward) are what FAMO
    needs; other rules ignore them. ``filler``: under data parallelism, the micro-batch this rank runs
    at weight 0 when it has fewer micro-batches of the domain than another rank (default: the
    objective's ``filler()``); an engine whose collectives need equal shapes per pass sets it.
    """

    name: str
    micro_batches: list[Any]
    mean_reward: float | None = None
    reward_range: tuple[float, float] = (-1.0, 1.0)
    filler: Any = None


@dataclass
class UpdateResult:
    """What one mini-batch update did: the domain order, per-domain metrics, rule-specific values."""

    order: list[str]
    domains: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


class UpdateRule(Protocol):
    name: str

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        """Called once per rollout step with the whole rollout batch (FAMO's progress signal)."""

    def update(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[DomainBatch],
               objective: Objective, *, step: int, scheduler: Any = None) -> UpdateResult: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


# ---- data parallelism ------------------------------------------------------------------------
@dataclass(frozen=True)
class DataParallel:
    """The data-parallel group the shared pieces reduce over (set as ``objective.data_parallel``).

    ``grad_average``: the engine averages gradients over the group (DDP, FSDP2 do), so each rank's
    loss is multiplied by the group size to make the synchronised gradient that of the global loss.
    ``no_sync(model)``: a context that defers gradient synchronisation (DDP ``no_sync``, FSDP2
    ``set_requires_gradient_sync(False)``); used for all but a domain's last micro-batch.
    ``device``: where the reduced tensors live (``cuda`` for NCCL, ``cpu`` for gloo).
    """

    group: Any = None
    device: str | torch.device = "cpu"
    grad_average: bool = True
    no_sync: Callable[[torch.nn.Module], AbstractContextManager[Any]] | None = None

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    def _reduce(self, values: Sequence[float], op: Any) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op, group=self.group)
        return t.tolist()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the group (every rank must call with the same length)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)


def data_parallel_of(objective: Any) -> DataParallel | None:
    """The objective's data-parallel group, or None (none set, or torch.distributed not initialised)."""
    dp = getattr(objective, "data_parallel", None)
    if dp is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dp


def local_tensor(p: torch.Tensor) -> torch.Tensor:
    """A parameter's local storage: its shard for an FSDP2 DTensor (a view: in-place ops write through)."""
    to_local = getattr(p, "to_local", None)
    return to_local() if callable(to_local) else p


def is_sharded(params: Iterable[torch.Tensor]) -> bool:
    return any(callable(getattr(p, "to_local", None)) for p in params)


def refuse_sharded(params: Iterable[torch.Tensor], rule: str, needs: str) -> None:
    """Raise for FSDP2-sharded parameters: ``rule`` needs ``needs``, and each rank holds only a shard."""
    if is_sharded(params):
        raise ValueError(f"{rule} needs {needs}; with sharded (FSDP2) parameters each rank holds only a shard of "
                         f"them: run {rule} under DDP (or one process)")


# ---- shared pieces ---------------------------------------------------------------------------
def domain_units(batch: DomainBatch, objective: Objective) -> float:
    return float(sum(objective.units(mb) for mb in batch.micro_batches))


ShareBy = Literal["samples", "units", "micro_batches"]
SHARE_BY = ("samples", "units", "micro_batches")


def check_share_by(share_by: str) -> None:
    if share_by not in SHARE_BY:
        raise ValueError(f"share_by must be one of {SHARE_BY}, got {share_by!r}")


def shares(batches: Sequence[DomainBatch], objective: Objective, share_by: ShareBy = "samples", *,
           data_parallel: DataParallel | None = None) -> dict[str, float]:
    """Each domain's share of the mini-batch: of its samples (default), units (tokens or sequences),
    or micro-batches. Under data parallelism (``data_parallel``, default the objective's) the counts
    are summed over the ranks first, so every rank gets the same shares."""
    check_share_by(share_by)
    units = [domain_units(b, objective) for b in batches]
    if share_by == "samples":
        counts = {b.name: float(sum(objective.samples(mb) for mb in b.micro_batches)) for b in batches}
    elif share_by == "units":
        counts = {b.name: u for b, u in zip(batches, units)}
    else:
        counts = {b.name: float(len(b.micro_batches)) for b in batches}
    dp = data_parallel or data_parallel_of(objective)
    if dp is not None:
        reduced = dp.sum(list(counts.values()) + units)
        counts = dict(zip(counts, reduced[:len(counts)]))
        units = reduced[len(counts):]
    total = sum(counts.values())
    empty = [b.name for b, u in zip(batches, units) if u <= 0]
    if total <= 0 or empty:
        raise ValueError(f"domains {empty or [b.name for b in batches]} have no units (tokens or sequences) to train "
                         "on in this mini-batch (empty or fully masked responses?)")
    return {name: c / total for name, c in counts.items()}


def importance_factors(names: Sequence[str], weights: Mapping[str, float] | None) -> dict[str, float]:
    """Appendix E.2: domain k's loss is scaled by ``K * w_k``; ``None`` means uniform (factor 1).

    Weights are renormalised over the domains present in this mini-batch.
    """
    if weights is None:
        return {n: 1.0 for n in names}
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"domain_weights has no weight for {missing}; it has {sorted(weights)}")
    total = sum(float(weights[n]) for n in names)
    if total <= 0 or any(float(weights[n]) < 0 for n in names):
        raise ValueError(f"domain weights must be non-negative with a positive sum, got {dict(weights)}")
    return {n: len(names) * float(weights[n]) / total for n in names}


#: The metric sums ``grpo_loss`` reports (summed over ranks under data parallelism).
STAT_SUMS = ("tokens", "kl_tok", "clip_tok", "ratio_tok", "policy_loss_tok")


def domain_scales(batches: Sequence[DomainBatch], objective: Objective, share_by: ShareBy = "samples",
                  domain_weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each domain's loss scale in a mini-batch: its share (``shares``) times its importance factor."""
    share = shares(batches, objective, share_by)
    factor = importance_factors([b.name for b in batches], domain_weights)
    return {b.name: share[b.name] * factor[b.name] for b in batches}


def backward_domain(model: torch.nn.Module, batch: DomainBatch, objective: Objective, scale: float,
                    units: float | None = None, *, data_parallel: DataParallel | None = None) -> dict[str, float]:
    """Accumulate ``scale * L_k`` gradients over the domain's micro-batches; return its metrics.

    Under data parallelism (``data_parallel``, default the objective's) ``L_k`` is the domain's loss
    over all ranks: ``units`` defaults to the global count, every rank runs the group's largest number
    of micro-batches of the domain (padding with ``objective.filler()`` at weight 0), and the metrics
    are global.
    """
    dp = data_parallel or data_parallel_of(objective)
    passes: list[tuple[Any, float]] = [(mb, 1.0) for mb in batch.micro_batches]
    grad_factor = 1.0
    if dp is None:
        units = domain_units(batch, objective) if units is None else units
    else:
        local_units, count = domain_units(batch, objective), float(len(passes))
        total_units = dp.sum([local_units])[0]
        most = int(dp.max([count])[0])
        units = total_units if units is None else units
        if most > len(passes):
            filler = batch.filler if batch.filler is not None else objective.filler()  # type: ignore[attr-defined]
            passes += [(filler, 0.0)] * (most - len(passes))
        grad_factor = float(dp.size) if dp.grad_average else 1.0
    loss_value = 0.0
    stats: list[dict[str, float]] = []
    for i, (mb, weight) in enumerate(passes):
        defer = dp is not None and dp.no_sync is not None and i < len(passes) - 1
        with dp.no_sync(model) if defer else nullcontext():  # type: ignore[union-attr,misc]
            agg, st = objective(model, mb)
            loss = agg.total / units
            (loss * (scale * grad_factor * weight)).backward()
        if weight:
            loss_value += float(loss.detach())
            stats.append(st)
    if dp is not None:
        local = [loss_value, float(bool(stats) and "tokens" in stats[0])]
        local += [sum(s.get(k, 0.0) for s in stats) for k in STAT_SUMS]
        reduced = dp.sum(local)
        loss_value = reduced[0]
        stats = [dict(zip(STAT_SUMS, reduced[2:]))] if reduced[1] > 0 else []
    out = {"loss": loss_value, "units": units}
    if stats and "tokens" in stats[0]:
        out.update(mean_stats(stats))
    return out


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float | None,
                  grad_scale: float = 1.0) -> float:
    """Optionally clip the gradient norm, then step; returns the pre-clip norm (nan if not computed).

    ``grad_scale``: the gradient was multiplied by it (a scaled loss); clipping then acts on the
    unscaled gradient (the bound is ``max_grad_norm * grad_scale``) and the norm returned is the
    unscaled one, so a scaled loss clips exactly as a scaled learning rate does.
    """
    norm = math.nan
    if max_grad_norm is not None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm * grad_scale))
        norm = norm / grad_scale if grad_scale > 0 else norm
        if not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return norm  # skip a non-finite step rather than poison the weights
    optimizer.step()
    return norm


@contextlib.contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """Every param group's learning rate times ``factor`` meanwhile (CGPO's ``scaling="lr"``)."""
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * factor
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, saved):
            g["lr"] = lr


def step_generator(seed: int, step: int) -> torch.Generator:
    """A private generator seeded by (seed, step) alone: the same draws on every rank and after a resume."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


def seeded_order(names: Iterable[str], seed: int, step: int) -> list[str]:
    """A random permutation of ``names`` that depends only on (seed, step) and the set of names.

    Names are sorted first, so every data-parallel rank gets the same order whatever order its
    batches arrived in; the generator is private (never the global ``random`` or torch RNG).
    """
    ordered = sorted(names)
    gen = step_generator(seed, step)
    return [ordered[i] for i in torch.randperm(len(ordered), generator=gen).tolist()]


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


class Stateless:
    """Update rules that keep no state between mini-batches (checkpoints store nothing for them)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


# ---- joint learning --------------------------------------------------------------------------
@dataclass
class Joint(Stateless):
    """One aggregated optimizer step on the whole mini-batch (optionally importance-weighted)."""

    domain_weights: Mapping[str, float] | None = None
    max_grad_norm: float | None = None
    share_by: ShareBy = "samples"
    name: str = "joint"

    def __post_init__(self) -> None:
        check_share_by(self.share_by)

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        pass

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        scale = domain_scales(batches, objective, self.share_by, self.domain_weights)
        optimizer.zero_grad(set_to_none=True)
        result = UpdateResult(order=[b.name for b in batches])
        for b in batches:
            result.domains[b.name] = backward_domain(model, b, objective, scale[b.name])
        result.extra["grad_norm"] = clip_and_step(model, optimizer, self.max_grad_norm)
        if scheduler is not None:
            scheduler.step()
        return result


# ---- CGPO ------------------------------------------------------------------------------------
@dataclass
class CGPO:
    """Curvature-Guided Policy Optimization (Algorithm 1, lines 11-15) on one mini-batch.

    For a domain order sigma: phi_0 = theta; one optimizer step per domain, its step scaled by the
    domain's share; then theta = phi_0 + alpha (phi_K - phi_0).

    ``scaling="lr"`` multiplies each param group's learning rate by the share for that step and
    restores it (the paper's text); ``"loss"`` multiplies the loss (the authors' code). With SGD the
    two are identical, gradient clipping included (in "loss" mode the bound is scaled with the loss);
    with Adam the loss scale nearly cancels in m/sqrt(v), so "loss" takes about K full-size steps per
    mini-batch where "lr" takes K steps that add up to one. ``optimizer_state="shared"`` (default, as in
    the authors' code): the K domain steps share the optimizer's state (Adam's moments and step count)
    and each advances it; ``"per_domain"`` keeps one state per domain (K times the optimizer memory;
    the rule's ``state_dict`` carries it for checkpoints).
    ``order="fixed"`` is CGPO_fix (``fixed_order`` or sorted names). ``phi0_device="cpu"`` keeps the
    snapshot off the accelerator. ``alpha == 1`` needs no snapshot at all.
    """

    alpha: float = 1.2
    scaling: Literal["lr", "loss"] = "lr"
    order: Literal["random", "fixed"] = "random"
    fixed_order: Sequence[str] | None = None
    seed: int = 0
    phi0_device: str | None = None
    domain_weights: Mapping[str, float] | None = None
    max_grad_norm: float | None = None
    share_by: ShareBy = "samples"
    optimizer_state: Literal["shared", "per_domain"] = "shared"
    name: str = "cgpo"
    _domain_states: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _pending: Mapping[str, Any] | None = field(default=None, init=False, repr=False)
    _param_index: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_share_by(self.share_by)
        if self.optimizer_state not in ("shared", "per_domain"):
            raise ValueError(f"optimizer_state must be 'shared' or 'per_domain', got {self.optimizer_state!r}")
        if self.scaling not in ("lr", "loss"):
            raise ValueError(f"scaling must be 'lr' or 'loss', got {self.scaling!r}")
        if self.order not in ("random", "fixed"):
            raise ValueError(f"order must be 'random' or 'fixed', got {self.order!r}")

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        pass

    def domain_order(self, names: Iterable[str], step: int) -> list[str]:
        names = list(names)
        if self.order == "random":
            return seeded_order(names, self.seed, step)
        if self.fixed_order is None:
            return sorted(names)
        unknown = [n for n in names if n not in self.fixed_order]
        if unknown:
            raise ValueError(f"fixed_order {list(self.fixed_order)} does not name domains {unknown}")
        return [n for n in self.fixed_order if n in names]

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        by_name = {b.name: b for b in batches}
        scales = domain_scales(batches, objective, self.share_by, self.domain_weights)
        order = self.domain_order(by_name, step)
        params = [p for p in _params(optimizer) if p.requires_grad]
        phi0 = None
        if self.alpha != 1.0:
            with torch.no_grad():
                # FSDP2: each rank snapshots (and later interpolates) its own shard of every parameter
                phi0 = [local_tensor(p.detach()).to(self.phi0_device or local_tensor(p).device, copy=True)
                        for p in params]
        result = UpdateResult(order=order)
        for name in order:
            with self._optimizer_state_of(optimizer, name):
                result.domains[name] = self._domain_step(model, optimizer, by_name[name], objective, scales[name],
                                                         params)
        optimizer.zero_grad(set_to_none=True)
        if phi0 is not None:
            with torch.no_grad():
                for p, p0 in zip(params, phi0):
                    # lerp(start=phi_K, end=phi_0, w=1-alpha) = phi_0 + alpha (phi_K - phi_0); exact at alpha 0 and 1
                    shard = local_tensor(p)
                    shard.lerp_(p0.to(shard.device, non_blocking=True), 1.0 - self.alpha)
        if scheduler is not None:
            scheduler.step()
        return result

    def _domain_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: DomainBatch,
                     objective: Objective, scale: float, params: list[torch.Tensor]) -> dict[str, float]:
        """One domain's sub-step, its step scaled by ``scale`` (a subclass may change how it steps)."""
        optimizer.zero_grad(set_to_none=True)
        stats = backward_domain(model, batch, objective, 1.0 if self.scaling == "lr" else scale)
        if self.scaling == "lr":
            with scaled_lr(optimizer, scale):
                stats["grad_norm"] = clip_and_step(model, optimizer, self.max_grad_norm)
        else:
            stats["grad_norm"] = clip_and_step(model, optimizer, self.max_grad_norm, grad_scale=scale)
        return stats

    @contextlib.contextmanager
    def _optimizer_state_of(self, optimizer: torch.optim.Optimizer, domain: str) -> Iterator[None]:
        """With ``optimizer_state="per_domain"``: the optimizer sees only ``domain``'s state meanwhile."""
        if self.optimizer_state == "shared":
            yield
            return
        params = _params(optimizer)
        self._param_index = {id(p): i for i, p in enumerate(params)}
        if self._pending is not None:  # restored from a checkpoint: parameter indices -> parameters
            self._domain_states = {n: defaultdict(dict, {params[int(i)]: dict(st) for i, st in states.items()})
                                   for n, states in self._pending.items()}
            self._pending = None
        shared = optimizer.state
        optimizer.state = self._domain_states.setdefault(domain, defaultdict(dict))
        try:
            yield
        finally:
            optimizer.state = shared

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer_state == "shared":
            return {}
        if self._pending is not None:
            return {"domain_states": dict(self._pending)}
        return {"domain_states": {n: {self._param_index[id(p)]: dict(st) for p, st in states.items()}
                                  for n, states in self._domain_states.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("domain_states") is not None:
            self._pending = dict(state["domain_states"])


# ---- FAMO adapted to RL ----------------------------------------------------------------------
@dataclass
class FAMO:
    """FAMO (Liu et al., 2023) with a positive per-domain quantity in place of the task loss.

    FAMO weights tasks by ``z_k / l_k`` (``z = softmax(w)``) and moves ``w`` towards the task whose
    ``log l_k`` decreased least. It needs ``l_k > 0`` and a quantity that falls as the task is learnt;
    the GRPO loss is neither (about zero on-policy, either sign). We use
    ``q_k = (r_max - mean_reward_k) / (r_max - r_min) + eps``: the distance to the best reward, from
    the rollout batch of each step. The model step minimises ``sum_k a_k L_k^GRPO`` with
    ``a_k = (z_k / q_k) / sum_j (z_j / q_j)`` (weights sum to 1); ``w`` takes one Adam step per
    rollout step on ``delta_k = log q_k(prev) - log q_k(now)``.
    """

    w_lr: float = 0.025
    gamma: float = 0.01
    eps: float = 1e-3
    max_grad_norm: float | None = None
    name: str = "famo"
    _names: list[str] = field(default_factory=list, init=False, repr=False)
    _logits: torch.Tensor | None = field(default=None, init=False, repr=False)
    _opt: torch.optim.Optimizer | None = field(default=None, init=False, repr=False)
    _q: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _prev_q: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def _ensure(self, names: Sequence[str]) -> None:
        names = sorted(names)
        if names == self._names and self._logits is not None:
            return
        if self._names and not set(names) <= set(self._names):
            raise ValueError(f"FAMO saw new domains {sorted(set(names) - set(self._names))} mid-run")
        if not self._names:
            self._names = names
            self._logits = torch.zeros(len(names), requires_grad=True)
            self._opt = torch.optim.Adam([self._logits], lr=self.w_lr, weight_decay=self.gamma)

    def quantity(self, batch: DomainBatch) -> float:
        if batch.mean_reward is None:
            raise ValueError(f"FAMO needs the mean reward of domain {batch.name!r}")
        low, high = batch.reward_range
        if not high > low:
            raise ValueError(f"bad reward range {batch.reward_range} for domain {batch.name!r}")
        return min(max((high - batch.mean_reward) / (high - low), 0.0), 1.0) + self.eps

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        """New rollouts: measure q_k and move the logits by the improvement since the last step."""
        self._ensure([b.name for b in batches])
        # a domain whose rollouts were all unscored has no mean reward: keep its last value, skip this w step
        measured = {b.name: self.quantity(b) for b in batches if b.mean_reward is not None}
        now = {**self._q, **measured}
        if self._prev_q and set(measured) == set(self._prev_q):
            assert self._logits is not None and self._opt is not None  # set by _ensure
            delta = torch.tensor([math.log(self._prev_q[n]) - math.log(now[n]) for n in self._names])
            with torch.enable_grad():
                z = torch.softmax(self._logits, -1)
                (grad,) = torch.autograd.grad(z, self._logits, grad_outputs=delta)
            self._opt.zero_grad()
            self._logits.grad = grad
            self._opt.step()
        self._prev_q = now
        self._q = now

    def task_weights(self) -> dict[str, float]:
        """``z = softmax(w)``: the share FAMO gives each domain (sums to 1)."""
        if self._logits is None:
            raise RuntimeError("FAMO has no task weights before its first observe()")
        z = torch.softmax(self._logits.detach(), -1).tolist()
        return dict(zip(self._names, z))

    def loss_weights(self, names: Sequence[str]) -> dict[str, float]:
        """``a_k = (z_k / q_k) / sum_j (z_j / q_j)`` over the domains present (sums to 1)."""
        z = self.task_weights()
        raw = {n: z[n] / self._q.get(n, 1.0 + self.eps) for n in names}  # never measured: as far as can be
        total = sum(raw.values())
        return {n: v / total for n, v in raw.items()}

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        names = [b.name for b in batches]
        if not self._q or not set(names) <= set(self._q):
            self.observe(step, batches)  # used without an engine: measure q from this mini-batch
        weights = self.loss_weights(names)
        optimizer.zero_grad(set_to_none=True)
        result = UpdateResult(order=names)
        for b in batches:
            result.domains[b.name] = backward_domain(model, b, objective, weights[b.name])
            result.domains[b.name]["famo_weight"] = weights[b.name]
        result.extra["grad_norm"] = clip_and_step(model, optimizer, self.max_grad_norm)
        if scheduler is not None:
            scheduler.step()
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"names": self._names, "logits": None if self._logits is None else self._logits.detach().clone(),
                "opt": None if self._opt is None else self._opt.state_dict(), "q": self._q, "prev_q": self._prev_q}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("logits") is None:
            return
        self._names = list(state["names"])
        self._logits = state["logits"].clone().requires_grad_(True)
        self._opt = torch.optim.Adam([self._logits], lr=self.w_lr, weight_decay=self.gamma)
        self._opt.load_state_dict(state["opt"])
        self._q, self._prev_q = dict(state["q"]), dict(state["prev_q"])


# ---- PCGrad ----------------------------------------------------------------------------------
def project_conflicting(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al., 2020): project each row of ``grads`` [K, P] off the others it conflicts with.

    For each i, visit the other gradients in random order and remove from g_i its component along
    g_j whenever g_i . g_j < 0 (against the original g_j). Returns the projected rows [K, P].
    With K = 2 no projected row conflicts with the other original gradient; with K >= 3 one pass
    does not guarantee that for every pair (a later projection can reintroduce a conflict).
    """
    k = grads.shape[0]
    out = grads.clone()
    sq = (grads * grads).sum(-1)
    for i in range(k):
        others = [j for j in torch.randperm(k, generator=generator).tolist() if j != i]
        for j in others:
            dot = torch.dot(out[i], grads[j])
            if dot < 0 and sq[j] > 0:
                out[i] -= dot / sq[j] * grads[j]
    return out


@dataclass
class PCGrad(Stateless):
    """Joint step on the sum of PCGrad-projected per-domain gradients (each already share-weighted).

    Memory: K flat gradients plus their projections live at once (2K extra parameter-sized buffers),
    on the parameters' device: this is why PCGrad runs out of memory at 7B in the paper.
    """

    seed: int = 0
    domain_weights: Mapping[str, float] | None = None
    max_grad_norm: float | None = None
    share_by: ShareBy = "samples"
    name: str = "pcgrad"

    def __post_init__(self) -> None:
        check_share_by(self.share_by)

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        pass

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        scale = domain_scales(batches, objective, self.share_by, self.domain_weights)
        params = [p for p in _params(optimizer) if p.requires_grad]
        refuse_sharded(params, "PCGrad", "whole per-domain gradients to project")
        result = UpdateResult(order=[b.name for b in batches])
        flat = []
        for b in batches:
            optimizer.zero_grad(set_to_none=True)
            result.domains[b.name] = backward_domain(model, b, objective, scale[b.name])
            flat.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                   for p in params]))
        grads = torch.stack(flat)
        del flat
        gen = step_generator(self.seed, step)
        projected = project_conflicting(grads, gen)
        result.extra["conflicts"] = float(((grads @ grads.T) < 0).sum()) / 2
        merged = projected.sum(0)
        del grads, projected
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = merged[offset:offset + n].view_as(p)
            offset += n
        result.extra["grad_norm"] = clip_and_step(model, optimizer, self.max_grad_norm)
        if scheduler is not None:
            scheduler.step()
        return result


RULES = {"joint": Joint, "cgpo": CGPO, "famo": FAMO, "pcgrad": PCGrad}


def make_rule(name: str, **options: Any) -> UpdateRule:
    """Build a rule by name: joint, cgpo, cgpo_fix (CGPO with a fixed order), famo, pcgrad."""
    if name == "cgpo_fix":
        return CGPO(order="fixed", name="cgpo_fix", **options)
    if name not in RULES:
        raise ValueError(f"unknown update rule {name!r}; known: {sorted(RULES) + ['cgpo_fix']}")
    return RULES[name](**options)


from .mgs import MGS  # noqa: E402  (at the end: trainers.mgs builds on this module)
RULES["mgs"] = MGS
from .capo import CAPO  # noqa: E402  (CAPO wraps the rules above: imported after RULES)
RULES["capo"] = CAPO
from .gxpo import CGPOGXPO, FAMOGXPO, GXPO  # noqa: E402  (after RULES: trainers.gxpo imports this module)
RULES.update(gxpo=GXPO, cgpo_gxpo=CGPOGXPO, famo_gxpo=FAMOGXPO)
