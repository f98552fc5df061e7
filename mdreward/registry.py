"""One typed registry of domains, filled from the ``mdreward.domains`` entry-point group.

Built-in domains register through the same group as third-party packages. A plugin that
fails to load is a warning; ``MDREWARD_DISABLE_PLUGIN_AUTOLOAD=1`` loads only mdreward's own.
"""
from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, Literal, Protocol, Sequence, TypeVar, runtime_checkable

from .types import FormatRules, RewardTable, Sample, Score

ENTRY_POINT_GROUP = "mdreward.domains"
DISABLE_AUTOLOAD_ENV = "MDREWARD_DISABLE_PLUGIN_AUTOLOAD"
_OWN_DISTRIBUTION = "mdreward"


@runtime_checkable
class Domain(Protocol):
    """A configured domain: scores a batch of its samples, one Score per sample, in order.

    ``score_batch`` must not raise for a bad sample or a failed service: such samples get
    ``Score.unscored``. ``aclose`` releases workers, sandboxes and clients.
    """

    name: str
    table: RewardTable

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]: ...

    async def aclose(self) -> None: ...


class RuleDomain:
    """Base for a domain that scores each sample by a pure, fast rule in the calling thread (no service,
    no worker): subclass it, set ``name`` and implement ``score_one``."""

    name: str

    def __init__(self, *, format_rules: FormatRules, timeouts: Any, table: RewardTable) -> None:
        self.format_rules = format_rules
        self.timeouts = timeouts
        self.table = table

    def score_one(self, sample: Sample) -> Score:
        raise NotImplementedError

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        return [self.score_one(sample) for sample in samples]

    async def aclose(self) -> None:
        return None


class DomainUnavailable(RuntimeError):
    """The domain cannot run with this configuration (e.g. no judge configured); its records
    come out unscored with this message."""


@dataclass(frozen=True)
class DomainSpec:
    """What a package registers under ``mdreward.domains``.

    ``factory`` takes keyword arguments only: ``format_rules``, ``timeouts`` and ``table`` always,
    plus the domain's own options (a judge, a sandbox, ...). It raises ``DomainUnavailable`` when a
    needed service is not configured. ``example`` is a sample that must earn ``table[top_outcome]``
    once its ``needs`` are supplied (the registry-wide conformance test uses it).

    ``data_sources``: glob patterns of verl ``data_source`` names this domain scores (e.g.
    ``"logic__zebra_puzzle*"``); ``mdreward.integrations.verl`` routes them here. ``reference_format``:
    ``"text"`` (a reference is one string) or ``"json"`` (a structured ground truth, such as a dict or
    a list, arrives JSON-encoded in ``Sample.reference``).
    """

    name: str
    factory: Callable[..., Domain]
    description: str
    table: RewardTable
    required_fields: tuple[str, ...] = ("response",)
    example: Sample | None = None
    top_outcome: str = "correct"
    needs: tuple[str, ...] = ()
    data_sources: tuple[str, ...] = ()
    reference_format: Literal["text", "json"] = "text"


T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    provider: str
    version: str


class UnknownName(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry(Generic[T]):
    """Names → registered values, with namespaced names (``acme.logic``) and did-you-mean errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, value: T, provider: str = _OWN_DISTRIBUTION, version: str = "") -> None:
        existing = self._entries.get(name)
        if existing is not None and existing.provider != provider:
            raise ValueError(f"{self.kind} {name!r} is registered by {existing.provider} and again by {provider}")
        self._entries[name] = Entry(name, value, provider, version)

    def resolve(self, name: str) -> str:
        """The registered full name for ``name`` (a full name, or a namespace-less short name)."""
        if name in self._entries:
            return name
        by_short = [full for full in self._entries if full.rsplit(".", 1)[-1] == name]
        if len(by_short) == 1:
            return by_short[0]
        if len(by_short) > 1:
            raise UnknownName(f"{self.kind} {name!r} is ambiguous: use one of {sorted(by_short)}")
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        raise UnknownName(f"unknown {self.kind} {name!r}{hint} (installed: {known})")

    def get(self, name: str) -> T:
        return self._entries[self.resolve(name)].value

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.resolve(name)]

    def __contains__(self, name: object) -> bool:
        try:
            self.resolve(str(name))
        except UnknownName:
            return False
        return True

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


def load_domains(autoload_plugins: bool | None = None) -> Registry[DomainSpec]:
    """A registry filled from the entry-point group (mdreward's own domains always)."""
    if autoload_plugins is None:
        autoload_plugins = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in {"1", "true", "yes"}
    registry: Registry[DomainSpec] = Registry("domain")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if dist != _OWN_DISTRIBUTION and not autoload_plugins:
            continue
        try:
            spec = _as_spec(ep.load())
            registry.register(spec.name, spec, dist, ep.dist.version if ep.dist is not None else "")
        except Exception as exc:  # a broken plugin must not take the others down
            warnings.warn(f"mdreward: domain plugin {ep.name!r} from {dist} failed to load: {exc!r}",
                          RuntimeWarning, stacklevel=2)
    if not any(e.provider == _OWN_DISTRIBUTION for e in registry):
        raise RuntimeError("mdreward's own domains are not registered: install the package "
                           "(pip install -e .) so its entry points exist")
    return registry


def _as_spec(loaded: Any) -> DomainSpec:
    spec = loaded() if callable(loaded) and not isinstance(loaded, DomainSpec) else loaded
    if not isinstance(spec, DomainSpec):
        raise TypeError(f"entry point must give a DomainSpec, got {type(spec).__name__}")
    return spec


def build_domain(spec: DomainSpec, *, format_rules: FormatRules, timeouts: Any,
                 options: dict[str, Any] | None = None) -> Domain:
    """Instantiate ``spec`` with the shared rules and its own options (``table`` overrides merge)."""
    options = dict(options or {})
    table_overrides = options.pop("rewards", None) or {}
    table = spec.table.replace(**table_overrides)
    return spec.factory(format_rules=format_rules, timeouts=timeouts, table=table, **options)
