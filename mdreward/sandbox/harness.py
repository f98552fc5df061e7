"""The program that runs INSIDE the sandbox (standard library only; it is shipped as source text).

Processes of one sandbox, all under its unprivileged uid and all non-dumpable (no ptrace, no
``/proc/<pid>/mem`` across them):

* the **zygote** (``serve``): PID 1 of the sandbox's PID namespace, so nothing inside can signal
  it. It reads jobs from the trusted scorer, runs the dataset's test code (assert mode) against
  proxies of the candidate's functions, relays plain-data reports, and after each job kills every
  other process of the namespace (daemons included) and wipes the writable directories.
* the **fork server**: a copy of the zygote taken before any job, so the candidate processes it
  forks never inherit memory that held tests (the zygote's memory does).
* a **candidate** process per run: gets only its code, limits and stdin from the zygote. In stdio
  mode it is the program. In assert mode it serves calls to its top-level functions over a pipe;
  arguments and return values cross as tagged JSON of plain values (see ``encode``), so no live
  object (an always-equal object, a patched builtin, a skip exception) ever reaches the tests.

Nothing here decides a verdict: the scorer outside requires a passing report for every test it
sent, and compares stdio outputs itself (expected outputs never enter the sandbox).
"""
from __future__ import annotations

import atexit
import builtins
import collections
import ctypes
import decimal
import fcntl
import fractions
import importlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
MAX_DEPTH = 200
MAX_MESSAGE_BYTES = 64 << 20
WORK_DIR = "/tmp/work"
WIPE_DIRS = ("/tmp", "/dev/shm")
PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing",
           "fractions", "decimal", "statistics", "random", "copy", "operator", "hashlib", "datetime",
           "array", "cmath", "io", "textwrap", "unicodedata", "dataclasses", "enum", "struct")

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


# ---- plain data across the candidate boundary ------------------------------------------------------
class Unencodable(TypeError):
    pass


