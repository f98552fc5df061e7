"""Shared fixtures: one scorer per test session (worker processes are expensive to start)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "cases"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_cases(name: str) -> list[dict]:
    return [json.loads(line) for line in (CASES / name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def scorer():
    from mdreward import Scorer

    with Scorer() as s:
        yield s
