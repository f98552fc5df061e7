"""Which prompts each step trains on: mixed batches, Omni-Thinker's domain phases, self-paced order.

A sampler is a pure function of the step (``batch(step)``), so resuming needs only the step number.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

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


@dataclass
class PhaseSampler:
    """Omni-Thinker: one domain at a time in a fixed order, each for its share of the steps.

    ``order`` lists training domains (default: code -> math -> science -> writing, those present);
    the run's ``total_steps`` are split between the domains in proportion to their pool sizes.
    """

    pools: Mapping[str, Sequence[Prompt]]
    batch_size: int
    total_steps: int
    order: Sequence[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        order = list(self.order) if self.order else [d for d in OMNI_THINKER_ORDER if d in self.pools]
        order += [d for d in sorted(self.pools) if d not in order]
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
