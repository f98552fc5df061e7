"""The oldest Python that ``requires-python`` admits really runs mdreward: a fresh venv, the core install,
the CLI with a TOML config, and the runner and runtime tests (about a minute with a warm pip cache)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIN_PYTHON_ENV = "MDREWARD_MIN_PYTHON"


def declared_minimum() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text, re.M)
    assert match, "pyproject.toml declares no requires-python >= X.Y"
    return int(match.group(1)), int(match.group(2))


def reported_version(python: str) -> str:
    try:
        return subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    except OSError:
        return ""


def interpreter(version: tuple[int, int]) -> str | None:
    """``$MDREWARD_MIN_PYTHON``, else the first working X.Y among pyenv installs and ``pythonX.Y`` on PATH."""
    if os.environ.get(MIN_PYTHON_ENV):
        return os.environ[MIN_PYTHON_ENV]
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version[0]}.{version[1]}.*/bin/python")))
    candidates.append(shutil.which(f"python{version[0]}.{version[1]}") or "")
    return next((c for c in candidates if c and reported_version(c) == str(version)), None)


@pytest.mark.slow
def test_the_declared_minimum_python_installs_and_scores(tmp_path: Path) -> None:
    version = declared_minimum()
    python = interpreter(version)
    if python is None:
        pytest.skip(f"Python {version[0]}.{version[1]} (requires-python's minimum) is not installed; "
                    f"set {MIN_PYTHON_ENV} to its interpreter")
    reported = reported_version(python)
    assert reported == str(version), f"{python} is Python {reported or '?'}, not the declared minimum {version}"
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    install = subprocess.run([str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check", "-e", str(ROOT),
                              "pytest>=8"], capture_output=True, text=True, timeout=600, env=env)
    assert install.returncode == 0, install.stderr[-3000:]

    config = tmp_path / "mdreward.toml"  # TOML read by tomli on 3.10
    config.write_text('[format]\nmax_response_chars = 100000\n[judge]\nurl = "http://127.0.0.1:9/v1"\nmodel = "m"\n')
    out = tmp_path / "scored.jsonl"
    score = subprocess.run([str(bin_dir / "mdreward"), "score", "--example", "-o", str(out), "--no-progress",
                            "--config", str(config)],
                           capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert score.returncode == 0, score.stderr[-3000:]
    example = subprocess.run([str(bin_dir / "mdreward"), "example"], capture_output=True, text=True, timeout=120,
                             env=env).stdout
    assert len(out.read_text().splitlines()) == len(example.splitlines())

    tests = subprocess.run([str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_runner.py", "tests/test_runtime.py", "-k", "not ctrl_c"],
                           capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert tests.returncode == 0, tests.stdout[-3000:]
