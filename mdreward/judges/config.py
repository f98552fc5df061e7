"""Judge configuration: a judge spec (a plain mapping) becomes a client, and CLI flags plus an
optional config file become ``ScoringConfig.domain_options`` entries for the judged domains.

A judge spec::

    {"backend": "openai", "url": "http://localhost:8000/v1", "model": "TIGER-Lab/general-verifier",
     "api_key_env": "OPENAI_API_KEY", "max_concurrency": 64, "batch_size": 8, "max_retries": 4,
     "requests_per_minute": 600, "tokens_per_minute": 2000000, "cache_size": 50000}
    {"backend": "transformers", "model": "/models/verifier", "gguf_file": null, "device": "cpu", "dtype": null}
    {"backend": "vllm", "model": "/models/verifier", "engine": {"gpu_memory_utilization": 0.3}}

The config file (TOML or JSON) has a default ``[judge]`` and one table per judged domain with
that domain's options; a domain's ``judge`` table overrides the default key by key::

    [judge]
    url = "http://localhost:8000/v1"
    model = "Qwen/Qwen2.5-72B-Instruct"

    [science]
    judge = { model = "TIGER-Lab/general-verifier", url = "http://localhost:8001/v1" }

    [writingbench]
    judge = { model = "AQuarterMile/WritingBench-Critic-Model-Qwen-7B" }
    max_attempts = 3
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..config import ConfigError, read_config_file
from ..registry import DomainSpec, Registry, load_domains
from ..scoring import merged_judge
from ..timeouts import DEFAULT_TIMEOUTS, Timeouts
from .base import JudgeClient

_OPENAI_KEYS = {"backend", "url", "model", "api_key", "api_key_env", "max_concurrency", "batch_size", "max_retries",
                "requests_per_minute", "tokens_per_minute", "cache_size", "extra_body", "seed", "transport",
                "tokenizer"}
_TRANSFORMERS_KEYS = {"backend", "model", "gguf_file", "device", "dtype", "max_batch", "max_prompt_tokens",
                      "num_threads"}
_VLLM_KEYS = {"backend", "model", "engine"}


class JudgeConfigError(ConfigError):
    """A judge spec or config file is wrong; the message names the place and the key."""


def judged_domains(registry: Registry[DomainSpec] | None = None) -> tuple[str, ...]:
    """The domains whose ``DomainSpec.needs`` has ``"judge"`` (plugins included), by registered name."""
    return tuple(e.name for e in (registry or load_domains()) if "judge" in e.value.needs)


def check_judge_spec(spec: Mapping[str, Any], *, where: str = "judge", complete: bool = True) -> str:
    """The spec's backend, after checking its keys; ``complete``: also the model (and an OpenAI URL)."""
    backend = spec.get("backend", "openai")
    allowed = {"openai": _OPENAI_KEYS, "transformers": _TRANSFORMERS_KEYS, "vllm": _VLLM_KEYS}.get(backend)
    if allowed is None:
        raise JudgeConfigError(f"{where}.backend: unknown backend {backend!r} (openai, transformers, vllm)")
    unknown = set(spec) - allowed
    if unknown:
        raise JudgeConfigError(f"{where}: unknown key(s) {sorted(unknown)} for backend {backend!r}; "
                               f"known: {sorted(allowed)}")
    if not complete:
        return str(backend)
    if not spec.get("model"):
        raise JudgeConfigError(f"{where}.model: a judge needs a model name")
    if backend == "openai" and not spec.get("url"):
        raise JudgeConfigError(f"{where}.url: an OpenAI-compatible judge needs a base URL (e.g. http://host:8000/v1)")
    return str(backend)


