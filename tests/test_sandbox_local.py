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


# ---- nothing survives from one record to the next ---------------------------------------------------------
_CHANNELS = r'''
import ctypes, os, platform, socket, time
libc = ctypes.CDLL(None, use_errno=True)
ADD_KEY, KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
KEYRINGS = (-1, -2, -3, -4, -5)  # thread, process, session, user, user-session
MARK = b"mdr-marker"
IPC_KEY = 0x6D647231
SKIP = ("/proc", "/sys", "/dev/pts")

def keyring_write():
    return [k for k in KEYRINGS if libc.syscall(ADD_KEY, b"user", MARK, b"1", 1, k) >= 0]

def keyring_read():
    return [k for k in KEYRINGS if libc.syscall(KEYCTL, 10, k, b"user", MARK, 0) >= 0]  # KEYCTL_SEARCH

def walk_dirs():  # every directory outside read-only mounts (those cannot hold a mark)
    for root, dirs, _ in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP and not os.path.islink(os.path.join(root, d))
                   and not os.statvfs(os.path.join(root, d)).f_flag & os.ST_RDONLY]
        yield root

def write_all():
    wrote = []
    if keyring_write():
        wrote.append("keyring")
    if libc.shmget(IPC_KEY, 4096, 0o1666) >= 0:
        wrote.append("sysv shm")
    if libc.semget(IPC_KEY, 1, 0o1666) >= 0:
        wrote.append("sysv sem")
    if libc.msgget(IPC_KEY, 0o1666) >= 0:
        wrote.append("sysv msg")
    if libc.mq_open(b"/mdr-marker", 0o100 | 2, 0o666, None) >= 0:
        wrote.append("posix mqueue")
    for root in walk_dirs():
        try:
            open(os.path.join(root, ".mdr-marker"), "w").close()
            wrote.append("file " + root)
        except OSError:
            pass
    os.environ["MDR_MARKER"] = "1"
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # a daemon in its own session holding an abstract socket
        os.setsid()
        server = socket.socket(socket.AF_UNIX)
        server.bind(b"\0mdr-marker")
        server.listen()
        os.write(write_end, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(read_end, 1)
    wrote.append("abstract socket")
    return wrote

def find_all():
    found = []
    if keyring_read():
        found.append("keyring")
    for name, call in (("sysv shm", lambda: libc.shmget(IPC_KEY, 0, 0)), ("sysv sem", lambda: libc.semget(IPC_KEY, 0, 0)),
                       ("sysv msg", lambda: libc.msgget(IPC_KEY, 0)), ("posix mqueue", lambda: libc.mq_open(b"/mdr-marker", 0))):
        if call() >= 0:
            found.append(name)
    found += ["file " + root for root in walk_dirs() if os.path.exists(os.path.join(root, ".mdr-marker"))]
    if "MDR_MARKER" in os.environ:
        found.append("environment")
    try:
        socket.socket(socket.AF_UNIX).connect(b"\0mdr-marker")
        found.append("abstract socket")
    except OSError:
        pass
    return found
'''


def test_a_run_sees_its_own_marks_so_the_probe_works(sandbox):
    ok, reason = holds(sandbox, _CHANNELS + "wrote = write_all()\nfound = find_all()\n"
                                            "print(set(wrote) == set(found) - {'environment'} and 'abstract socket' in found and 'file /tmp' in found)")
    assert ok, reason


def test_nothing_written_by_one_record_reaches_the_next_on_the_same_slot(sandbox):
    """Keyring, SysV shm/sem/msg, POSIX message queues and shared memory, abstract sockets, files in
    every writable directory, the environment: the next record on the slot finds none of them."""
    assert_holds(sandbox, _CHANNELS + "print('abstract socket' in write_all())")
    assert_holds(sandbox, _CHANNELS + "print(find_all())", "[]")


def test_a_run_cannot_persist_state_through_the_kernel(sandbox):
    """What the syscall filter refuses: keyrings, SysV IPC, message queues, new namespaces."""
    probe = (_CHANNELS + "import errno\nprint(keyring_write(), libc.shmget(IPC_KEY, 4096, 0o1666), libc.msgget(IPC_KEY, 0o1666),"
             " libc.mq_open(b'/q', 0o102, 0o666, None))")
    assert_holds(sandbox, probe, "[] -1 -1 -1")


