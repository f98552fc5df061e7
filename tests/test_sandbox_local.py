"""The local bubblewrap sandbox: isolation, limits, cleanup and failure handling, checked from inside.

Each probe is a real program run in the sandbox; its expected stdout states the property, so a
probe passes only when the property holds inside the sandbox (the comparison is made outside).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from code_support import code_sample
from mdreward import Scorer, ScoringConfig, Status
from mdreward.domains.code import CodeDomain
from mdreward.registry import DomainUnavailable
from mdreward.sandbox import (AssertJob, LocalSandbox, SandboxError, SandboxLimits, SandboxUnavailable, StdioCase,
                              StdioJob, TestStep)
from mdreward.sandbox.local import UID_BASE, _children
from mdreward.timeouts import Timeouts
from mdreward.types import DEFAULT_FORMAT

FAST = Timeouts(sandbox_test_s=2.0, sandbox_run_s=4.0, sandbox_cpu_s=2.0)
LIMITS = SandboxLimits(memory_bytes=512 << 20, nproc=24, nofile=128, fsize_bytes=4 << 20, output_bytes=1 << 20)
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def sandbox():
    with LocalSandbox(workers=1, timeouts=FAST, limits=LIMITS) as sb:
        yield sb


def holds(sandbox: LocalSandbox, program: str, expected: str = "True") -> tuple[bool, str | None]:
    result = sandbox.run_blocking(StdioJob(program, (StdioCase("", expected + "\n"),)))
    return result.passed, result.tests[0].reason if result.tests else result.note


def assert_holds(sandbox, program, expected="True"):
    ok, reason = holds(sandbox, program, expected)
    assert ok, reason


@pytest.mark.skipif(not AS_ROOT, reason="the dedicated-uid mode needs root")
def test_runs_as_a_dedicated_unprivileged_uid_without_capabilities(sandbox):
    assert_holds(sandbox, f"import os\nprint(os.getuid() >= {UID_BASE} and os.geteuid() == os.getuid() and os.getgroups() == [])")
    assert_holds(sandbox, "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
                          "print(status['CapEff'].strip(), status['CapPrm'].strip(), status['NoNewPrivs'].strip())",
                 "0000000000000000 0000000000000000 1")


def test_sees_only_its_own_processes(sandbox):
    # the zygote (PID 1), the fork server and the program itself; nothing of the host
    assert_holds(sandbox, "import os\nprint(len([d for d in os.listdir('/proc') if d.isdigit()]))", "3")


def test_environment_is_empty_of_host_secrets(sandbox, monkeypatch):
    monkeypatch.setenv("MDREWARD_CANARY", "host-secret")
    assert_holds(sandbox, "import os\nprint(sorted(os.environ))",
                 "['HOME', 'LANG', 'MKL_NUM_THREADS', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'PATH', 'PWD', "
                 "'PYTHONDONTWRITEBYTECODE']")


def test_no_network_interfaces_but_loopback(sandbox):
    assert_holds(sandbox, "import socket\nprint([n for _, n in socket.if_nameindex()])", "['lo']")


def test_host_files_are_invisible_and_only_temp_dirs_are_writable(sandbox):
    assert_holds(sandbox, "import os\nprint([p for p in ('/work', '/home', '/root/.bash_history', '/etc/passwd', '/etc/shadow') if os.path.exists(p)])", "[]")
    probe = ("import os\nok = []\nfor d in ('/', '/usr', '/etc', '/tmp', '/dev/shm', '/proc/sys', os.path.dirname(os.__file__)):\n"
             "    try:\n        open(os.path.join(d, 'probe'), 'w').close()\n        ok.append(d)\n    except OSError:\n        pass\nprint(ok)")
    assert_holds(sandbox, probe, "['/tmp', '/dev/shm']")


def test_resource_limits_are_applied(sandbox):
    probe = ("import resource as r\nprint([r.getrlimit(getattr(r, n))[0] for n in "
             "('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_NOFILE', 'RLIMIT_FSIZE', 'RLIMIT_CPU', 'RLIMIT_CORE')])")
    assert_holds(sandbox, probe, str([LIMITS.memory_bytes, LIMITS.nproc, LIMITS.nofile, LIMITS.fsize_bytes, 2, 0]))


def test_process_limit_bites(sandbox):
    probe = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
             "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\nprint(0 < n < 24)")
    assert_holds(sandbox, probe)


def test_memory_limit_bites(sandbox):
    assert_holds(sandbox, "try:\n    x = bytearray(1 << 30)\n    print('allocated')\nexcept MemoryError:\n    print('limited')", "limited")


def test_daemons_and_files_are_gone_before_the_next_run(sandbox):
    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\n"
              "open('/tmp/left-behind', 'w').close()\nopen('/dev/shm/left-behind', 'w').close()\nprint('started')")
    assert_holds(sandbox, daemon, "started")
    assert_holds(sandbox, "import os\nprint(len([d for d in os.listdir('/proc') if d.isdigit()]), os.listdir('/tmp'), os.listdir('/dev/shm'))",
                 "3 ['work'] []")


def test_output_cap_and_time_limit(sandbox):
    result = sandbox.run_blocking(StdioJob("while True:\n    print('y' * 1000)\n", (StdioCase("", "y\n"),)))
    assert result.tests[0].reason == "output limit exceeded"
    started = time.monotonic()
    result = sandbox.run_blocking(StdioJob("while True:\n    pass\n", (StdioCase("", "y\n"),)))
    assert result.tests[0].reason == "time limit exceeded"
    assert time.monotonic() - started < FAST.sandbox_test_s + 3


def test_tests_never_reach_candidate_memory_even_after_earlier_runs(sandbox):
    tests = (TestStep("assert mul(3, 4) == 12", True),)
    assert sandbox.run_blocking(AssertJob("def mul(a, b):\n    return a * b\n", tests)).passed
    scanner = ("import ctypes, re\nctypes.CDLL(None).prctl(4, 1, 0, 0, 0)\n\ndef scan(pattern):\n    hits = 0\n"
               "    with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:\n        for line in maps:\n"
               "            span, perms = line.split()[:2]\n            lo, hi = (int(x, 16) for x in span.split('-'))\n"
               "            if 'r' not in perms or hi - lo > 1 << 27:\n                continue\n            try:\n"
               "                mem.seek(lo)\n                hits += len(re.findall(pattern, mem.read(hi - lo)))\n"
               "            except (OSError, ValueError, OverflowError):\n                pass\n    return hits\n\n"
               "MARK = 'own-' + 'marker-7f3a'\n\ndef mul(a, b):\n    # the scanner finds its own code's marker, so it works; it must not find the tests\n"
               "    own = scan(b'own-marker-7f3a')\n    tests = scan(b'mul[(]3, 4[)] == 12')\n    return 12 if own and tests else -own\n")
    result = sandbox.run_blocking(AssertJob(scanner, tests))
    assert not result.passed
    assert result.tests[0].reason.startswith("AssertionError")


@pytest.mark.skipif(not AS_ROOT, reason="cgroups are only created when running as root")
def test_each_slot_joins_its_cgroup_where_available(sandbox):
    if not sandbox.cgroups_active:
        pytest.skip("this machine offers no writable cgroup hierarchy")
    slot = sandbox._slots[0]
    membership = open(f"/proc/{slot.process.pid}/cgroup").read()
    assert f"mdreward-{slot.uid}" in membership


def test_a_python_from_a_venv_under_tmp_runs_inside(tmp_path):
    venv = tmp_path / "venv"  # pytest's tmp_path is under /tmp, which the sandbox overlays with a tmpfs
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    with LocalSandbox(workers=1, timeouts=FAST, limits=LIMITS, python=str(python)) as sb:
        assert_holds(sb, "import sys\nprint(sys.prefix)", str(venv))


def test_refuses_loudly_without_bubblewrap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        LocalSandbox(workers=1).start()
    with pytest.raises(DomainUnavailable, match="bubblewrap"):
        CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST)
    with Scorer(ScoringConfig(timeouts=FAST)) as scorer:
        score = scorer.score(code_sample("def f():\n    return 1\n", {"assert": "assert f() == 1"}, "r7"))
    assert score.status is Status.ERROR and score.reward is None
    assert "record 'r7'" in score.error and "bubblewrap" in score.error


def _kill_slot_soon(sandbox: LocalSandbox, delay_s: float) -> threading.Thread:
    """Simulate a sandbox crash (say, the OOM killer): SIGKILL the sandbox's PID 1 mid-run."""
    def kill() -> None:
        time.sleep(delay_s)
        process = sandbox._slots[0].process
        for child in _children(process.pid):
            os.kill(child, signal.SIGKILL)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_a_crashed_sandbox_is_retried_then_reported_unscored():
    slow_tests = {"assert": "assert slow(1) == 1", "entry_point": "slow"}
    slow = "import time\ndef slow(x):\n    time.sleep(1.0)\n    return x\n"
    with LocalSandbox(workers=1, timeouts=FAST, retries=0) as fragile:
        domain = CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST, sandbox=fragile)
        killer = _kill_slot_soon(fragile, 0.4)
        score = asyncio.run(domain.score_batch([code_sample(slow, slow_tests, "crash")]))[0]
        killer.join()
        assert score.status is Status.ERROR and score.reward is None and "sandbox failure" in score.error
        # the slot comes back for the next record
        assert asyncio.run(domain.score_batch([code_sample(slow, slow_tests)]))[0].reward == 1.0
    with LocalSandbox(workers=1, timeouts=FAST, retries=1) as sturdy:
        domain = CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST, sandbox=sturdy)
        killer = _kill_slot_soon(sturdy, 0.4)
        score = asyncio.run(domain.score_batch([code_sample(slow, slow_tests)]))[0]
        killer.join()
        assert score.reward == 1.0 and sturdy.restarts >= 1


