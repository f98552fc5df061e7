"""Which prompts each step trains on: mixed batches, Omni-Thinker's domain phases, self-paced order,
and an optional refresh phase on one domain at the end of any of them.

A sampler is a pure function of the step (``batch(step)``), so resuming needs only the step number.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

from .tasks import Prompt

OMNI_THINKER_ORDER = ("code", "math", "science", "writing")


def _epoch_order(items: Sequence[Prompt], seed: int, epoch: int) -> list[Prompt]:
    order = list(items)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def _cycle(items: Sequence[Prompt], start: int, n: int, seed: int) -> list[Prompt]:
    """``n`` prompts from position ``start`` of an endless sequence of reshuffled epochs."""
    out = []
    for pos in range(start, start + n):
        epoch, i = divmod(pos, len(items))
        out.append(_epoch_order(items, seed, epoch)[i])
    return out


@dataclass
class MixedSampler:
    """Every step draws ``per_domain`` prompts from each domain (joint learning, CGPO, FAMO, PCGrad)."""

    pools: Mapping[str, Sequence[Prompt]]
    per_domain: int
    seed: int = 0

    def batch(self, step: int) -> list[Prompt]:
        return [p for name in sorted(self.pools) for p in _cycle(self.pools[name], step * self.per_domain,
                                                                   self.per_domain, self.seed)]


def omni_thinker_order(domains: Sequence[str], categories: Mapping[str, str]) -> list[str]:
    """Training domains in the paper's category order: code, math, science, writing, then others.

    ``categories`` maps a training domain to its paper category (e.g. ``prog -> code``,
    ``arith -> math``); a domain it does not name is its own category. Ties keep name order.
    """
    rank = {c: i for i, c in enumerate(OMNI_THINKER_ORDER)}
    return sorted(domains, key=lambda d: (rank.get(categories.get(d, d), len(rank)), categories.get(d, d), d))


@dataclass
class PhaseSampler:
    """Omni-Thinker: one domain at a time in a fixed order, each for its share of the steps.

    ``order`` lists training domains explicitly; without it, domains go in the paper's category
    order (``omni_thinker_order``: code -> math -> science -> writing) using ``categories``. The
    run's ``total_steps`` are split between the domains in proportion to their pool sizes.
    """

    pools: Mapping[str, Sequence[Prompt]]
    batch_size: int
    total_steps: int
    order: Sequence[str] | None = None
    seed: int = 0
    categories: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.order:
            order = list(self.order)
            order += [d for d in sorted(self.pools) if d not in order]
        else:
            order = omni_thinker_order(list(self.pools), self.categories or {})
        unknown = [d for d in order if d not in self.pools]
        if unknown:
            raise ValueError(f"curriculum order names domains with no prompts: {unknown}")
        self.order = order
        self._order: list[str] = order
        total = sum(len(self.pools[d]) for d in order)
        bounds, acc = [], 0
        for d in order:
            acc += len(self.pools[d])
            bounds.append(round(self.total_steps * acc / total))
        self._bounds = bounds

    def phase(self, step: int) -> str:
        for d, end in zip(self._order, self._bounds):
            if step < end:
                return d
        return self._order[-1]

    def batch(self, step: int) -> list[Prompt]:
        domain = self.phase(step)
        position = self._order.index(domain)
        start = self._bounds[position - 1] if position else 0
        return _cycle(self.pools[domain], (step - start) * self.batch_size, self.batch_size, self.seed)


@dataclass
class SelfPacedSampler:
    """Self-paced curriculum: all prompts sorted easy -> hard by the initial model's pass rate.

    ``pass_rates`` maps prompt id to the initial policy's pass rate (``engine.estimate_pass_rates``);
    ties keep a seeded random order. After the sorted pass the order repeats.
    """

    prompts: Sequence[Prompt]
    pass_rates: Mapping[str, float]
    batch_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        missing = [p.id for p in self.prompts if p.id not in self.pass_rates]
        if missing:
            raise ValueError(f"no pass rate for prompts {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        shuffled = _epoch_order(self.prompts, self.seed, 0)
        self._sorted = sorted(shuffled, key=lambda p: -self.pass_rates[p.id])

    def batch(self, step: int) -> list[Prompt]:
        n = len(self._sorted)
        return [self._sorted[(step * self.batch_size + i) % n] for i in range(self.batch_size)]


class Sampler(Protocol):
    def batch(self, step: int) -> list[Prompt]: ...


def refresh_step_count(refresh_steps: float, total_steps: int) -> int:
    """Length of the refresh phase: ``refresh_steps`` is a step count (>= 1) or a fraction of the run (< 1)."""
    if refresh_steps <= 0:
        raise ValueError(f"data.refresh_steps must be > 0 when data.refresh_domain is set, got {refresh_steps}")
    if refresh_steps >= 1 and refresh_steps != int(refresh_steps):
        raise ValueError(f"data.refresh_steps = {refresh_steps}: a count must be whole; a fraction must be < 1")
    count = int(refresh_steps) if refresh_steps >= 1 else round(refresh_steps * total_steps)
    if not 1 <= count <= total_steps:
        raise ValueError(f"data.refresh_steps = {refresh_steps} gives {count} refresh steps; "
                         f"it must give 1 to run.steps = {total_steps}")
    return count


@dataclass
class RefreshSampler:
    """``base`` for steps before ``start``; from ``start`` on, only prompts of the refresh ``pool``.

    The refresh batch has ``batch_size`` prompts, drawn from the pool's reshuffled epochs from the
    start (as a phase of that domain draws them).
    """

    base: Sampler
    pool: Sequence[Prompt]
    batch_size: int
    start: int
    seed: int = 0

    def in_refresh(self, step: int) -> bool:
        return step >= self.start

    def batch(self, step: int) -> list[Prompt]:
        if not self.in_refresh(step):
            return self.base.batch(step)
        return _cycle(self.pool, (step - self.start) * self.batch_size, self.batch_size, self.seed)
