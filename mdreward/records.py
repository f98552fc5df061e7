"""The JSONL contract: records in, samples out, scores back into records."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping

from .types import Sample, Score

#: Fields a scored record gains; input fields of the same names are overwritten.
OUTPUT_FIELDS = ("reward", "status", "components", "error")


class RecordError(ValueError):
    """A record breaks the JSONL contract; the message names the record and the field."""


def _where(record_id: Any, line: int | None) -> str:
    parts = []
    if record_id is not None:
        parts.append(f"record {str(record_id)!r}")
    if line is not None:
        parts.append(f"line {line}")
    return ", ".join(parts) or "record"


def sample_from_record(record: Any, line: int | None = None) -> Sample:
    """Validate one input record of the JSONL contract and build its Sample."""
    if not isinstance(record, Mapping):
        raise RecordError(f"{_where(None, line)}: expected a JSON object, got {type(record).__name__}")
    record_id = record.get("id")
    if record_id is None and line is not None:
        record_id = str(line)
    where = _where(record_id, line)

    def text(name: str, required: bool) -> str | None:
        value = record.get(name)
        if value is None:
            if required:
                raise RecordError(f"{where}: field {name!r} is required")
            return None
        if not isinstance(value, str):
            raise RecordError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
        return value

    def mapping(name: str) -> Mapping[str, Any] | None:
        value = record.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise RecordError(f"{where}: field {name!r} must be an object, got {type(value).__name__}")
        return value

    if record_id is not None and not isinstance(record_id, (str, int)):
        raise RecordError(f"{where}: field 'id' must be a string, got {type(record_id).__name__}")
    return Sample(
        domain=text("domain", True) or "",
        response=text("response", True) or "",
        reference=text("reference", False),
        prompt=text("prompt", False),
        id=str(record_id) if record_id is not None else None,
        tests=mapping("tests"),
        metadata=mapping("metadata") or {},
        line=line,
    )


def scored_record(record: Any, score: Score) -> dict[str, Any]:
    """The output record: every input field kept, plus the score's fields."""
    base = dict(record) if isinstance(record, Mapping) else {"record": record}
    for name in OUTPUT_FIELDS:
        base.pop(name, None)
    base.update(score.to_json())
    return base


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_line(line_text: str, line: int) -> tuple[Any, Score | None]:
    """Decode one JSONL line; an undecodable line becomes an unscored result naming the line.

    Strict JSON: ``NaN`` and ``Infinity`` are refused (no strict reader could read them back)."""
    try:
        return json.loads(line_text, parse_constant=_not_json), None
    except json.JSONDecodeError as exc:
        return {"line": line}, Score.unscored(f"line {line}: not valid JSON ({exc.msg} at column {exc.colno})")
    except ValueError as exc:
        return {"line": line}, Score.unscored(f"line {line}: not valid JSON ({exc})")
    except RecursionError:
        return {"line": line}, Score.unscored(f"line {line}: not valid JSON (nested too deeply)")


_SURROGATE = re.compile("[\ud800-\udfff]")
#: What ``json_line`` rewrites in its text: lone surrogates (no UTF-8 form) and the line breaks that
#: ``str.splitlines`` and JavaScript split on, which ``json.dumps(ensure_ascii=False)`` leaves raw.
_UNSAFE_IN_JSON = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def _safe_char(match: re.Match[str]) -> str:
    char = match.group()
    return "\ufffd" if _SURROGATE.match(char) else f"\\u{ord(char):04x}"


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (not JSON) replaced by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_line(record: Any) -> str:
    """One line of strict JSON in valid UTF-8, newline included.

    Non-ASCII text stays readable, except that U+0085, U+2028 and U+2029 are written as ``\\uXXXX``
    escapes (so no reader splits the line), each lone surrogate becomes U+FFFD (it has no UTF-8
    form), NaN and infinities become ``null``, and a value JSON cannot hold is written as its ``str``.
    """
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:  # a non-finite float
        text = json.dumps(_finite(record), ensure_ascii=False, allow_nan=False, default=str)
    return _UNSAFE_IN_JSON.sub(_safe_char, text) + "\n"


def without_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (mapping keys included) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, Mapping):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_surrogates(v) for v in value]
    return value


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, Mapping):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_surrogate(v) for v in value)
    return False


def valid_unicode(sample: Sample) -> Sample:
    """The sample with lone surrogates (valid JSON escapes, but no character) replaced by U+FFFD, so no
    domain, sandbox or judge request ever fails to encode one record's text."""
    changes = {f.name: without_surrogates(getattr(sample, f.name)) for f in dataclasses.fields(sample)
               if _has_surrogate(getattr(sample, f.name))}
    return dataclasses.replace(sample, **changes) if changes else sample
