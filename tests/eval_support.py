"""Offline data for the evaluation tests and benchmark: the shared data folder's benchmarks (linked, not copied)
plus the SuperGPQA fixture (the shared folder has no SuperGPQA file)."""
from __future__ import annotations

from pathlib import Path

from test_eval_datasets import SHARED_DATA, write_supergpqa_fixture

LINKED = ("math500", "amc23", "humaneval", "mbpp", "gpqa", "writingbench")


def offline_data_dir(folder: Path) -> Path:
    """``folder`` laid out for ``--data-dir``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        (folder / name).symlink_to(SHARED_DATA / name)
    write_supergpqa_fixture(folder)
    return folder


def shared_data_present() -> bool:
    return (SHARED_DATA / "math500" / "test.jsonl").exists()