def test_the_syscall_filter_refuses_namespaces_tracing_and_kernel_interfaces(sandbox):
    probe = ("import ctypes, os, threading\nlibc = ctypes.CDLL(None, use_errno=True)\nout = []\n"
             "for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000, 0x08000000):  # user, pid, net, mount, ipc\n"
             "    out.append(libc.unshare(flag) == -1 and ctypes.get_errno() == 1)\n"
             "out.append(libc.ptrace(0, 0, None, None) == -1 and ctypes.get_errno() == 1)  # PTRACE_TRACEME\n"
             "out.append(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == -1 and ctypes.get_errno() == 1)\n"
             "out.append(libc.syscall(321 if os.uname().machine == 'x86_64' else 280, 0, None, 0) == -1 and ctypes.get_errno() == 1)\n"
             "box = []\nt = threading.Thread(target=box.append, args=(1,))\nt.start()\nt.join()\n"  # threads still work
             "pid = os.fork()\nif pid == 0:\n    os._exit(7)\nout.append(os.waitpid(pid, 0)[1] >> 8 == 7 and box == [1])\nprint(all(out), out)")
    assert_holds(sandbox, probe, "True " + str([True] * 9))


def test_a_new_user_namespace_through_clone_is_refused(sandbox):
    probe = ("import ctypes, os, platform, signal\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "nr = {'x86_64': 56, 'aarch64': 220}[platform.machine()]\n"
             "pid = libc.syscall(nr, 0x10000000 | signal.SIGCHLD, None, None, None, None)\n"
             "if pid == 0:\n    os._exit(0)\nprint(pid, ctypes.get_errno())")
    assert_holds(sandbox, probe, "-1 1")


def test_the_filter_tables_agree_with_libseccomp():
    import ctypes
    import ctypes.util

    from mdreward.sandbox import seccomp
    name = ctypes.util.find_library("seccomp")
    if not name:
        pytest.skip("libseccomp is not installed (only used to cross-check the tables)")
    lib = ctypes.CDLL(name)
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    for machine, (audit_arch, numbers) in seccomp.ARCHES.items():
        assert set(seccomp.DENIED) | {"clone", "clone3"} == set(numbers)
        for call, number in numbers.items():
            assert lib.seccomp_syscall_resolve_name_arch(audit_arch, call.encode()) == number, (machine, call)


