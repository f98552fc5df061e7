"""The local isolated backend: warm bubblewrap sandboxes, one job at a time each.

Each slot is one long-lived sandbox: ``bwrap`` with new PID, network, IPC, UTS and cgroup
namespaces, a read-only view of the Python installation and system libraries only (no home,
no project, no data), an empty environment, private tmpfs ``/tmp`` and ``/dev/shm``, all
capabilities dropped, ``no_new_privs``, and (when the scorer runs as root) its own unprivileged
uid outside any user namespace, so ``RLIMIT_NPROC`` really bounds it. Where the machine allows,
each slot also gets a memory and a pids cgroup. Inside runs ``harness.serve`` as PID 1 (see
``harness``). A slot that crashes, hangs or misbehaves is killed and restarted; the job is retried
on the fresh slot and, if it still fails, reported as ``SandboxError`` (unscored, never failed).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..timeouts import DEFAULT_TIMEOUTS, Timeouts
from . import harness, seccomp
from .base import AssertJob, Job, RunResult, SandboxError, SandboxLimits, SandboxUnavailable, StdioJob, TestResult
from .verdict import ProtocolViolation, assert_results, parse_report, stdio_result

log = logging.getLogger(__name__)

HARNESS_SOURCE = Path(harness.__file__).read_text(encoding="utf-8")


def harness_program(entry_call: str) -> str:
    """The harness as a standalone program that ends by calling ``entry_call`` (``serve(...)`` in a
    local slot, ``run_standalone(...)`` under SandboxFusion)."""
    return f"{HARNESS_SOURCE}\n{entry_call}\n"


#: Outside-visible uid of a slot: ``UID_BASE + (scorer pid % 100_000) * 4096 + sandbox_no * 64 + slot``,
#: so two sandboxes never share a uid (or its process count).
UID_BASE = 2_000_000_000
MAX_SLOTS = 64
_sandbox_numbers = itertools.count()
_NO_CAPS = "0000000000000000"


class SlotFailure(Exception):
    """The slot (not the candidate) failed: restart it and retry the job."""


class SlotRetired(SlotFailure):
    """The zygote announced after its last job that it could not get clean and exited: restart the
    slot without spending one of the job's retries."""


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _ancestors(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if str(p) != "/"]


def bwrap_mounts(python: str, limits: SandboxLimits) -> list[str]:
    """Namespaces, environment and file system of a sandbox: the system and Python read-only,
    private tmpfs ``/tmp`` and ``/dev/shm``, nothing else of the host."""
    command = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent", "--new-session", "--clearenv",
               "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", harness.WORK_DIR,
               "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
               # numeric libraries start one thread per core by default; threads count against RLIMIT_NPROC
               "--setenv", "OMP_NUM_THREADS", "1", "--setenv", "OPENBLAS_NUM_THREADS", "1",
               "--setenv", "MKL_NUM_THREADS", "1",
               "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / name
        if host.is_symlink():
            command += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            command += ["--ro-bind", str(host), str(host)]
    for path in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"):
        command += ["--ro-bind-try", path, path]
    command += ["--proc", "/proc", "--dev", "/dev",
                "--perms", "1777", "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp",
                "--perms", "1777", "--size", str(limits.tmpfs_bytes), "--tmpfs", "/dev/shm"]
    # Python's own prefixes last, so one under /tmp (a venv made there) is not hidden by the tmpfs.
    prefixes = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(python).resolve().parent.parent,
                Path(os.path.abspath(python)).parent.parent}  # the last: a venv's own root
    made: set[Path] = {Path("/tmp"), Path("/dev"), Path("/proc")}  # mount points already there
    for prefix in sorted(prefixes):
        if prefix == Path("/usr") or Path("/usr") in prefix.parents:
            continue
        for parent in _ancestors(prefix):
            if parent not in made:
                command += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        command += ["--ro-bind", str(prefix), str(prefix)]
    return command


def bwrap_command(python: str, uid: int, limits: SandboxLimits, timeouts: Timeouts = DEFAULT_TIMEOUTS,
                  seccomp_fd: int | None = None) -> list[str]:
    """The bubblewrap command line of one slot. As root: privileged mode, keeping only the
    capabilities to change uid, which the harness uses at once to drop to ``uid`` for good.
    Otherwise: an unprivileged user namespace that may not nest further. ``seccomp_fd``: an open
    descriptor holding ``seccomp.filter_program()``, loaded for every process of the sandbox."""
    command = bwrap_mounts(python, limits) + ["--as-pid-1"]
    if seccomp_fd is not None:
        command += ["--seccomp", str(seccomp_fd)]
    if os.geteuid() == 0:
        command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        command += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    command += ["--", python, "-I", "-B", "-c", harness_program("serve(int(sys.argv[1]), float(sys.argv[2]))"),
                str(uid if os.geteuid() == 0 else 0), str(timeouts.sandbox_start_s)]
    return command