def test_sandbox_error_is_raised_not_swallowed():
    with LocalSandbox(workers=1, timeouts=FAST, retries=0) as fragile:
        killer = _kill_slot_soon(fragile, 0.4)
        with pytest.raises(SandboxError):
            fragile.run_blocking(AssertJob("import time\ndef f():\n    time.sleep(1)\n", (TestStep("assert f() is None", True),)))
        killer.join()


def test_stop_at_first_failure_and_per_test_reports():
    tests = {"assert": "assert add(1, 1) == 2\nassert add(1, 2) == 4\nassert add(2, 2) == 4", "entry_point": "add"}
    with LocalSandbox(workers=1, timeouts=FAST) as sb:
        fast = CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST, sandbox=sb)
        detailed = CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST, sandbox=sb, per_test=True)
        sample = code_sample("def add(a, b):\n    return a + b\n", tests)
        first = asyncio.run(fast.score_batch([sample]))[0]
        every = asyncio.run(detailed.score_batch([sample]))[0]
    assert (first.reward, first.components["tests_run"], first.components["tests_total"]) == (-0.5, 2, 3)
    assert every.components["tests_run"] == 3
    assert [t["passed"] for t in every.components["tests"]] == [True, False, True]


@pytest.mark.skipif(not AS_ROOT or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to become nobody), setpriv and a system python")
def test_unprivileged_scorer_uses_a_user_namespace():
    """A scorer that is not root gets the same isolation through an unprivileged user namespace."""
    repo = Path(__file__).resolve().parents[1]
    tmp_path = Path(tempfile.mkdtemp(prefix="mdreward-nobody-"))  # pytest's tmp dirs are private to root
    script = tmp_path / "probe.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(repo)!r})\n"
        "from mdreward.sandbox import LocalSandbox, AssertJob, TestStep, StdioJob, StdioCase\n"
        "with LocalSandbox(workers=1, python='/usr/bin/python3') as sb:\n"
        "    ok = sb.run_blocking(AssertJob('def f(x):\\n    return x + 1\\n', (TestStep('assert f(1) == 2', True),))).passed\n"
        "    bad = sb.run_blocking(AssertJob('def f(x):\\n    return x\\n', (TestStep('assert f(1) == 2', True),))).passed\n"
        "    probe = 'import os, socket\\nprint(len([d for d in os.listdir(\"/proc\") if d.isdigit()]), [n for _, n in socket.if_nameindex()])'\n"
        "    iso = sb.run_blocking(StdioJob(probe, (StdioCase('', \"3 ['lo']\"),))).passed\n"
        "print(ok, bad, iso)\n")
    tmp_path.chmod(0o755)
    script.chmod(0o644)
    try:
        done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3",
                               str(script)], capture_output=True, text=True, timeout=120,
                              env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert done.stdout.split() == ["True", "False", "True"], done.stderr[-2000:]