def build_judge(spec: JudgeClient | Mapping[str, Any], *, timeouts: Timeouts = DEFAULT_TIMEOUTS,
                where: str = "judge") -> JudgeClient:
    """A client from a spec mapping (a ready client is returned as is)."""
    if not isinstance(spec, Mapping):
        if isinstance(spec, JudgeClient):
            return spec
        raise JudgeConfigError(f"{where}: expected a judge spec (a mapping) or a JudgeClient, got {type(spec).__name__}")
    backend = check_judge_spec(spec, where=where)
    if backend == "openai":
        from .openai_client import OpenAIJudge

        api_key = spec.get("api_key") or (os.environ.get(spec["api_key_env"]) if spec.get("api_key_env") else None)
        options = {k: spec[k] for k in ("max_concurrency", "batch_size", "max_retries", "requests_per_minute",
                                        "tokens_per_minute", "cache_size", "extra_body", "seed", "transport",
                                        "tokenizer") if k in spec}
        try:
            return OpenAIJudge(base_url=str(spec["url"]), model=str(spec["model"]), api_key=api_key,
                               timeouts=timeouts, **options)
        except (ValueError, ImportError) as exc:  # a bad option value, or a transport's package missing
            raise JudgeConfigError(f"{where}: {exc}") from None
    if backend == "transformers":
        from .transformers_backend import TransformersJudge

        options = {k: spec[k] for k in ("gguf_file", "device", "dtype", "max_batch", "max_prompt_tokens", "num_threads")
                   if k in spec}
        return TransformersJudge.from_pretrained(str(spec["model"]), timeouts=timeouts, **options)
    from .vllm_backend import VLLMJudge

    return VLLMJudge.from_model(str(spec["model"]), timeouts=timeouts, **dict(spec.get("engine") or {}))


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON config file (``mdreward.config.read_config_file``)."""
    try:
        return read_config_file(path)
    except ConfigError as exc:
        raise JudgeConfigError(str(exc)) from None


def judge_options_from_cli(url: str | None, model: str | None,
                           config: str | os.PathLike[str] | Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``ScoringConfig.domain_options`` entries for the judged domains.

    ``config`` is a path (TOML/JSON), a parsed mapping, or None. It is either the judge layout shown
    in this module's docstring, or a whole mdreward config whose ``[judge]`` table and
    ``[domains.science|writing|writingbench]`` tables are read (other sections are ignored; merge the
    result over the non-judged domains' options yourself).

    ``url``/``model`` (``--judge-url``/``--judge-model``) set the default judge, overriding the
    config's ``[judge]``; each domain's own ``judge`` table overrides the default key by key. A
    domain with no judge anywhere gets no ``judge`` option (its factory then raises
    ``DomainUnavailable``, unless it runs rule-only). Judge specs stay plain mappings: each
    domain builds (and closes) its own client.
    """
    judged = judged_domains()
    data: dict[str, Any] = dict(load_config_file(config) if isinstance(config, (str, os.PathLike)) else (config or {}))
    if "domains" in data:  # a whole mdreward config: [judge] plus [domains.<name>] tables; the rest is not ours
        domains = data["domains"] if isinstance(data["domains"], Mapping) else {}
        data = {"judge": data.get("judge") or {}, **{d: domains[d] for d in judged if d in domains}}
    unknown = set(data) - {"judge", *judged}
    if unknown:
        raise JudgeConfigError(f"judge config: unknown section(s) {sorted(unknown)}; "
                               f"known: ['judge', {', '.join(repr(d) for d in judged)}]")
    default = dict(_table(data, "judge"))
    if url:
        default["url"] = url
    if model:
        default["model"] = model
    if url and not default.get("model"):
        raise JudgeConfigError("--judge-url needs --judge-model (or a model in the config's [judge] table)")
    options: dict[str, dict[str, Any]] = {}
    for domain in judged:
        own = dict(_table(data, domain))
        judge = merged_judge(default, _table(own, "judge", f"{domain}.judge"))
        own.pop("judge", None)
        if judge:
            if not judge.get("model"):
                raise JudgeConfigError(f"{domain}.judge.model: the judge for {domain!r} has no model")
            own["judge"] = judge
        if own:
            options[domain] = own
    return options


def _table(data: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise JudgeConfigError(f"judge config: [{where or key}] must be a table/object, got {type(value).__name__}")
    return value