@dataclass
class Cgroup:
    """A per-slot memory + pids cgroup (v1 or v2), plus a CPU quota where the cpu controller is
    available to us (``cpu_limited``), when this machine lets us create one."""

    dirs: list[Path]
    cpu_limited: bool = False

    @classmethod
    def create(cls, name: str, memory_bytes: int, pids: int, cpus: float = 1.0) -> "Cgroup | None":
        try:
            own = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return None
        by_controller: dict[str, tuple[str, str]] = {}  # controller -> (its hierarchy's name, our path in it)
        for line in own:
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                by_controller[controller] = (controllers, path)
        period = 100_000
        quota = max(1000, int(cpus * period))
        dirs: list[Path] = []
        settings: list[tuple[Path, str]] = []
        cpu_settings: list[tuple[Path, str]] = []
        try:
            if "memory" in by_controller and "pids" in by_controller:  # cgroup v1
                def v1_dir(controller: str) -> Path:
                    hierarchy, path = by_controller[controller]
                    root = Path("/sys/fs/cgroup") / hierarchy
                    return (root if root.is_dir() else Path("/sys/fs/cgroup") / controller) / path.lstrip("/") / name
                memory, pids_dir = v1_dir("memory"), v1_dir("pids")
                for d in (memory, pids_dir):
                    d.mkdir(exist_ok=True)  # a stale one left by a killed scorer is reused
                    dirs.append(d)
                settings += [(memory / "memory.limit_in_bytes", str(memory_bytes)), (pids_dir / "pids.max", str(pids))]
                if "cpu" in by_controller:  # made below, where failing costs only the CPU quota
                    cpu = v1_dir("cpu")
                    cpu_settings += [(cpu / "cpu.cfs_period_us", str(period)), (cpu / "cpu.cfs_quota_us", str(quota))]
            elif "" in by_controller and Path("/sys/fs/cgroup/cgroup.controllers").exists():  # cgroup v2
                parent = Path("/sys/fs/cgroup") / by_controller[""][1].lstrip("/")
                unified = parent / name
                unified.mkdir(exist_ok=True)
                dirs.append(unified)
                settings += [(unified / "memory.max", str(memory_bytes)), (unified / "pids.max", str(pids))]
                cpu_settings += [(unified / "cpu.max", f"{quota} {period}")]
            else:
                return None
            for setting, value in settings:
                setting.write_text(value)
        except OSError as exc:
            log.info("cgroups unavailable for the sandbox (%s); rlimits still apply", exc)
            cls(dirs).remove()
            return None
        try:
            for setting, value in cpu_settings:
                if setting.parent not in dirs:
                    setting.parent.mkdir(exist_ok=True)
                    dirs.append(setting.parent)
                setting.write_text(value)
            cpu_limited = bool(cpu_settings)
        except OSError as exc:
            log.info("no CPU quota for the sandbox's slots (%s): slots share the CPUs unweighted", exc)
            cpu_limited = False
        return cls(dirs, cpu_limited)

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