class Reference:
    """A name in the candidate's namespace (a function, or an object that cannot cross): the tests
    may hand it back to the candidate's functions, and nothing else."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<candidate object {self.name}>"


_PLAIN_BASES = (int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset)


def encode(value, depth=0):
    """Tagged JSON of plain values. Exact builtin types cross as they are; a few standard types
    (Counter, OrderedDict, deque, Fraction, Decimal) are rebuilt from plain data on the other side;
    subclasses of builtin types (numpy scalars, namedtuples, an int with a rigged ``__eq__``) are
    reduced to their builtin value through the base type's own methods, so their overrides never
    run outside. Anything else cannot cross."""
    if depth > MAX_DEPTH:
        raise Unencodable("value is nested too deeply")
    t = type(value)
    if value is None:
        return ["N"]
    if t is bool:
        return ["B", value]
    if t is int:
        return ["I", value]
    if t is float:
        return ["F", value]
    if t is str:
        return ["S", value]
    if t is list:
        return ["L", [encode(v, depth + 1) for v in value]]
    if t is tuple:
        return ["T", [encode(v, depth + 1) for v in value]]
    if t is dict:
        return ["D", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    if t is set:
        return ["E", [encode(v, depth + 1) for v in value]]
    if t is frozenset:
        return ["Z", [encode(v, depth + 1) for v in value]]
    if t is bytes:
        return ["Y", value.decode("latin-1")]
    if t is bytearray:
        return ["A", bytes(value).decode("latin-1")]
    if t is complex:
        return ["C", value.real, value.imag]
    if isinstance(value, Reference):
        return ["R", value.name]
    if t is collections.Counter or t is collections.OrderedDict:
        tag = "Cn" if t is collections.Counter else "Od"
        return [tag, [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]]
    if t is collections.deque:
        return ["Dq", [encode(v, depth + 1) for v in value]]
    if t is fractions.Fraction or t is decimal.Decimal:
        return ["Fr" if t is fractions.Fraction else "Dc", str(value)]
    module = getattr(t, "__module__", "") or ""
    if isinstance(module, str) and module.split(".")[0] == "numpy" and hasattr(value, "tolist"):
        return encode(value.tolist(), depth + 1)
    for base in _PLAIN_BASES:
        if isinstance(value, base):
            return encode(_as_base(value, base), depth + 1)
    raise Unencodable(f"a value of type {t.__name__} cannot cross the sandbox boundary (plain values only)")


def _as_base(value, base):
    if base is int:
        return int.__index__(value)
    if base is float:
        return float.__float__(value)
    if base is str:
        return str.__str__(value)
    if base in (bytes, bytearray):
        return bytes(memoryview(value))
    if base is dict:
        return dict(dict.items(value))
    return base(base.__iter__(value))


def decode(node, depth=0, references=None):
    """Inverse of ``encode``; rejects anything malformed. ``references`` (the candidate's
    namespace, on the candidate's side only) resolves ``Reference`` names."""
    if depth > MAX_DEPTH or type(node) is not list or not node or type(node[0]) is not str:
        raise ValueError("malformed value")
    tag = node[0]
    if tag == "N" and len(node) == 1:
        return None
    if len(node) == 2:
        v = node[1]
        if tag == "B" and type(v) is bool:
            return v
        if tag == "I" and type(v) is int:
            return v
        if tag == "F" and type(v) in (int, float):
            return float(v)
        if tag == "S" and type(v) is str:
            return v
        if tag in ("Y", "A") and type(v) is str:
            raw = v.encode("latin-1")
            return raw if tag == "Y" else bytearray(raw)
        if tag in ("L", "T", "E", "Z", "Dq") and type(v) is list:
            items = [decode(x, depth + 1, references) for x in v]
            return {"L": list, "T": tuple, "E": set, "Z": frozenset, "Dq": collections.deque}[tag](items)
        if tag in ("D", "Cn", "Od") and type(v) is list:
            pairs = []
            for pair in v:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("malformed mapping")
                pairs.append((decode(pair[0], depth + 1, references), decode(pair[1], depth + 1, references)))
            return collections.Counter(dict(pairs)) if tag == "Cn" else {"D": dict, "Od": collections.OrderedDict}[tag](pairs)
        if tag in ("Fr", "Dc") and type(v) is str and len(v) < 10_000:
            try:
                return fractions.Fraction(v) if tag == "Fr" else decimal.Decimal(v)
            except (ArithmeticError, ValueError):
                raise ValueError("malformed number") from None
        if tag == "R" and type(v) is str and references is not None and v in references:
            return references[v]
    if tag == "C" and len(node) == 3 and all(type(x) in (int, float) for x in node[1:]):
        return complex(node[1], node[2])
    raise ValueError("malformed value")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send_before(fd: int, message, deadline: float) -> None:
    """Write one message to a non-blocking pipe, giving up at ``deadline`` (a reader that stalls
    cannot block the writer)."""
    view = memoryview((json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8", "surrogatepass"))
    os.set_blocking(fd, False)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        _, ready, _ = select.select([], [fd], [], None if remaining == float("inf") else remaining)
        if ready:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                pass


def _send(fd: int, message) -> None:
    _write_all(fd, (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8", "surrogatepass"))


class LineReader:
    """Reads newline-terminated messages from a pipe with a deadline and a size cap."""

    def __init__(self, fd: int, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.fd = fd
        self.limit = limit
        self.buffer = b""
        self.eof = False

    def read(self, deadline: float):
        """The next line (bytes), ``None`` at EOF; raises TimeoutError past ``deadline``."""
        while b"\n" not in self.buffer:
            if self.eof:
                return None
            if deadline != float("inf"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                    raise TimeoutError
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                self.eof = True
                continue
            self.buffer += chunk
            if len(self.buffer) > self.limit:
                raise ValueError("message is too large")
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


# ---- process set-up ----------------------------------------------------------------------------------
def _place_fds(mapping: dict) -> None:
    """Make ``mapping`` (target fd -> source fd) the only open fds of this process."""
    staged = {target: fcntl.fcntl(source, fcntl.F_DUPFD, 1000) for target, source in mapping.items()}
    for target, fd in staged.items():
        os.dup2(fd, target)
    top = max(mapping) + 1
    os.closerange(top, 1 << 16)
    for target in range(top):
        if target not in mapping:
            try:
                os.close(target)
            except OSError:
                pass


def _set_limits(limits: dict) -> None:
    cpu = max(1, int(limits["cpu_s"]))
    for name, value in (("RLIMIT_CPU", (cpu, cpu + 1)), ("RLIMIT_AS", (limits["memory_bytes"],) * 2),
                        ("RLIMIT_NPROC", (limits["nproc"],) * 2), ("RLIMIT_NOFILE", (limits["nofile"],) * 2),
                        ("RLIMIT_FSIZE", (limits["fsize_bytes"],) * 2), ("RLIMIT_CORE", (0, 0))):
        resource.setrlimit(getattr(resource, name), value)


def _child_stdio() -> None:
    """Fresh Python-level stdio objects on fds 0-2 (no buffers inherited from the parent)."""
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False, errors="surrogateescape")
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", closefd=False)


def _fresh_namespace(name: str) -> dict:
    return {"__name__": name, "__builtins__": builtins, "__file__": f"{WORK_DIR}/solution.py"}


# ---- candidate process ---------------------------------------------------------------------------------
def _candidate_exports(namespace: dict) -> list:
    exports = []
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if callable(value) and not isinstance(value, type):
            exports.append([name, "function"])
            continue
        if type(value).__name__ == "module" and isinstance(getattr(value, "__name__", None), str):
            exports.append([name, "module", value.__name__])
            continue
        try:
            exports.append([name, "value", encode(value)])
        except Unencodable:
            exports.append([name, "opaque"])
    return exports


def _exception_report(exc: BaseException) -> list:
    return [type(exc).__name__, str(exc)[:300]]


def _serve_calls(job: dict, request_fd: int, response_fd: int) -> None:
    """Assert mode: load setup + candidate code, then serve calls of its top-level names until EOF."""
    namespace = _fresh_namespace("solution")
    try:
        if job.get("setup"):
            exec(compile(job["setup"], "setup.py", "exec"), namespace)
        exec(compile(job["code"], "solution.py", "exec"), namespace)
        _send(response_fd, {"ready": _candidate_exports(namespace)})
    except BaseException as exc:  # inside the sandbox: the candidate's failure is reported as data
        _send(response_fd, {"load_error": _exception_report(exc)})
        return
    reader = LineReader(request_fd)
    while True:
        line = reader.read(float("inf"))
        if line is None:
            return
        request = json.loads(line)
        try:
            args = [decode(a, 0, namespace) for a in request["a"]]
            kwargs = {k: decode(v, 0, namespace) for k, v in request["k"].items()}
            result = namespace[request["f"]](*args, **kwargs)
            mutated = [encode(a) if type(a) in (list, dict, set, bytearray) else None for a in args]
            reply = {"r": encode(result), "m": mutated}
        except BaseException as exc:  # inside the sandbox: any exception of the candidate is data
            reply = {"x": _exception_report(exc)}
        _send(response_fd, reply)


def _run_program(job: dict) -> int:
    """Stdio mode: run the code as ``__main__``; the exit status python itself would give."""
    namespace = _fresh_namespace("__main__")
    exit_code = 0
    try:
        exec(compile(job["code"], "solution.py", "exec"), namespace)
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # inside the sandbox: a crashing program exits 1 like python would
        traceback.print_exc()
        exit_code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return exit_code


def _candidate_main() -> None:
    """A spare candidate process: waits on fd 3 for its job (code, limits, stdin), then becomes
    the program (stdio) or serves calls on fds 4/5 (assert). It never held any test."""
    job = json.loads(LineReader(3).read(float("inf")) or b"null")
    if job is None:
        os._exit(0)
    os.close(3)
    devnull = os.open(os.devnull, os.O_RDWR)
    if job["mode"] == "stdio":
        input_path = os.path.join(WORK_DIR, ".stdin")
        with open(input_path, "w", encoding="utf-8", errors="surrogatepass") as handle:
            handle.write(job["stdin"])
        os.dup2(os.open(input_path, os.O_RDONLY), 0)
        os.unlink(input_path)
        os.dup2(devnull, 4)
        os.dup2(devnull, 5)
    else:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os.close(devnull)
    _child_stdio()
    try:  # if memory runs out, the kernel kills a candidate process first, never the zygote
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass
    _set_limits(job["limits"])
    if job["mode"] == "stdio":
        code = _run_program(job)
    else:
        _serve_calls(job, 4, 5)
        code = 0
    os._exit(code & 0xFF)


class ForkServer:
    """Forks spare candidate processes from a pristine copy of the zygote, taken before any job:
    no candidate can find an earlier job's tests in its inherited memory."""

    def __init__(self, wait_s: float) -> None:
        self.socket, child_end = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.socket.close()
            keep = child_end.fileno()
            os.closerange(3, keep)  # hold nothing of the zygote's (its channel to the scorer)
            os.closerange(keep + 1, 1 << 16)
            self._serve(child_end)
        child_end.close()
        self.socket.settimeout(wait_s)  # a stopped fork server must not hang the zygote

    def _serve(self, sock) -> None:
        statuses: dict[int, int] = {}  # reaped candidates' wait statuses, until the zygote asks

        def reap() -> None:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                if len(statuses) > 4096:
                    statuses.clear()
                statuses[pid] = status

        try:
            while True:
                command = sock.recv(1)
                if command == b"w":  # "w<pid>\n": the exit status of a candidate that has exited
                    line = b""
                    while not line.endswith(b"\n"):
                        chunk = sock.recv(16)
                        if not chunk:
                            return
                        line += chunk
                    pid = int(line)
                    status = statuses.pop(pid, None)
                    if status is None:
                        try:
                            status = os.waitpid(pid, 0)[1]
                        except ChildProcessError:
                            status = None
                    code = os.waitstatus_to_exitcode(status) if status is not None else None
                    sock.sendall(b"%s\n" % (b"none" if code is None else str(code).encode()))
                    continue
                if command != b"f":
                    return
                reap()
                job_r, job_w = os.pipe()
                req_r, req_w = os.pipe()
                resp_r, resp_w = os.pipe()
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                devnull = os.open(os.devnull, os.O_RDWR)
                pid = os.fork()
                if pid == 0:
                    _enter_child({0: devnull, 1: out_w, 2: err_w, 3: job_r, 4: req_r, 5: resp_w}, _candidate_main)
                socket.send_fds(sock, [str(pid).encode()], [job_w, req_w, resp_r, out_r, err_r])
                for fd in (job_r, job_w, req_r, req_w, resp_r, resp_w, out_r, out_w, err_r, err_w, devnull):
                    os.close(fd)
        finally:
            os._exit(0)

    def exit_status(self, pid: int) -> int | None:
        """How candidate ``pid`` (already exited) ended: its exit code, or -N for signal N; None if unknown."""
        try:
            self.socket.sendall(b"w%d\n" % pid)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = self.socket.recv(32)
                if not chunk:
                    return None
                reply += chunk
        except OSError:  # includes the socket timeout: a stopped fork server
            return None
        return None if reply.strip() == b"none" else int(reply)

    def spare(self) -> "Spare":
        self.socket.sendall(b"f")
        message, fds, _, _ = socket.recv_fds(self.socket, 32, 5)
        if not message or len(fds) != 5:
            raise RuntimeError("the fork server is gone")
        return Spare(int(message), *fds)


class Spare:
    """The zygote's ends of a waiting candidate process's pipes."""

    def __init__(self, pid: int, job_w: int, req_w: int, resp_r: int, out_r: int, err_r: int) -> None:
        self.pid, self.job_w, self.req_w, self.resp_r, self.out_r, self.err_r = pid, job_w, req_w, resp_r, out_r, err_r

    def start(self, message: dict) -> None:
        try:
            _write_all(self.job_w, (json.dumps(message) + "\n").encode("utf-8", "surrogatepass"))
        except OSError:
            pass  # the spare is gone (killed by a daemon of an earlier run): its pipes report EOF
        os.close(self.job_w)

    def close(self) -> None:
        for fd in (self.req_w, self.resp_r, self.out_r, self.err_r):
            try:
                os.close(fd)
            except OSError:
                pass


def _enter_child(fds: dict, body) -> None:
    """In a freshly forked child: own process group, only ``fds`` open, default signals, work dir."""
    code = 70
    try:
        os.setpgid(0, 0)
        _place_fds(fds)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.makedirs(WORK_DIR, mode=0o700, exist_ok=True)
        os.chdir(WORK_DIR)
        atexit._clear()
        body()
        code = 0
    except BaseException:  # inside the sandbox: report and leave; the verdict is made outside
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        os._exit(code)


# ---- tester (runs in the zygote) ---------------------------------------------------------------------
class CandidateError(Exception):
    """The candidate raised a non-builtin exception, exited, or sent something malformed."""


class _Channel:
    def __init__(self, request_fd: int, response_fd: int, candidate_pid: int) -> None:
        self.request_fd = request_fd
        self.reader = LineReader(response_fd)
        self.candidate_pid = candidate_pid
        self.deadline = float("inf")
        self.broken: str | None = None

    def receive(self):
        if self.broken:
            raise CandidateError(self.broken)
        try:
            line = self.reader.read(self.deadline)
        except TimeoutError:
            self.fail("timed out")
            os.kill(self.candidate_pid, signal.SIGKILL)
            raise CandidateError(self.broken) from None
        except ValueError as exc:
            self.fail(str(exc))
            raise CandidateError(self.broken) from None
        if line is None:
            self.fail("the candidate process exited")
            raise CandidateError(self.broken)
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            self.fail("the candidate process sent malformed data")
            raise CandidateError(self.broken) from None
        if type(message) is not dict:
            self.fail("the candidate process sent malformed data")
            raise CandidateError(self.broken)
        return message

    def fail(self, reason: str) -> None:
        self.broken = self.broken or reason

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.broken:
            raise CandidateError(self.broken)
        try:
            request = {"f": name, "a": [encode(a) for a in args], "k": {k: encode(v) for k, v in kwargs.items()}}
        except Unencodable as exc:
            raise TypeError(f"test argument cannot be sent to the candidate: {exc}") from None
        try:
            _send_before(self.request_fd, request, self.deadline)
        except TimeoutError:
            self.fail("timed out")
            os.kill(self.candidate_pid, signal.SIGKILL)
            raise CandidateError(self.broken) from None
        except OSError:
            self.fail("the candidate process exited")
            raise CandidateError(self.broken) from None
        reply = self.receive()
        if "x" in reply:
            name_, message = (reply["x"] + ["", ""])[:2] if type(reply["x"]) is list else ("", "")
            cls = getattr(builtins, str(name_), None)
            same = None
            if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
                try:
                    same = cls(str(message))
                except TypeError:  # exception classes with other constructors (UnicodeDecodeError)
                    pass
            raise same if same is not None else CandidateError(f"{name_}: {message}")
        try:
            result = decode(reply["r"])
            mutated = reply.get("m") or []
            for arg, new in zip(args, mutated):
                if new is not None:
                    _update_in_place(arg, decode(new))
        except (KeyError, ValueError, TypeError, ArithmeticError, RecursionError):
            self.fail("the candidate process sent malformed data")
            raise CandidateError(self.broken) from None
        return result


def _update_in_place(arg, new) -> None:
    if type(arg) is not type(new):
        return
    if type(arg) in (list, bytearray):
        arg[:] = new
    elif type(arg) in (dict, set):
        arg.clear()
        arg.update(new)


class _Remote(Reference):
    """Stands for one candidate function in the test namespace; calls cross as plain data."""

    __slots__ = ("_channel",)

    def __init__(self, name: str, channel: _Channel) -> None:
        super().__init__(name)
        self._channel = channel

    def __call__(self, *args, **kwargs):
        return self._channel.call(self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<candidate function {self.name}>"


#: Standard modules a candidate's ``import`` may make visible to the tests; the tester imports them
#: itself, from disk. Modules with side effects on import are never imported on the candidate's word.
_UNSAFE_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc", "webbrowser",
                   "__main__", "site", "sitecustomize", "usercustomize", "ensurepip", "venv", "lib2to3", "test",
                   "builtins", "sys", "gc", "ctypes", "importlib", "runpy", "code", "pdb", "trace", "atexit"}


def _bind_exports(namespace: dict, exports: list, channel: _Channel) -> None:
    """Bind the candidate's top-level names for the tests. Names of builtins are never bound (a
    candidate ``abs`` must not replace the one the tests call); functions become proxies."""
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    for entry in exports:
        if type(entry) is not list or len(entry) < 2 or type(entry[0]) is not str:
            raise ValueError("malformed export list")
        name, kind = entry[0], entry[1]
        if name.startswith("__") or hasattr(builtins, name) or not name.isidentifier():
            continue
        if kind == "function":
            namespace[name] = _Remote(name, channel)
        elif kind == "value" and len(entry) == 3:
            namespace[name] = decode(entry[2])
        elif kind == "opaque":
            namespace[name] = Reference(name)
        elif kind == "module" and len(entry) == 3 and type(entry[2]) is str:
            top = entry[2].split(".")[0]
            if top in stdlib and top not in _UNSAFE_MODULES:
                namespace[name] = importlib.import_module(entry[2])


def run_tests(job: dict, channel: _Channel, emit, deadline: float) -> None:
    """The tester: wait for the candidate to load, then run the test steps against proxies of its
    functions, emitting one report per test. Only dataset code and plain data run here."""
    limits = job["limits"]
    channel.deadline = min(deadline, time.monotonic() + limits["test_s"])
    try:
        ready = channel.receive()
    except CandidateError as exc:
        emit({"ev": "load_error", "err": str(exc)})
        return
    if type(ready.get("ready")) is not list:
        err = ready.get("load_error")
        emit({"ev": "load_error", "err": ": ".join(map(str, err)) if type(err) is list else "malformed"})
        return
    namespace = _fresh_namespace("__tests__")
    try:
        _bind_exports(namespace, ready["ready"], channel)
        if job.get("setup"):
            exec(compile(job["setup"], "setup.py", "exec"), namespace)
        entry_point = job.get("entry_point")
        if entry_point and any(type(e) is list and e[:2] == [entry_point, "function"] for e in ready["ready"]):
            namespace[entry_point] = _Remote(entry_point, channel)
    except Exception as exc:
        emit({"ev": "load_error", "err": f"{type(exc).__name__}: {exc}"[:300]})
        return
    test_index = 0
    for step, (source, is_test) in enumerate(job["steps"]):
        started = time.monotonic()
        channel.deadline = min(deadline, started + limits["test_s"])
        try:
            exec(compile(source, f"<test step {step}>", "exec"), namespace)
            ok, err = True, None
        except Exception as exc:
            ok, err = False, f"{type(exc).__name__}: {exc}"[:300]
        if channel.broken and ok:
            ok, err = False, f"CandidateError: {channel.broken}"
        if is_test:
            emit({"ev": "test", "i": test_index, "ok": ok, "err": err, "s": round(time.monotonic() - started, 6)})
            test_index += 1
        elif not ok:
            emit({"ev": "setup_error", "step": step, "err": err})
            return
        if not ok and job.get("stop_first", True):
            return


# ---- one job -------------------------------------------------------------------------------------------------
def _stat_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "gone"


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _descends_from(pid: int, root: int) -> bool:
    for _ in range(4096):
        pid = _parent(pid)
        if pid == root:
            return True
        if pid <= 1:
            return False
    return False


def end_all_processes(keep: set, root: int | None = None) -> bool:
    """SIGKILL every process of the sandbox except ``keep`` (daemons and fork bombs included),
    until none is left; False if that did not converge. With ``root``, only its descendants
    (standalone mode, where ``root`` is a child subreaper so orphans stay in its subtree)."""
    for round_ in range(200):
        victims = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in keep or _stat_state(int(name)) in ("Z", "X", "gone"):
                continue
            if root is None or _descends_from(int(name), root):
                victims.append(int(name))
        if not victims:
            _reap()
            return True
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap()
        if round_:
            time.sleep(0.001)
    return False


class Runner:
    """Runs jobs one at a time; the zygote's loop and the standalone entry point both use it."""

    def __init__(self, as_init: bool, fork_wait_s: float) -> None:
        self.as_init = as_init
        self.forks = ForkServer(fork_wait_s)
        self.spare = self.forks.spare()

    def _candidate(self) -> Spare:
        spare, self.spare = self.spare, None
        return spare if spare is not None else self.forks.spare()

    def cleanup(self) -> bool:
        """End every process but the zygote and the fork server; a fresh spare for the next job."""
        if self.spare is not None:
            self.spare.close()
            self.spare = None
        keep = {os.getpid(), self.forks.pid}
        done = end_all_processes(keep) if self.as_init else end_all_processes(keep, root=os.getpid())
        try:
            os.kill(self.forks.pid, signal.SIGCONT)  # in case a candidate stopped it
        except OSError:
            pass
        return done

    def prepare_next(self) -> None:
        self.spare = self.forks.spare()

    def run_assert(self, job: dict, emit) -> dict:
        """Start the candidate, run the tests here against it, emit each report; the end record."""
        limits = job["limits"]
        started = time.monotonic()
        deadline = started + limits["run_s"]
        candidate = self._candidate()
        candidate.start({"mode": "assert", "code": job["code"], "setup": job.get("setup", ""), "limits": limits})
        for fd in (candidate.out_r, candidate.err_r):
            os.close(fd)
        candidate.out_r = candidate.err_r = -1
        channel = _Channel(candidate.req_w, candidate.resp_r, candidate.pid)
        reason = "completed"
        try:
            run_tests(job, channel, emit, deadline)
            if channel.broken == "timed out" and time.monotonic() >= deadline:
                reason = "run_timeout"
        finally:
            candidate.close()
        return {"ev": "end", "reason": reason, "s": round(time.monotonic() - started, 6)}

    def run_stdio_case(self, job: dict, stdin_text: str) -> dict:
        """Run the program once on ``stdin_text``; its stdout (capped) and how it ended."""
        limits = job["limits"]
        started = time.monotonic()
        candidate = self._candidate()
        pidfd = os.pidfd_open(candidate.pid)
        candidate.start({"mode": "stdio", "code": job["code"], "stdin": stdin_text, "limits": limits})
        os.close(candidate.req_w)
        os.close(candidate.resp_r)
        candidate.req_w = candidate.resp_r = -1
        deadline = started + limits["test_s"]
        stdout, stderr = bytearray(), bytearray()
        open_fds = {candidate.out_r: stdout, candidate.err_r: stderr}
        timed_out = over_limit = exited = False
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select(list(open_fds) + ([] if exited else [pidfd]), [], [], remaining)
            for fd in ready:
                if fd == pidfd:
                    exited = True
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    del open_fds[fd]
                    continue
                buffer = open_fds[fd]
                buffer += chunk
                if fd == candidate.out_r and len(buffer) > limits["output_bytes"]:
                    over_limit = True
                if fd == candidate.err_r and len(buffer) > 8192:
                    del buffer[:-4096]
            if over_limit:
                break
            if exited and open_fds:
                _drain(open_fds)  # daemons may hold the pipes open: take what is there, then stop
                break
        if not exited and not timed_out and not over_limit:  # pipes closed first: wait for the exit itself
            exited = bool(select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0])
            timed_out = not exited
        os.close(pidfd)
        candidate.close()
        exit_code = self.forks.exit_status(candidate.pid) if exited and not timed_out and not over_limit else None
        return {"stdout": bytes(stdout[:limits["output_bytes"]]).decode("utf-8", "replace"),
                "stderr_tail": bytes(stderr[-2000:]).decode("utf-8", "replace"),
                "exit": exit_code, "timed_out": timed_out, "output_limit": over_limit,
                "s": round(time.monotonic() - started, 6)}


def _drain(open_fds: dict) -> None:
    for fd, buffer in open_fds.items():
        os.set_blocking(fd, False)
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                buffer += chunk
        except BlockingIOError:
            pass


def _mount_points() -> frozenset:
    """Mount points inside the writable directories and their parents (a Python installed under
    ``/tmp`` is bound there read-only): the wipe keeps these and empties everything around them."""
    kept = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            points = [line.split()[4].replace("\\040", " ") for line in handle if len(line.split()) > 4]
    except OSError:
        return frozenset()
    for point in points:
        for directory in WIPE_DIRS:
            if point.startswith(directory + "/"):
                while point != directory:
                    kept.add(point)
                    point = os.path.dirname(point)
    return frozenset(kept)


KEPT_MOUNTS: frozenset = frozenset()


def _wipe() -> str | None:
    """Empty the writable directories (whatever modes and depths a candidate left behind), keeping
    only ``KEPT_MOUNTS``; what could not be removed, or None."""
    try:
        pending = [d for d in WIPE_DIRS if os.path.isdir(d)]
        while pending:
            directory = pending.pop()
            for entry in os.listdir(directory):
                path = os.path.join(directory, entry)
                if path in KEPT_MOUNTS:
                    if not os.path.ismount(path):
                        pending.append(path)
                    continue
                _remove(path)
            left = [e for e in os.listdir(directory) if os.path.join(directory, e) not in KEPT_MOUNTS]
            if left:
                return f"cannot remove {os.path.join(directory, left[0])}"
    except OSError as exc:
        return f"cannot wipe: {exc}"
    return None


def _remove(path: str) -> None:
    """Delete ``path`` without following symlinks, iteratively (no recursion limit to hit)."""
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    stack = [path]
    while stack:
        current = stack[-1]
        os.chmod(current, 0o700)
        subdirs = []
        for entry in os.listdir(current):
            child = os.path.join(current, entry)
            if os.path.isdir(child) and not os.path.islink(child):
                subdirs.append(child)
            else:
                os.unlink(child)
        if subdirs:
            stack.extend(subdirs)
        else:
            os.rmdir(current)
            stack.pop()


# ---- entry points ---------------------------------------------------------------------------------------------
def _harden() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)


def _drop_privileges(uid: int) -> None:
    if os.getuid() == 0 and uid:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if os.getuid() == 0:
        raise SystemExit("refusing to run candidate code as root")


def _capabilities() -> str:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return line.split()[1]
    return "unknown"


def serve(uid: int, fork_wait_s: float) -> None:
    """Zygote main loop: one JSON job per line on stdin, JSON events on stdout. ``fork_wait_s``
    bounds the wait for a spare candidate process (``Timeouts.sandbox_start_s``)."""
    _drop_privileges(uid)
    _harden()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    out_fd, in_fd, err_fd = os.dup(1), os.dup(0), os.dup(2)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.makedirs(WORK_DIR, mode=0o700, exist_ok=True)
    global KEPT_MOUNTS
    KEPT_MOUNTS = _mount_points()
    try:
        runner = Runner(os.getpid() == 1, fork_wait_s)
        _serve_jobs(LineReader(in_fd), out_fd, runner)
    except Exception:  # the zygote's own failure: say why on the sandbox's stderr, then exit
        _write_all(err_fd, traceback.format_exc().encode())
        raise SystemExit(3) from None


def _serve_jobs(requests: LineReader, out_fd: int, runner: Runner) -> None:
    def emit(message: dict) -> None:
        _send(out_fd, message)

    emit({"ev": "ready", "uid": os.getuid(), "pid": os.getpid(), "cap_eff": _capabilities(),
          "as_init": runner.as_init})
    while True:
        line = requests.read(float("inf"))
        if line is None:
            return
        job = json.loads(line)
        if job["kind"] == "assert":
            end = runner.run_assert(job, emit)
        else:
            end = {"ev": "end", "reason": "completed"}
            for index, stdin_text in enumerate(job["inputs"]):
                if index:
                    runner.cleanup()
                    runner.prepare_next()
                emit({"ev": "case", "i": index, **runner.run_stdio_case(job, stdin_text)})
                answer = requests.read(float("inf"))
                if answer is None:
                    return
                if not json.loads(answer).get("continue"):
                    break
        emit(end)  # the verdict is complete; what is left of the run cannot change it
        problem = "processes survived SIGKILL" if not runner.cleanup() else _wipe()
        if problem:  # cannot get clean: say why, exit, and the scorer starts a fresh sandbox
            emit({"ev": "exiting", "reason": problem})
            return
        runner.prepare_next()


def run_standalone(fork_wait_s: float) -> None:
    """One assert job read as JSON from stdin; events on stdout, each line prefixed with the job's
    ``nonce`` (used where another service provides the isolation, e.g. SandboxFusion). The nonce
    arrives on stdin, is read after the spare candidate process exists, and lives only in
    non-dumpable processes."""
    global WORK_DIR, WIPE_DIRS
    WORK_DIR = tempfile.mkdtemp(prefix="mdreward-")
    WIPE_DIRS = ()
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    out_fd = os.dup(1)
    runner = Runner(False, fork_wait_s)
    job = json.loads(sys.stdin.read())
    prefix = str(job.pop("nonce")).encode() + b" "

    def emit(message: dict) -> None:
        _write_all(out_fd, prefix + json.dumps(message).encode() + b"\n")

    end = runner.run_assert(job, emit)
    runner.cleanup()
    end_all_processes({os.getpid()}, root=os.getpid())
    emit(end)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    os._exit(0)
