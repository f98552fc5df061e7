"""Scoring configuration from a TOML file and command-line flags."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Mapping

from .scoring import ScoringConfig
from .timeouts import Timeouts
from .types import FormatRules


class ConfigError(ValueError):
    """The configuration file or flags are invalid; the message names the key."""


def _dataclass_from(cls: type, values: Mapping[str, Any], section: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"[{section}]: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)


def load_config(path: str | Path | None = None, *, think_in_prompt: bool | None = None,
                domain_options: Mapping[str, Mapping[str, Any]] | None = None) -> ScoringConfig:
    """Build a ScoringConfig: the file's ``[format]``, ``[timeouts]`` and ``[domains.<name>]``
    tables, then flags on top (flags win)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    unknown = set(data) - {"format", "timeouts", "domains", "judge"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}; known: format, timeouts, domains, judge")
    format_values = dict(data.get("format", {}))
    if think_in_prompt is not None:
        format_values["think_in_prompt"] = think_in_prompt
    options: dict[str, dict[str, Any]] = {name: dict(v) for name, v in data.get("domains", {}).items()}
    for name, extra in (domain_options or {}).items():
        options.setdefault(name, {}).update(extra)
    return ScoringConfig(
        format_rules=_dataclass_from(FormatRules, format_values, "format"),
        timeouts=_dataclass_from(Timeouts, dict(data.get("timeouts", {})), "timeouts"),
        domain_options=options,
    )


def judge_section(path: str | Path | None) -> dict[str, Any]:
    """The ``[judge]`` table of a config file (default judge endpoint for model-judged domains)."""
    if path is None:
        return {}
    return dict(tomllib.loads(Path(path).read_text()).get("judge", {}))
