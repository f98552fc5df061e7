"""verl: ``compute_score`` for ``reward.custom_reward_function`` and its batch form.

verl may load this file by path (``path=/.../verl.py``) or as ``pkg://mdreward.integrations.verl``;
it therefore imports mdreward by absolute names. ``data_source`` picks the mdreward domain
through a :class:`DataSourceTable` (glob rules, first match wins: ``data_source_map``, then the
patterns installed domains declare in ``DomainSpec.data_sources``, then ``DEFAULT_RULES``). Every call returns verl's dict
form with the same keys, so verl can stack them into ``reward_extra_info``; a record that could
not be scored has ``scored=False``, ``acc=None`` (verl's validation metrics skip None) and
``score=unscored_score`` (a placeholder to mask, see docs/integrations.md), never a silent 0.

Supported verl: 0.9 (tested with 0.9.1), through these functions (``custom_reward_function``) or
:mod:`mdreward.integrations.verl_loop` (a reward manager that batches, and an advantage estimator
that leaves unscored responses out). verl < 0.9 calls the same function signature (untested here).
"""
from __future__ import annotations

import ast
import fnmatch
import json
import logging
import os
import threading
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

from mdreward.registry import UnknownName
from mdreward.scoring import Scorer
from mdreward.types import Sample, Score

log = logging.getLogger(__name__)

#: Keys of every dict this module returns (verl requires the same keys for every sample).
RESULT_KEYS = ("score", "scored", "status", "domain", "acc", "format_ok", "pred", "error")

#: data_source glob → domain. Reasoning360-style prefixes (``math__...``, ``codegen__...``,
#: ``stem__...``) and the names verl's example datasets use. ``mdreward:<domain>`` always works.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("math*", "math"), ("openai/gsm8k", "math"), ("gsm8k*", "math"), ("lighteval/math*", "math"),
    ("digitallearninggmbh/math*", "math"), ("huggingfaceh4/math*", "math"), ("aime*", "math"),
    ("amc*", "math"), ("numina*", "math"), ("deepscaler*", "math"), ("olympiad*", "math"),
    ("codegen*", "code"), ("codecontests*", "code"), ("apps", "code"), ("*/apps", "code"),
    ("taco", "code"), ("*/taco", "code"), ("codeforces*", "code"), ("primeintellect*", "code"),
    ("livecodebench*", "code"), ("humaneval*", "code"), ("*/humaneval*", "code"), ("mbpp*", "code"),
    ("*/mbpp*", "code"), ("leetcode*", "code"),
    ("stem*", "science"), ("gpqa*", "science"), ("*/gpqa*", "science"), ("supergpqa*", "science"),
    ("*/supergpqa*", "science"), ("webinstruct*", "science"),
    ("writing*", "writing"), ("creative_writing*", "writing"), ("creative__writing*", "writing"),
)
EXPLICIT_PREFIX = "mdreward:"


class DataSourceTable:
    """Maps verl's ``data_source`` to an mdreward domain: case-insensitive glob rules, first match wins.

    (A plain class, not a dataclass: verl may load this file without registering it in sys.modules.)
    """

    def __init__(self, rules: Iterable[tuple[str, str]] = DEFAULT_RULES) -> None:
        self.rules: tuple[tuple[str, str], ...] = tuple((str(p), str(d)) for p, d in rules)

    def __repr__(self) -> str:
        return f"DataSourceTable({self.rules!r})"

    def with_rules(self, extra: Mapping[str, str] | Iterable[tuple[str, str]]) -> "DataSourceTable":
        """A table whose ``extra`` rules are tried before these."""
        pairs = tuple((str(p), str(d)) for p, d in (extra.items() if isinstance(extra, Mapping) else extra))
        return DataSourceTable(pairs + self.rules)

    def domain_for(self, data_source: str) -> str | None:
        if data_source.startswith(EXPLICIT_PREFIX):
            return data_source[len(EXPLICIT_PREFIX):] or None
        lowered = data_source.lower()
        for pattern, domain in self.rules:
            if fnmatch.fnmatchcase(lowered, pattern.lower()):
                return domain
        return None


