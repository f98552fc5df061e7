"""The one configuration loader: a TOML (or JSON) file plus flags become a ``ScoringConfig``.

The CLI (``score``, ``serve``) and the framework adapters all call ``load_config``, so a config file
means the same everywhere. Layout (docs: README "Configuration file")::

    [format]            FormatRules fields
    [timeouts]          Timeouts fields
    [judge]             the default judge spec of every domain whose DomainSpec.needs has "judge"
    [domains.<name>]    that domain's factory options; its ``judge`` table overrides [judge] key by key
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from .scoring import ScoringConfig, merged_judge
from .timeouts import Timeouts
from .types import FormatRules

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli (a dependency there)
    import tomli as tomllib

SECTIONS = ("format", "timeouts", "judge", "domains")


class ConfigError(ValueError):
    """The configuration file or flags are invalid; the message names the file, the section and the key."""


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed file: JSON for ``.json``, TOML otherwise. Every failure is a one-line ``ConfigError``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config {file}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config {file}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {file}: the top level must be an object")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {file}: invalid TOML: {exc}") from None


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}[{key}] must be a table, got {type(value).__name__}")
    return dict(value)


def _dataclass_from(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """``cls(**values)`` with unknown keys and values of the wrong type named."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    for name, value in values.items():
        default = fields[name].default
        if isinstance(default, bool):
            expected, ok = "true or false", isinstance(value, bool)
        elif isinstance(default, (int, float)):
            kinds = (int,) if isinstance(default, int) else (int, float)
            expected = f"a non-negative {type(default).__name__}"
            ok = isinstance(value, kinds) and not isinstance(value, bool) and value >= 0
        else:
            continue
        if not ok:
            raise ConfigError(f"{where}.{name}: expected {expected}, got {value!r}")
    return cls(**values)


def _merge_domain_options(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """``extra`` over ``into``; two ``judge`` tables merge key by key (a flag never drops a file's key)."""
    for key, value in extra.items():
        if key == "judge" and isinstance(into.get("judge"), Mapping) and isinstance(value, Mapping):
            into["judge"] = {**into["judge"], **value}
        else:
            into[key] = value


def load_config(path: str | os.PathLike[str] | None = None, *, think_in_prompt: bool | None = None,
                judge_url: str | None = None, judge_model: str | None = None,
                domain_options: Mapping[str, Mapping[str, Any]] | None = None) -> ScoringConfig:
    """Build a ScoringConfig from the file at ``path`` (TOML, or JSON for ``.json``), then the flags.

    Flags win over the file: ``think_in_prompt`` sets ``[format]``; ``judge_url``/``judge_model``
    (``--judge-url``/``--judge-model``) set keys of the default judge (``[judge]``), whose other keys
    stay; ``domain_options`` merge over ``[domains.<name>]`` (a ``judge`` table key by key). Each
    judge-needing domain's judge is the default judge with its own ``judge`` table on top (applied by
    the Scorer, so plugin domains get it too). Raises ``ConfigError`` with a one-line message.
    """
    data = read_config_file(path) if path is not None else {}
    where = f"config {path}: " if path is not None else "config: "
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{where}unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    format_values = _table(data, "format", where)
    if think_in_prompt is not None:
        format_values["think_in_prompt"] = think_in_prompt
    judge = _table(data, "judge", where)
    if judge_url:
        judge["url"] = judge_url
    if judge_model:
        judge["model"] = judge_model
    options: dict[str, dict[str, Any]] = {}
    for name, table in _table(data, "domains", where).items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}[domains.{name}] must be a table, got {type(table).__name__}")
        options[name] = dict(table)
    for name, extra in (domain_options or {}).items():
        _merge_domain_options(options.setdefault(name, {}), extra)
    _check_judges(judge, options, where, flag_url=bool(judge_url))
    return ScoringConfig(
        format_rules=_dataclass_from(FormatRules, format_values, f"{where}[format]"),
        timeouts=_dataclass_from(Timeouts, _table(data, "timeouts", where), f"{where}[timeouts]"),
        domain_options=options,
        judge=judge,
    )


def _check_judges(judge: Mapping[str, Any], options: Mapping[str, Mapping[str, Any]], where: str,
                  flag_url: bool) -> None:
    """Judge specs fail here, in one line, rather than as every record of a judged domain."""
    if flag_url and not judge.get("model"):
        raise ConfigError("--judge-url needs --judge-model (or a model in the config's [judge] table)")
    own = {name: o["judge"] for name, o in options.items() if isinstance(o.get("judge"), Mapping)}
    if not judge and not own:
        return
    from .judges.config import check_judge_spec  # judges import no third-party package here

    if judge:
        check_judge_spec(judge, where=f"{where}[judge]", complete=False)
    for name, table in own.items():
        check_judge_spec(merged_judge(judge, table), where=f"{where}[domains.{name}].judge")