def test_a_python_under_tmp_does_not_restart_the_slot(tmp_path, caplog):
    """A venv under /tmp puts bubblewrap's mount points into the sandbox's /tmp: the wipe keeps
    them, and the slot serves 50 jobs without a restart."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    tests = (TestStep("assert f(2) == 3", True),)
    with LocalSandbox(workers=1, timeouts=FAST, limits=LIMITS, python=str(venv / "bin" / "python")) as sb:
        for i in range(25):
            assert sb.run_blocking(StdioJob(f"open('/tmp/x{i}', 'w').close()\nprint(input())", (StdioCase("a\n", "a\n"),))).passed
            assert sb.run_blocking(AssertJob("def f(x):\n    return x + 1\n", tests)).passed
        assert sb.metrics() == {"restarts": 0}
        assert CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST, sandbox=sb).metrics() == {"restarts": 0}


def test_a_slot_that_could_not_get_clean_restarts_with_its_reason_and_keeps_the_retry(caplog):
    from mdreward.sandbox import harness
    tests = (TestStep("assert f(2) == 3", True),)
    with LocalSandbox(workers=1, timeouts=FAST, limits=LIMITS, retries=0) as sb:
        slot = sb._slots[0]
        read_end, write_end = os.pipe()  # what the zygote says after a job it could not clean up after
        os.write(write_end, b'{"ev": "exiting", "reason": "cannot remove /tmp/stuck"}\n')
        os.close(write_end)
        slot.reader = harness.LineReader(read_end)
        with caplog.at_level("WARNING"):
            assert sb.run_blocking(AssertJob("def f(x):\n    return x + 1\n", tests)).passed
        os.close(read_end)
        assert sb.metrics() == {"restarts": 1, "restarts_retired": 1}
        assert "cannot remove /tmp/stuck" in caplog.text


USE_CGROUPS = True
_SHARE = ("import time\ndef share():\n    wall, cpu = time.monotonic(), time.process_time()\n"
          "    while time.monotonic() - wall < 1.0:\n        pass\n    return (time.process_time() - cpu) / (time.monotonic() - wall)\n")
_SPINNERS = ("import os, time\nfor _ in range(20):\n    if os.fork() == 0:\n        os.setsid()\n        end = time.monotonic() + 3.5\n"
             "        while time.monotonic() < end:\n            pass\n        os._exit(0)\ntime.sleep(3.5)\nprint('spun')")


@pytest.mark.skipif(not AS_ROOT, reason="cgroups are only created when running as root")
def test_a_neighbour_with_many_spinning_processes_does_not_starve_another_slot():
    """Each slot gets its own CPU share (cgroup), so 20 busy processes in one slot leave another
    slot about the share it has alone, not 1/21 of it."""
    timeouts = Timeouts(sandbox_test_s=4.0, sandbox_run_s=6.0, sandbox_cpu_s=4.0)
    with LocalSandbox(workers=2, timeouts=timeouts, limits=LIMITS, use_cgroups=USE_CGROUPS) as sb:
        def measured() -> float:
            result = sb.run_blocking(AssertJob(_SHARE + "def probe():\n    raise ValueError(repr(share()))\n",
                                               (TestStep("probe()", True),)))
            return float(result.tests[0].reason.split("ValueError: ", 1)[1])
        alone = measured()
        if USE_CGROUPS and not sb.cpu_limited:
            pytest.skip("no writable cpu cgroup controller on this machine")
        neighbour = threading.Thread(target=sb.run_blocking, args=(StdioJob(_SPINNERS, (StdioCase("", "spun\n"),)),))
        neighbour.start()
        time.sleep(0.8)
        beside = measured()
        neighbour.join()
    assert beside >= 0.5 * alone, (alone, beside)


_WORK = "import time\ndef work():\n    start = time.process_time()\n    while time.process_time() - start < 0.15:\n        pass\n    return True\n"


@pytest.mark.parametrize("wall_factor, passes", [(12.0, True), (1.0, False)])
def test_time_limits_count_the_candidates_own_cpu_time_without_cgroups(wall_factor, passes):
    """Without cgroups a neighbour's 20 busy processes leave a slot a twentieth of the CPU: a test
    needing 0.15 s of CPU takes seconds of wall time. Judged on its own CPU time (limit 1 s) it passes;
    judged on wall time alone (the factor 1.0 control) the same run fails."""
    timeouts = Timeouts(sandbox_test_s=1.0, sandbox_run_s=15.0, sandbox_cpu_s=4.0, sandbox_wall_factor=wall_factor)
    patient = Timeouts(sandbox_test_s=6.0, sandbox_run_s=10.0, sandbox_cpu_s=5.0)
    with LocalSandbox(workers=1, timeouts=timeouts, limits=LIMITS, use_cgroups=False) as sb, \
            LocalSandbox(workers=1, timeouts=patient, limits=LIMITS, use_cgroups=False) as other:
        assert sb.run_blocking(AssertJob(_WORK, (TestStep("assert work()", True),))).passed  # warm, alone
        other.run_blocking(StdioJob("print(1)", (StdioCase("", "1\n"),)))
        neighbour = threading.Thread(target=other.run_blocking, args=(StdioJob(_SPINNERS, (StdioCase("", "spun\n"),)),))
        neighbour.start()
        time.sleep(0.8)
        beside = sb.run_blocking(AssertJob(_WORK, (TestStep("assert work()", True),)))
        stdio = sb.run_blocking(StdioJob(_WORK + "print(work())", (StdioCase("", "True\n"),)))
        neighbour.join()
    assert (beside.passed, stdio.passed) == (passes, passes), (beside.tests, stdio.tests)
