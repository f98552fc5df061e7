"""docs/writing-a-domain.md: every code block runs, in order, in a private directory and a private venv.

Blocks with ``file=PATH`` in their info string are written to PATH (relative to the shell's current
directory); ``bash`` blocks run in one shell (so ``cd`` carries over); other ``python`` blocks run with
the venv's Python. The venv sees the installed packages (system site-packages) and this checkout's
mdreward (PYTHONPATH), so ``pip install -e .`` installs only the tutorial's package, into the venv.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-a-domain.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def blocks(text: str) -> list[tuple[str, str | None, str]]:
    """(language, file or None, body) of every fenced block, in order."""
    found = []
    for language, info, body in BLOCK.findall(text):
        target = re.search(r"file=(\S+)", info)
        found.append((language, target.group(1) if target else None, body))
    return found


def script_for(doc_blocks: list[tuple[str, str | None, str]]) -> str:
    lines = ["set -euo pipefail"]
    for number, (language, target, body) in enumerate(doc_blocks):
        marker = f"MDREWARD_DOC_BLOCK_{number}"
        lines.append(f"echo '--- block {number} ({language}{' ' + target if target else ''})' >&2")
        if target is not None:
            lines += [f"mkdir -p \"$(dirname {shlex.quote(target)})\"", f"cat > {shlex.quote(target)} <<'{marker}'",
                      body.rstrip("\n"), marker]
        elif language == "bash":
            lines.append(body)
        elif language == "python":
            lines += [f"python - <<'{marker}'", body.rstrip("\n"), marker]
        else:
            raise AssertionError(f"block {number} ({language}) is neither a file nor runnable: give it file=PATH")
    return "\n".join(lines) + "\n"


def test_every_block_is_a_file_or_runs():
    kinds = [(language, target) for language, target, _ in blocks(DOC.read_text())]
    assert ("bash", None) in kinds and ("python", "acme_capital.py") in kinds
    script_for(blocks(DOC.read_text()))  # raises for a block that would be skipped


@pytest.mark.slow
def test_the_tutorial_runs_from_an_empty_directory(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    for bundled in venv.glob("lib/python*/site-packages/*"):  # venv's own old setuptools would shadow the installed one
        if bundled.name.split("-")[0] in {"setuptools", "pkg_resources", "_distutils_hack", "distutils"}:
            shutil.rmtree(bundled) if bundled.is_dir() else bundled.unlink()
    cli = venv / "bin" / "mdreward"  # what installing mdreward into the venv would create
    cli.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom mdreward.cli import main\nsys.exit(main())\n")
    cli.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "PIP_NO_BUILD_ISOLATION": "0", "PIP_NO_DEPS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("MDREWARD_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["bash", "-c", script_for(blocks(DOC.read_text()))], cwd=work, env=env,
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert "acme.capital" in result.stdout and "acme-capital" in result.stdout  # `mdreward domains` listed it
    assert "passed" in result.stdout  # the tutorial's own pytest run
