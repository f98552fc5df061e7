"""The JSONL contract: records in, samples out, scores back into records."""
from __future__ import annotations

import json
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


def parse_line(line_text: str, line: int) -> tuple[Any, Score | None]:
    """Decode one JSONL line; an undecodable line becomes an unscored result naming the line."""
    try:
        return json.loads(line_text), None
    except json.JSONDecodeError as exc:
        return {"line": line}, Score.unscored(f"line {line}: not valid JSON ({exc.msg} at column {exc.colno})")
