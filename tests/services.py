"""Real local services for the registry-wide conformance test: ``options_for(spec)`` returns the
domain options that satisfy ``spec.needs`` (a judge is a real OpenAI-compatible server on loopback
speaking the documented protocol with scripted verdicts)."""
from __future__ import annotations

from judge_support import judge_options_for


def options_for(spec) -> dict:
    unknown = set(spec.needs) - {"judge"}
    if unknown:
        raise LookupError(f"no local provider for {sorted(unknown)} (needed by domain {spec.name!r})")
    return judge_options_for(spec.name)