DEFAULT_TABLE = DataSourceTable()


def registry_rules(registry: Any) -> tuple[tuple[str, str], ...]:
    """``(pattern, domain)`` rules the installed domains declare in ``DomainSpec.data_sources``."""
    return tuple((pattern, entry.name) for entry in registry for pattern in entry.value.data_sources)


class GroundTruthError(ValueError):
    """``ground_truth`` / ``extra_info`` have a shape mdreward cannot read for this domain."""


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (what verl's parquet loader hands over) as plain Python values."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) and not isinstance(value, (str, bytes)) else value


def _maybe_json(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _as_lines(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _literal(value: Any) -> str:
    text = repr(value)
    try:
        if ast.literal_eval(text) == value:
            return text
    except (ValueError, SyntaxError):
        pass
    return f"__import__('json').loads({json.dumps(value)!r})"


def code_tests(ground_truth: Any, extra_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The code domain's ``tests`` object from the shapes verl code datasets use.

    - mdreward's own form, ``{"assert": ...}`` or ``{"stdio": [...]}``, passes through;
    - ``{"inputs": [...], "outputs": [...]}`` (APPS/TACO/CodeContests, PRIME): stdin → stdout cases;
    - the same with ``"fn_name"`` (call-based, LeetCode style): one ``assert fn(*inputs[i]) == outputs[i]`` per case;
    - ``{"functional": "<asserts>"}`` (Reasoning360) or a plain string of test code: assert-style tests,
      with ``entry_point`` (or ``fn_name``) taken from ``extra_info`` when present.
    JSON strings of these objects are decoded first.
    """
    extra = dict(extra_info or {})
    value = _maybe_json(ground_truth)
    entry_point = extra.get("entry_point") or extra.get("fn_name")
    entry = {"entry_point": str(entry_point)} if entry_point else {}
    if isinstance(value, Mapping):
        value = {k: _plain(v) for k, v in value.items()}
        if "assert" in value or "stdio" in value:
            return {k: v for k, v in value.items() if v is not None}
        if isinstance(value.get("functional"), str):
            return {"assert": value["functional"], **entry}
        if "inputs" in value and "outputs" in value:
            inputs, outputs = list(value["inputs"] or []), list(value["outputs"] or [])
            if len(inputs) != len(outputs) or not inputs:
                raise GroundTruthError(f"ground_truth has {len(inputs)} inputs and {len(outputs)} outputs")
            fn_name = value.get("fn_name") or extra.get("fn_name")
            if fn_name:
                lines = [f"assert {fn_name}(*{_literal(args if isinstance(args, list) else [args])}) == {_literal(out)}"
                         for args, out in zip(inputs, outputs)]
                return {"assert": "\n".join(lines), "entry_point": str(fn_name)}
            return {"stdio": [{"input": _as_lines(i), "output": _as_lines(o)} for i, o in zip(inputs, outputs)]}
        raise GroundTruthError(f"ground_truth object has keys {sorted(value)}; expected inputs/outputs, "
                               "functional, assert or stdio")
    if isinstance(value, str) and value.strip():
        return {"assert": value, **entry}
    raise GroundTruthError(f"ground_truth of type {type(value).__name__} is not a code-test shape")


def _deep_plain(value: Any) -> Any:
    """numpy values inside dicts and lists as plain Python values (for JSON)."""
    value = _plain(value)
    if isinstance(value, Mapping):
        return {str(k): _deep_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_plain(v) for v in value]
    return value


def _json_reference(ground_truth: Any) -> str:
    """A structured ground truth (dict, list, or a JSON string of one) as one JSON document."""
    value = _deep_plain(_maybe_json(ground_truth))
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GroundTruthError(f"ground_truth is not JSON data: {exc}") from None


def _reference(ground_truth: Any) -> str:
    value = _plain(ground_truth)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise GroundTruthError(f"ground_truth must be one reference string, got {type(value).__name__} "
                               f"{str(value)[:80]!r}")
    return value


def _text_field(extra: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = extra.get(name)
        if isinstance(value, str):
            return value
    return None


def _samples(prepared: Sequence[tuple[str, Sample | Score]]) -> list[Sample]:
    """The prepared items that still need scoring (the others are already an error ``Score``)."""
    return [item for _, item in prepared if isinstance(item, Sample)]


class VerlReward:
    """Scores verl rollouts with one :class:`Scorer` (call :meth:`close` when done).

    ``unscored_score`` is the number verl puts in the reward tensor for a record that could not be
    scored; such records carry ``scored=False`` so they can be masked (docs/integrations.md).
    """

    def __init__(self, scorer: Scorer | None = None, *, table: DataSourceTable | None = None,
                 unscored_score: float = 0.0) -> None:
        self.scorer = scorer or Scorer()
        self.table = table if table is not None else DEFAULT_TABLE.with_rules(registry_rules(self.scorer.registry))
        self.unscored_score = float(unscored_score)

    # ---- verl's two calling conventions ------------------------------------------------------
    def compute_score(self, data_source: str, solution_str: str, ground_truth: Any,
                      extra_info: Mapping[str, Any] | None = None, **_: Any) -> dict[str, Any]:
        prepared = [self.sample(data_source, solution_str, ground_truth, extra_info)]
        todo = _samples(prepared)
        return self._finish(prepared, self.scorer.score_batch(todo) if todo else [])[0]

    def compute_score_batch(self, data_sources: Sequence[str], solution_strs: Sequence[str],
                            ground_truths: Sequence[Any], extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
                            **_: Any) -> list[dict[str, Any]]:
        prepared = self._prepare(data_sources, solution_strs, ground_truths, extra_infos)
        todo = _samples(prepared)
        return self._finish(prepared, self.scorer.score_batch(todo) if todo else [])

    async def acompute_score(self, data_source: str, solution_str: str, ground_truth: Any,
                             extra_info: Mapping[str, Any] | None = None, **_: Any) -> dict[str, Any]:
        return (await self.acompute_score_batch([data_source], [solution_str], [ground_truth], [extra_info]))[0]

    async def acompute_score_batch(self, data_sources: Sequence[str], solution_strs: Sequence[str],
                                   ground_truths: Sequence[Any],
                                   extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
                                   **_: Any) -> list[dict[str, Any]]:
        prepared = self._prepare(data_sources, solution_strs, ground_truths, extra_infos)
        todo = _samples(prepared)
        return self._finish(prepared, await self.scorer.ascore_batch(todo) if todo else [])

    def close(self) -> None:
        self.scorer.close()

    # ---- pieces ----------------------------------------------------------------------------------
    def sample(self, data_source: str, solution_str: str, ground_truth: Any,
               extra_info: Mapping[str, Any] | None = None, index: int | None = None) -> tuple[str, Sample | Score]:
        """The domain and the Sample for one verl record, or an unscored Score saying why there is none.

        Errors name the record by ``extra_info["index"]`` (verl's dataset index), else by ``index``
        (its position in the batch)."""
        plain_extra = _plain(extra_info)
        extra = dict(plain_extra) if isinstance(plain_extra, Mapping) else {}
        record_id = extra.get("index")
        if record_id is not None:
            where = f"record {str(record_id)!r} (data_source {data_source!r})"
        elif index is not None:
            where = f"batch item {index} (data_source {data_source!r})"
        else:
            where = f"data_source {data_source!r}"
        domain = self.table.domain_for(str(data_source))
        if domain is None:
            return "", Score.unscored(f"{where}: no rule of the data-source table matches; add one, e.g. "
                                      f"data_source_map={{'{data_source}*': '<domain>'}}")
        if not isinstance(solution_str, str):
            return domain, Score.unscored(f"{where}: solution_str must be a string, got {type(solution_str).__name__}")
        try:
            spec = self.scorer.registry.get(domain)
            domain = self.scorer.registry.resolve(domain)
        except UnknownName as exc:
            return domain, Score.unscored(f"{where}: {exc}")
        try:
            needs_tests = "tests" in spec.required_fields
            tests = code_tests(ground_truth, extra) if needs_tests else None
            if needs_tests:
                reference = None
            elif spec.reference_format == "json":
                reference = _json_reference(ground_truth)
            else:
                reference = _reference(ground_truth)
        except GroundTruthError as exc:
            return domain, Score.unscored(f"{where}: {exc}")
        return domain, Sample(
            domain=domain, response=solution_str, reference=reference, tests=tests,
            prompt=_text_field(extra, "prompt", "question", "problem"),
            id=str(record_id) if record_id is not None else None,
            metadata={"data_source": str(data_source)})

    def result(self, domain: str, score: Score) -> dict[str, Any]:
        """verl's dict form: the same keys (:data:`RESULT_KEYS`) and value types for every record."""
        components = score.components
        return {
            "score": score.reward if score.reward is not None else self.unscored_score,
            "scored": score.scored,
            "status": score.status.value,
            "domain": domain,
            "acc": (1.0 if components.get("correct") is True else 0.0) if score.scored else None,
            "format_ok": 1.0 if components.get("format_ok", score.scored and score.status.value == "ok") else 0.0,
            "pred": str(score.answer or components.get("extracted_answer") or ""),
            "error": score.error or "",
        }

    def _prepare(self, data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                 extra_infos: Sequence[Mapping[str, Any] | None] | None) -> list[tuple[str, Sample | Score]]:
        data_sources, solution_strs, ground_truths = (list(_plain(x)) for x in (data_sources, solution_strs, ground_truths))
        extras = list(_plain(extra_infos)) if extra_infos is not None else [None] * len(data_sources)
        lengths = {len(data_sources), len(solution_strs), len(ground_truths), len(extras)}
        if len(lengths) != 1:
            raise ValueError(f"batch lists differ in length: data_sources {len(data_sources)}, solution_strs "
                             f"{len(solution_strs)}, ground_truths {len(ground_truths)}, extra_infos {len(extras)}")
        return [self.sample(ds, sol, gt, ex, index=i)
                for i, (ds, sol, gt, ex) in enumerate(zip(data_sources, solution_strs, ground_truths, extras))]

    def _finish(self, prepared: list[tuple[str, Sample | Score]], scores: Iterable[Score]) -> list[dict[str, Any]]:
        scores = iter(scores)
        results = [self.result(domain, next(scores) if isinstance(item, Sample) else item) for domain, item in prepared]
        unscored = [r for r in results if not r["scored"]]
        if unscored:
            log.warning("mdreward: %d of %d records could not be scored (scored=False; mask them); first: %s",
                        len(unscored), len(results), unscored[0]["error"])
        return results


# ---- module-level functions for verl's config (one shared VerlReward per settings) -----------
SETTINGS = ("config", "think_in_prompt", "require_think", "max_response_chars", "data_source_map", "unscored_score",
            "judge_url", "judge_model", "reward_workers")
#: verl's default ``reward.num_workers``: reward-loop workers (one Scorer each) sharing a node's CPUs.
VERL_DEFAULT_REWARD_WORKERS = 8
#: Domains whose checks run in local worker processes sized by ``workers``.
CPU_POOL_DOMAINS = ("math", "code")
_shared: dict[str, VerlReward] = {}
_shared_lock = threading.Lock()
_warned_keys: set[str] = set()


def _settings_key(kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    settings = {k: _plain(dict(v) if isinstance(v, Mapping) else v) for k, v in kwargs.items() if k in SETTINGS}
    ignored = sorted(set(kwargs) - set(SETTINGS) - _warned_keys)
    if ignored:
        _warned_keys.update(ignored)
        log.warning("mdreward.integrations.verl: ignoring keyword arguments %s (known: %s)", ignored, list(SETTINGS))
    return json.dumps(settings, sort_keys=True, default=str), settings


def shared_reward(**reward_kwargs: Any) -> VerlReward:
    """The process-wide VerlReward for these settings (verl's ``custom_reward_function.reward_kwargs``).

    ``config``: an mdreward TOML file (``[format]``, ``[timeouts]``, ``[judge]``, ``[domains.<name>]``:
    the same loader as ``mdreward score --config``); ``judge_url``, ``judge_model``: the default
    judge, as the CLI's flags; ``think_in_prompt``, ``require_think``, ``max_response_chars``: format
    rules on top; ``data_source_map``: extra ``{glob: domain}`` rules tried before the defaults;
    ``unscored_score``: the placeholder reward; ``reward_workers``: how many Scorers share this
    node's CPUs (verl's ``reward.num_workers``, default 8): each gets ``cpu_count // reward_workers``
    math and sandbox workers unless the config sets ``workers`` for that domain.
    """
    key, settings = _settings_key(reward_kwargs)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = _build(settings)
        return _shared[key]


def _build(settings: Mapping[str, Any]) -> VerlReward:
    from mdreward.config import load_config
    reward_workers = max(1, int(settings.get("reward_workers") or VERL_DEFAULT_REWARD_WORKERS))
    config = load_config(settings.get("config") or None, think_in_prompt=settings.get("think_in_prompt"),
                         judge_url=settings.get("judge_url"), judge_model=settings.get("judge_model"))
    config = replace(config, domain_options=bounded_workers(config.domain_options, reward_workers))
    rules = {k: settings[k] for k in ("require_think", "max_response_chars") if k in settings}
    if rules:
        config = replace(config, format_rules=replace(config.format_rules, **rules))
    scorer = Scorer(config)
    table = DEFAULT_TABLE.with_rules(registry_rules(scorer.registry)).with_rules(settings.get("data_source_map") or {})
    return VerlReward(scorer, table=table, unscored_score=float(settings.get("unscored_score", 0.0)))


def bounded_workers(domain_options: Mapping[str, Mapping[str, Any]], reward_workers: int,
                    cpus: int | None = None) -> dict[str, dict[str, Any]]:
    """Domain options where each CPU-pool domain gets ``cpus // reward_workers`` workers (at least 1),
    so that verl's ``reward_workers`` Scorers on one node do not start ``reward_workers x cpus``
    processes. A ``workers`` option already set is kept."""
    share = max(1, (cpus or os.cpu_count() or 1) // max(1, reward_workers))
    options = {name: dict(values) for name, values in domain_options.items()}
    for name in CPU_POOL_DOMAINS:
        options.setdefault(name, {}).setdefault("workers", share)
    return options


def close_shared() -> None:
    """Close every shared VerlReward now (at exit, their worker pools close themselves)."""
    with _shared_lock:
        rewards = list(_shared.values())
        _shared.clear()
    for reward in rewards:
        reward.close()


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None,
                  **reward_kwargs: Any) -> dict[str, Any]:
    """verl's per-sample ``compute_score`` (NaiveRewardManager, DAPO, PRIME managers)."""
    return shared_reward(**reward_kwargs).compute_score(data_source, solution_str, ground_truth, extra_info)


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
                        **reward_kwargs: Any) -> list[dict[str, Any]]:
    """verl's batch form (``reward_manager=batch``): one scorer call for the whole batch."""
    return shared_reward(**reward_kwargs).compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)


async def acompute_score(data_source: str, solution_str: str, ground_truth: Any,
                         extra_info: Mapping[str, Any] | None = None, **reward_kwargs: Any) -> dict[str, Any]:
    """The async form, for verl's reward loop, which awaits coroutine reward functions."""
    return await shared_reward(**reward_kwargs).acompute_score(data_source, solution_str, ground_truth, extra_info)


async def acompute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                               extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
                               **reward_kwargs: Any) -> list[dict[str, Any]]:
    """The awaitable batch form (mdreward's verl reward manager calls it for concurrent requests)."""
    return await shared_reward(**reward_kwargs).acompute_score_batch(data_sources, solution_strs, ground_truths,
                                                                     extra_infos)


def scored_mask(reward_extra_info: Mapping[str, Sequence[Any]]) -> list[bool]:
    """Which rows were scored, from verl's ``reward_extra_info`` / ``batch.non_tensor_batch``."""
    if "scored" not in reward_extra_info:
        raise KeyError("no 'scored' entry: the rewards did not come from mdreward.integrations.verl")
    return [bool(v) for v in _plain(reward_extra_info["scored"])]