class _Slot:
    """One warm sandbox."""

    def __init__(self, index: int, owner: "LocalSandbox", sandbox_no: int) -> None:
        self.index = index
        self.owner = owner
        self.uid = UID_BASE + (os.getpid() % 100_000) * 4096 + (sandbox_no % 64) * MAX_SLOTS + index
        self.process: subprocess.Popen | None = None
        self.reader: harness.LineReader | None = None
        self.cgroup: Cgroup | None = None
        self.stderr: IO[bytes] | None = None
        self.jobs = 0

    def start(self) -> None:
        owner = self.owner
        limits = owner.limits
        filter_r, filter_w = os.pipe()
        try:
            os.write(filter_w, owner.seccomp_program or b"")  # a few hundred bytes: fits the pipe buffer
            os.close(filter_w)
            command = bwrap_command(owner.python, self.uid, limits, owner.timeouts,
                                    seccomp_fd=filter_r if owner.seccomp_program is not None else None)
            if owner.use_cgroups and os.geteuid() == 0 and self.cgroup is None:
                self.cgroup = Cgroup.create(f"mdreward-{self.uid}",
                                            2 * limits.memory_bytes + 2 * limits.tmpfs_bytes + (256 << 20),
                                            limits.nproc + 16, limits.cpu_share)
            if self.cgroup is not None:
                command = ["sh", "-c", 'for f in $1; do echo $$ > "$f" || exit 97; done; shift; exec "$@"', "sh",
                           " ".join(self.cgroup.procs_files()), *command]
            self.stderr = tempfile.TemporaryFile()
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                            start_new_session=True, close_fds=True, pass_fds=(filter_r,),
                                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        finally:
            os.close(filter_r)
        # a stdio report carries up to output_bytes of stdout, JSON-escaped (at most 6 bytes a byte)
        assert self.process.stdout is not None  # stdout=PIPE
        self.reader = harness.LineReader(self.process.stdout.fileno(), 6 * limits.output_bytes + (1 << 20))
        try:
            ready = self._read(time.monotonic() + owner.timeouts.sandbox_start_s)
        except SlotFailure as exc:
            raise SandboxUnavailable(f"the bubblewrap sandbox did not start: {exc}: {self._stderr_text()}") from None
        problems = []
        if ready.get("ev") != "ready":
            problems.append(f"unexpected first message {ready!r:.200}")
        if ready.get("cap_eff") != _NO_CAPS:
            problems.append(f"capabilities not dropped (CapEff {ready.get('cap_eff')})")
        if ready.get("uid") == 0 or (os.geteuid() == 0 and ready.get("uid") != self.uid):
            problems.append(f"runs as uid {ready.get('uid')}, not an unprivileged uid")
        if not ready.get("as_init"):
            problems.append("the harness is not PID 1 of a new PID namespace")
        if problems:
            self.stop()
            raise SandboxUnavailable("refusing to run code: " + "; ".join(problems))
        self.jobs = 0

    def _stderr_text(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return self.stderr.read()[-2000:].decode("utf-8", "replace").strip()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Kill the sandbox: its PID 1 first (from outside the namespace SIGKILL always lands, and
        the kernel then ends every process in it), then bubblewrap. Without a request in flight
        the zygote also exits on its own when its stdin closes (the scorer died)."""
        if self.process is not None:
            for child in _children(self.process.pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
        if self.stderr is not None:
            self.stderr.close()
        self.process = self.reader = self.stderr = None

    def close(self) -> None:
        self.stop()
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise SlotFailure(f"sandbox is gone ({exc})") from None

    def _read(self, deadline: float) -> dict[str, Any]:
        assert self.reader is not None
        try:
            line = self.reader.read(deadline)
        except TimeoutError:
            raise SlotFailure("sandbox did not answer in time") from None
        except ValueError as exc:
            raise SlotFailure(str(exc)) from None
        if line is None:
            status = self.process.wait(timeout=self.owner.timeouts.sandbox_grace_s) if self.process else None
            raise SlotFailure(f"sandbox exited (status {status}): {self._stderr_text()[-500:]}")
        try:
            report = parse_report(line)
        except ProtocolViolation as exc:
            raise SlotFailure(str(exc)) from None
        if report.get("ev") == "exiting":
            raise SlotRetired(f"the sandbox could not clean up after its last job: {str(report.get('reason'))[:300]}")
        return report

    def execute(self, job: Job) -> RunResult:
        t = self.owner.timeouts
        wire_limits = self.owner.limits.wire(t)
        started = time.perf_counter()
        deadline = time.monotonic() + t.sandbox_run_s + t.sandbox_grace_s
        self.jobs += 1
        if isinstance(job, AssertJob):
            self._send({**job.wire(), "limits": wire_limits})
            events = []
            while True:
                report = self._read(deadline)
                if report.get("ev") == "end":
                    break
                events.append(report)
            try:
                tests, note = assert_results(events, job.total)
            except ProtocolViolation as exc:
                raise SlotFailure(str(exc)) from None
            if report.get("reason") == "run_timeout":
                note = f"run exceeded its time limit of {t.sandbox_run_s}s"
            return RunResult(job.total, tests, time.perf_counter() - started, "local", note)
        return self._execute_stdio(job, wire_limits, started)

    def _execute_stdio(self, job: StdioJob, wire_limits: dict[str, Any], started: float) -> RunResult:
        self._send({"kind": "stdio", "code": job.code, "inputs": [c.input for c in job.cases], "limits": wire_limits})
        results: list[TestResult] = []
        note = None
        run_deadline = started + self.owner.timeouts.sandbox_run_s
        t = self.owner.timeouts
        while True:
            # each case is bounded inside (CPU sandbox_test_s, wall that times the factor); the run by not continuing
            report = self._read(time.monotonic() + t.sandbox_test_s * t.sandbox_wall_factor + t.sandbox_grace_s)
            kind = report.get("ev")
            if kind == "end":
                break
            if kind != "case" or report.get("i") != len(results) or len(results) >= job.total:
                raise SlotFailure(f"unexpected stdio report {report!r:.200}")
            try:
                result = stdio_result(len(results), job.cases[len(results)], report, job.float_tol)
            except ProtocolViolation as exc:
                raise SlotFailure(str(exc)) from None
            results.append(result)
            over_time = time.perf_counter() > run_deadline
            if over_time:
                note = f"run exceeded its time limit of {self.owner.timeouts.sandbox_run_s}s"
            self._send({"continue": not over_time and (result.passed or not job.stop_first)})
        return RunResult(job.total, tuple(results), time.perf_counter() - started, "local", note)


class LocalSandbox:
    """The default backend: ``workers`` warm bubblewrap sandboxes on this machine.

    ``start()`` brings one slot up and verifies the isolation (raises ``SandboxUnavailable`` when
    bubblewrap is missing or the kernel refuses the namespaces); the others start on demand.
    """

    name = "local"

    def __init__(self, *, workers: int | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS,
                 limits: SandboxLimits = SandboxLimits(), python: str | None = None, use_cgroups: bool = True,
                 retries: int = 1) -> None:
        self.workers = max(1, min(MAX_SLOTS, workers or os.cpu_count() or 1))
        self.timeouts = timeouts
        self.limits = limits
        self.python = python or sys.executable
        self.use_cgroups = use_cgroups
        self.retries = retries
        try:  # None only in benchmarks/bench_sandbox_filter.py, which measures what the filter costs
            self.seccomp_program: bytes | None = seccomp.filter_program()
        except seccomp.UnsupportedArchitecture as exc:
            raise SandboxUnavailable(f"refusing to run code without a syscall filter: {exc}") from None
        sandbox_no = next(_sandbox_numbers)
        self._slots = [_Slot(i, self, sandbox_no) for i in range(self.workers)]
        self._idle: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for slot in self._slots:
            self._idle.put(slot)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="mdreward-sandbox")
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self.restart_reasons: collections.Counter[str] = collections.Counter()

    @property
    def cgroups_active(self) -> bool:
        return any(s.cgroup is not None for s in self._slots)

    @property
    def cpu_limited(self) -> bool:
        """Whether each started slot runs under its own CPU quota (``SandboxLimits.cpu_share``)."""
        started = [s for s in self._slots if s.process is not None]
        return bool(started) and all(s.cgroup is not None and s.cgroup.cpu_limited for s in started)

    def metrics(self) -> dict[str, int]:
        """Counters for monitoring: slot restarts in total and by cause (``retired``: a zygote that
        could not clean up; ``failed``: a crash, hang or protocol break during a job)."""
        return {"restarts": self.restarts, **{f"restarts_{k}": v for k, v in sorted(self.restart_reasons.items())}}

    def start(self) -> "LocalSandbox":
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap) "
                                     "or configure the SandboxFusion backend. Code is never run unisolated.")
        slot = self._idle.get()
        try:
            if not slot.alive:
                slot.start()
        finally:
            self._idle.put(slot)
        return self

    async def run(self, job: Job) -> RunResult:
        if self._closed:
            raise SandboxError("sandbox is closed")
        return await asyncio.wrap_future(self._executor.submit(self.run_blocking, job))

    def run_blocking(self, job: Job) -> RunResult:
        """Run ``job`` on an idle slot (blocking; ``run`` is the async form)."""
        slot = self._idle.get()
        try:
            failure: Exception | None = None
            attempts = 1 + self.retries
            retired_once = False
            while attempts:
                try:
                    if not slot.alive:
                        slot.start()
                    return slot.execute(job)
                except SlotFailure as exc:
                    failure = exc
                    retired = isinstance(exc, SlotRetired) and not retired_once
                    retired_once = retired_once or retired
                    attempts -= 0 if retired else 1
                    log.warning("sandbox slot %d failed (%s); restarting it", slot.index, exc or type(exc).__name__)
                    slot.stop()
                    self.restarts += 1
                    self.restart_reasons["retired" if retired else "failed"] += 1
            raise SandboxError(f"sandbox failed {1 + self.retries} times: {failure}")
        finally:
            self._idle.put(slot)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        for slot in self._slots:
            slot.close()

    def __enter__(self) -> "LocalSandbox":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
