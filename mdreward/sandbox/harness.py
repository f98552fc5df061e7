"""The program that runs INSIDE the sandbox (standard library only; it is shipped as source text).

Processes of one sandbox, all under its unprivileged uid and all non-dumpable (no ptrace, no
``/proc/<pid>/mem`` across them):

* the **zygote** (``serve``): PID 1 of the sandbox's PID namespace, so nothing inside can signal
  it except with the signals it handles (only SIGALRM, its test timer, which ignores signals
  outside an armed step). It reads jobs from the trusted scorer, runs the dataset's test code
  (assert mode) as a program against proxies of the candidate's objects, relays plain-data reports,
  and after each job kills every other process of the namespace (daemons included) and wipes the
  writable directories.
* the **fork server**: a copy of the zygote taken before any job, so the candidate processes it
  forks never inherit memory that held tests (the zygote's memory does).
* a **candidate** process per run: gets only its code, limits and stdin from the zygote. In stdio
  mode it is the program. In assert mode it serves the tests' operations on its objects over a
  pipe; values cross as tagged JSON (``Encoder``/``Decoder``), every other object stays in its
  process behind a handle whose proxy compares by identity, so no live object (an always-equal
  object, a patched builtin, a skip exception) ever reaches the tests.

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
import operator
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
import types
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
MAX_DEPTH = 200
MAX_MESSAGE_BYTES = 64 << 20
WORK_DIR = "/tmp/work"
WIPE_DIRS: tuple[str, ...] = ("/tmp", "/dev/shm")
PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing",
           "fractions", "decimal", "statistics", "random", "copy", "operator", "hashlib", "datetime",
           "array", "cmath", "io", "textwrap", "unicodedata", "dataclasses", "enum", "struct")

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


# ---- values across the candidate boundary ----------------------------------------------------------
class Unencodable(TypeError):
    pass


class DecodeLimit(ValueError):
    """A value from the candidate is too large or too costly to rebuild (the candidate's failure)."""


_PLAIN_BASES = (int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset)
_MUTABLE = (list, dict, set, bytearray, collections.deque)  # identity and in-place changes are kept
_SMALL_INT = 1 << 62
MAX_INT_HEX_DIGITS = 1 << 18  # ints up to 2**(2**20): 315,653 decimal digits
MAX_FRACTION_BITS = 1 << 16
MAX_DECIMAL_EXPONENT = 100_000
MAX_BATCH = 1024  # items of a candidate iterator fetched per round trip, at most
MAX_SAME_HASH = 16  # more elements with one hash value than this make a set or dict quadratic to build
MAX_EXPORT_NODES = 50_000  # a larger module-level value of the candidate is exported as a handle
_VIEW_TAGS = {type({}.keys()): "Dk", type({}.values()): "Dv", type({}.items()): "Di"}


def _is_namedtuple(value) -> bool:
    fields = getattr(type(value), "_fields", None)
    return isinstance(value, tuple) and type(fields) is tuple and all(type(f) is str for f in fields)


class Encoder:
    """Tagged JSON of one message. Exact builtin types cross as they are; ints of any size (hex
    beyond 62 bits); ``range``, dict views, namedtuples and a few standard types (Counter,
    OrderedDict, deque, Fraction, Decimal) are rebuilt from plain data on the other side;
    subclasses of builtin types (numpy scalars, an int with a rigged ``__eq__``) are reduced to
    their builtin value through the base type's own methods. A mutable container met again is a
    reference (``["@", n]``, numbered in pre-order), so aliasing survives; one that was the
    ``origins`` container ``k`` of the request carries ``k`` (the other side updates its own
    object in place). Anything else goes to ``export`` (a handle) or cannot cross."""

    def __init__(self, export=None, origins: dict | None = None, budget: int | None = None) -> None:
        self.export = export
        self.origins = origins or {}
        self.budget = budget  # nodes this message may have, if bounded
        self.numbers: dict[int, int] = {}
        self.containers: list = []  # numbered containers, in order (keeps them alive: ids stay unique)

    def __call__(self, value, depth: int = 0):
        if depth > MAX_DEPTH:
            raise Unencodable("value is nested too deeply")
        if self.budget is not None:
            self.budget -= 1
            if self.budget < 0:
                raise Unencodable("value is too large")
        t = type(value)
        if value is None:
            return ["N"]
        if t is bool:
            return ["B", value]
        if t is int:
            return ["I", value] if -_SMALL_INT < value < _SMALL_INT else ["Ih", format(value, "x")]
        if t is float:
            return ["F", value]
        if t is str:
            return ["S", value]
        if t is bytes:
            return ["Y", value.decode("latin-1")]
        if t is tuple:
            return ["T", [self(v, depth + 1) for v in value]]
        if t is frozenset:
            return ["Z", [self(v, depth + 1) for v in value]]
        if t is complex:
            return ["C", value.real, value.imag]
        if t in _MUTABLE or t is collections.Counter or t is collections.OrderedDict:
            return self._container(value, t, depth)
        if t is range:
            return ["Rg", self(value.start), self(value.stop), self(value.step)]
        if t in _VIEW_TAGS:
            return [_VIEW_TAGS[t], self._container(dict(value.mapping), dict, depth)]
        if t is fractions.Fraction:
            return ["Fr", self(value.numerator), self(value.denominator)]
        if t is decimal.Decimal:
            return ["Dc", str(value)]
        if _is_namedtuple(value):
            return ["Nt", t.__name__, list(t._fields), [self(v, depth + 1) for v in tuple.__iter__(value)]]
        module = getattr(t, "__module__", "") or ""
        if isinstance(module, str) and module.split(".")[0] == "numpy" and hasattr(value, "tolist"):
            return self(value.tolist(), depth + 1)
        if self.export is None or not callable(value) and not _is_iterator(value):
            for base in _PLAIN_BASES:
                if isinstance(value, base):
                    return self(_as_base(value, base), depth + 1)
        if self.export is not None:
            return self.export(value)
        raise Unencodable(f"a value of type {t.__name__} cannot cross the sandbox boundary (plain values only)")

    def _container(self, value, t, depth):
        key = id(value)
        if key in self.numbers:
            return ["@", self.numbers[key]]
        self.numbers[key] = len(self.containers)
        self.containers.append(value)
        if t is bytearray:
            node = ["A", bytes(value).decode("latin-1")]
        elif t in (dict, collections.Counter, collections.OrderedDict):
            tag = {dict: "D", collections.Counter: "Cn", collections.OrderedDict: "Od"}[t]
            node = [tag, [[self(k, depth + 1), self(v, depth + 1)] for k, v in dict.items(value)]]
        else:
            node = [{list: "L", set: "E", collections.deque: "Dq"}[t], [self(v, depth + 1) for v in value]]
        if key in self.origins:
            node.append(self.origins[key])
        return node


def _is_iterator(value) -> bool:
    return hasattr(type(value), "__next__") and hasattr(type(value), "__iter__")


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


_namedtuple_classes: dict = {}


class Decoder:
    """Inverse of ``Encoder``; rejects anything malformed, and (``bounded``, on the tests' side)
    anything too costly to rebuild: ints over ``MAX_INT_HEX_DIGITS`` hex digits, fractions over
    ``MAX_FRACTION_BITS``, decimals with huge exponents, sets and dicts with more than
    ``MAX_SAME_HASH`` keys of one hash value. ``resolve`` turns handle nodes (``H``, ``Cb``) into
    objects; a container node that names an ``originals`` object is that object, updated in place by
    ``apply()`` once the whole message decoded."""

    def __init__(self, resolve=None, originals: list | None = None, bounded: bool = True) -> None:
        self.resolve = resolve
        self.originals = originals or []
        self.bounded = bounded
        self.table: list = []  # containers in pre-order (the candidate maps them back to numbers)
        self.updates: list = []

    def apply(self) -> None:
        for target, content in self.updates:
            if type(target) in (list, bytearray):
                target[:] = content
            elif type(target) is collections.deque:
                target.clear()
                target.extend(content)
            else:
                target.clear()
                target.update(content)

    def __call__(self, node, depth: int = 0):
        if depth > MAX_DEPTH or type(node) is not list or not node or type(node[0]) is not str:
            raise ValueError("malformed value")
        tag = node[0]
        if tag == "N" and len(node) == 1:
            return None
        if tag in ("L", "D", "E", "Dq", "A", "Cn", "Od") and len(node) in (2, 3):
            return self._container(node, depth)
        if tag == "C" and len(node) == 3 and all(type(x) in (int, float) for x in node[1:]):
            return complex(node[1], node[2])
        if tag == "Rg" and len(node) == 4:
            start, stop, step = (self._int(x) for x in node[1:])
            if step == 0:
                raise ValueError("malformed range")
            return range(start, stop, step)
        if tag == "Fr" and len(node) == 3:
            numerator, denominator = self._int(node[1]), self._int(node[2])
            if self.bounded and max(numerator.bit_length(), denominator.bit_length()) > MAX_FRACTION_BITS:
                raise DecodeLimit("a Fraction too large to rebuild")
            if denominator == 0:
                raise ValueError("malformed Fraction")
            return fractions.Fraction(numerator, denominator)
        if tag == "Nt" and len(node) == 4:
            return self._namedtuple(node, depth)
        if tag in ("H", "Cb") and self.resolve is not None:
            return self.resolve(node)
        if len(node) == 2:
            v = node[1]
            if tag == "B" and type(v) is bool:
                return v
            if tag in ("I", "Ih"):
                return self._int(node)
            if tag == "F" and type(v) in (int, float):
                return float(v)
            if tag == "S" and type(v) is str:
                return v
            if tag == "Y" and type(v) is str:
                return v.encode("latin-1")
            if tag in ("T", "Z") and type(v) is list:
                items = [self(x, depth + 1) for x in v]
                return tuple(items) if tag == "T" else frozenset(self._hashable(items))
            if tag == "Dc" and type(v) is str and len(v) < 10_000:
                return self._decimal(v)
            if tag in ("Dk", "Dv", "Di"):
                mapping = self(v, depth + 1)
                if type(mapping) is not dict:
                    raise ValueError("malformed dict view")
                return {"Dk": dict.keys, "Dv": dict.values, "Di": dict.items}[tag](mapping)
            if tag == "@" and type(v) is int and 0 <= v < len(self.table):
                return self.table[v]
        raise ValueError("malformed value")

    def _int(self, node) -> int:
        if type(node) is list and len(node) == 2:
            if node[0] == "I" and type(node[1]) is int:
                return node[1]
            if node[0] == "Ih" and type(node[1]) is str:
                digits = node[1]
                if self.bounded and len(digits) > MAX_INT_HEX_DIGITS:
                    raise DecodeLimit("an int too large to rebuild")
                return int(digits, 16)
        raise ValueError("malformed int")

    def _decimal(self, text: str) -> decimal.Decimal:
        try:
            value = decimal.Decimal(text)
        except (ArithmeticError, ValueError):
            raise ValueError("malformed Decimal") from None
        if self.bounded and value.is_finite() and abs(value.adjusted()) > MAX_DECIMAL_EXPONENT:
            raise DecodeLimit("a Decimal with an exponent too large to use")
        return value

    def _hashable(self, items: list) -> list:
        if self.bounded and len(items) > MAX_SAME_HASH:
            try:
                same = collections.Counter(map(hash, items)).most_common(1)[0][1]
            except TypeError:
                raise ValueError("unhashable element") from None
            if same > MAX_SAME_HASH:
                raise DecodeLimit(f"{same} elements with one hash value (quadratic to rebuild)")
        return items

    def _container(self, node, depth):
        tag, items = node[0], node[1]
        origin = node[2] if len(node) == 3 else None
        kind = {"L": list, "D": dict, "E": set, "Dq": collections.deque, "A": bytearray, "Cn": collections.Counter,
                "Od": collections.OrderedDict}[tag]
        if origin is not None and (type(origin) is not int or not 0 <= origin < len(self.originals)):
            raise ValueError("malformed origin")
        target = self.originals[origin] if origin is not None and type(self.originals[origin]) is kind else None
        if tag == "A":
            if type(items) is not str:
                raise ValueError("malformed bytearray")
            content = bytearray(items.encode("latin-1"))
            self.table.append(target if target is not None else content)
        else:
            if type(items) is not list:
                raise ValueError("malformed container")
            content = kind()
            self.table.append(target if target is not None else content)  # registered first: cycles resolve
            if kind in (dict, collections.Counter, collections.OrderedDict):
                pairs = []
                for pair in items:
                    if type(pair) is not list or len(pair) != 2:
                        raise ValueError("malformed mapping")
                    pairs.append((self(pair[0], depth + 1), self(pair[1], depth + 1)))
                self._hashable([k for k, _ in pairs])
                for k, v in pairs:
                    content[k] = v
            elif kind is set:
                content.update(self._hashable([self(x, depth + 1) for x in items]))
            else:
                content.extend(self(x, depth + 1) for x in items)
        if target is None:
            return content
        self.updates.append((target, content))
        return target

    def _namedtuple(self, node, depth):
        _, name, fields, values = node
        if (type(name) is not str or type(fields) is not list or type(values) is not list or len(fields) != len(values)
                or len(fields) > 255 or not all(type(f) is str and len(f) < 100 for f in fields) or len(name) > 100):
            raise ValueError("malformed namedtuple")
        key = (name, tuple(fields))
        cls = _namedtuple_classes.get(key)
        if cls is None:
            try:
                cls = collections.namedtuple(name, fields)
            except (ValueError, TypeError, SyntaxError):
                raise ValueError("malformed namedtuple") from None
            if len(_namedtuple_classes) < 1000:
                _namedtuple_classes[key] = cls
        return cls(*(self(v, depth + 1) for v in values))


def encode(value):
    """A plain value as a message node (no handles)."""
    return Encoder()(value)


def decode(node):
    """A message node back to a plain value (bounded; no handles)."""
    decoder = Decoder()
    value = decoder(node)
    decoder.apply()
    return value


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
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False, errors="surrogateescape")  # type: ignore[misc]
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = open(2, "w", closefd=False)  # type: ignore[misc]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return 0.0


class TestClock:
    """The time limit of one test: ``test_s`` of the candidate's own CPU time, or ``test_s`` times
    ``wall_factor`` of wall time, whichever comes first. On a busy machine a correct solution that
    gets little CPU is not failed for the wall time it waited."""

    __test__ = False

    def __init__(self, pid: int, limits: dict, cap: float = float("inf")) -> None:
        self.pid = pid
        self.test_s = limits["test_s"]
        self.started = time.monotonic()
        self.cpu_start = cpu_seconds(pid)
        self.wall_end = min(cap, self.started + self.test_s * max(1.0, limits.get("wall_factor", 1.0)))

    def next_deadline(self) -> float | None:
        """When to look again, or None if the test is out of time."""
        now = time.monotonic()
        left = self.test_s - (cpu_seconds(self.pid) - self.cpu_start)
        if left <= 0 or now >= self.wall_end:
            return None
        return min(self.wall_end, now + max(0.02, left))


def _fresh_namespace(name: str) -> dict:
    return {"__name__": name, "__builtins__": builtins, "__file__": f"{WORK_DIR}/solution.py"}


# ---- candidate process ---------------------------------------------------------------------------------
_OPS: dict[str, Any] = {"len": len, "str": str, "repr": repr, "bool": bool, "iter": iter, "getitem": operator.getitem,
        "setitem": operator.setitem, "delitem": operator.delitem, "contains": operator.contains,
        "get": getattr, "set": setattr}


class _CandidateSide:
    """Serves the tests' requests on the candidate's objects: calls, iteration and attribute access,
    with objects that cannot cross kept here behind numbered handles, and the tests' own functions
    (passed as arguments) called back over the same pipes."""

    def __init__(self, namespace: dict, request_fd: int, response_fd: int) -> None:
        self.namespace = namespace
        self.reader = LineReader(request_fd)
        self.response_fd = response_fd
        self.handles: dict[int, Any] = {}
        self.handle_of: dict[int, int] = {}

    def export(self, value) -> list:
        key = id(value)
        if key not in self.handle_of:
            self.handle_of[key] = len(self.handles)
            self.handles[len(self.handles)] = value
        return ["H", self.handle_of[key], "it" if _is_iterator(value) else "obj"]

    def resolve(self, node):
        if node[0] == "H" and len(node) >= 2 and node[1] in self.handles:
            return self.handles[node[1]]
        if node[0] == "Cb" and len(node) == 2 and type(node[1]) is int:
            return _Callback(self, node[1])
        raise ValueError("malformed handle")

    def encoder(self, origins: dict | None = None) -> Encoder:
        return Encoder(self.export, origins)

    def exports(self) -> list:
        out = []
        for name, value in list(self.namespace.items()):
            if name.startswith("__"):
                continue
            if type(value).__name__ == "module" and isinstance(getattr(value, "__name__", None), str):
                out.append([name, ["M", value.__name__]])
            else:
                try:
                    out.append([name, Encoder(self.export, budget=MAX_EXPORT_NODES)(value)])
                except Unencodable:  # too large or too deep to send: the tests get a handle
                    out.append([name, self.export(value)])
        return out

    def serve(self) -> None:
        while True:
            request = self.next_message()
            if request is None:
                return
            self.answer(request)

    def next_message(self):
        line = self.reader.read(float("inf"))
        return None if line is None else json.loads(line)

    def answer(self, request: dict) -> None:
        try:
            subject = self.handles[request["h"]]
            decoder = Decoder(self.resolve, bounded=False)
            args, kwargs = decoder(request["a"])
            op = request["op"]
            end: list[Any] | None = None
            if op == "next":  # up to args[0] items; how the iterator ended travels beside them
                result = []
                for _ in range(min(MAX_BATCH, int(args[0]))):
                    try:
                        result.append(next(subject))
                    except StopIteration:
                        end = ["stop"]
                        break
                    except BaseException as exc:  # inside the sandbox: the candidate's exception is data
                        end = ["x", _exception_report(exc)]
                        break
            elif op == "call":
                result = subject(*args, **kwargs)
            else:
                result = _OPS[op](subject, *args)
            # the result, and every container the tests sent (as they are now: changes made in place go back)
            origins = {id(obj): number for number, obj in enumerate(decoder.table)}
            reply = {"r": self.encoder(origins)((result, tuple(decoder.table))), "end": end}
        except BaseException as exc:  # inside the sandbox: any exception of the candidate is data
            reply = {"x": _exception_report(exc)}
        _send(self.response_fd, reply)


class _Callback:
    """A function of the tests, passed to the candidate: calling it asks the tests' side to run it."""

    def __init__(self, side: _CandidateSide, number: int) -> None:
        self._side, self._number = side, number

    def __call__(self, *args, **kwargs):
        side = self._side
        _send(side.response_fd, {"cb": self._number, "a": side.encoder()((args, kwargs))})
        while True:
            message = side.next_message()
            if message is None:
                raise SystemExit(0)
            if "cr" in message:
                return Decoder(side.resolve, bounded=False)(message["cr"])
            if "cx" in message:
                name, text = (list(message["cx"]) + ["", ""])[:2]
                cls = getattr(builtins, str(name), None)
                if isinstance(cls, type) and issubclass(cls, Exception):
                    raise cls(str(text))
                raise RuntimeError(f"{name}: {text}")
            side.answer(message)  # the tests' function calls back into the candidate


def _exception_report(exc: BaseException) -> list:
    return [type(exc).__name__, str(exc)[:300]]


def _serve_calls(job: dict, request_fd: int, response_fd: int) -> None:
    """Assert mode: load setup + candidate code, then serve the tests' requests until EOF. The
    setup runs first so the code can use its helpers; where the setup needs the candidate's own
    names (MBPP 367 builds trees of the candidate's class), its failure here is ignored: it runs
    again, for real, on the tests' side."""
    namespace = _fresh_namespace("solution")
    if job.get("setup"):
        try:
            exec(compile(job["setup"], "setup.py", "exec"), namespace)
        except Exception:  # inside the sandbox: see the docstring
            pass
    side = _CandidateSide(namespace, request_fd, response_fd)
    try:
        exec(compile(job["code"], "solution.py", "exec"), namespace)
        _send(response_fd, {"ready": side.exports()})
    except BaseException as exc:  # inside the sandbox: the candidate's failure is reported as data
        _send(response_fd, {"load_error": _exception_report(exc)})
        return
    side.serve()


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
    """The candidate raised a non-builtin or a control-flow exception, exited, or sent something
    malformed or too costly to rebuild."""


class StepTimeout(BaseException):
    """A test step ran past its time (raised by a timer; not an ``Exception``, so a test's own
    ``except Exception`` does not swallow it)."""


#: Exceptions that mean "stop" to the code that catches them: from the candidate they would end the
#: tests' loops early (``all(map(f, xs))``), so they arrive as ``CandidateError`` (as PEP 479 does).
_CONTROL_FLOW = ("StopIteration", "StopAsyncIteration")


class _Channel:
    """The tests' side of the pipes to one candidate process."""

    def __init__(self, request_fd: int, response_fd: int, candidate_pid: int, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.request_fd = request_fd
        self.reader = LineReader(response_fd, limit)
        self.candidate_pid = candidate_pid
        self.deadline = float("inf")
        self.clock: TestClock | None = None
        self.broken: str | None = None
        self.proxies: dict[int, "_RemoteHandle"] = {}
        self.callbacks: list = []
        self.callback_of: dict[int, int] = {}

    def fail(self, reason: str) -> str:
        self.broken = self.broken or reason
        return self.broken

    def _kill(self, reason: str) -> CandidateError:
        self.fail(reason)
        try:
            os.kill(self.candidate_pid, signal.SIGKILL)
        except OSError:
            pass
        return CandidateError(self.broken)

    def receive(self) -> dict:
        if self.broken:
            raise CandidateError(self.broken)
        while True:
            try:
                line = self.reader.read(self.deadline)
                break
            except TimeoutError:
                later = self.clock.next_deadline() if self.clock is not None else None
                if later is None:
                    raise self._kill("timed out") from None
                self.deadline = later
            except ValueError as exc:
                raise self._kill(str(exc)) from None
        if line is None:
            self.fail("the candidate process exited")
            raise CandidateError(self.broken)
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise self._kill("the candidate process sent malformed data") from None
        if type(message) is not dict:
            raise self._kill("the candidate process sent malformed data")
        return message

    def _send(self, message: dict) -> None:
        try:
            _send_before(self.request_fd, message, self.deadline)
        except TimeoutError:
            raise self._kill("timed out") from None
        except OSError:
            self.fail("the candidate process exited")
            raise CandidateError(self.broken) from None

    # values
    def export(self, value) -> list:
        if isinstance(value, _RemoteHandle) and object.__getattribute__(value, "_channel") is self:
            return ["H", object.__getattribute__(value, "_number")]
        if callable(value):
            key = id(value)
            if key not in self.callback_of:
                self.callback_of[key] = len(self.callbacks)
                self.callbacks.append(value)
            return ["Cb", self.callback_of[key]]
        raise Unencodable(f"a value of type {type(value).__name__} cannot be sent to the candidate")

    def resolve(self, node):
        if node[0] == "H" and len(node) == 3 and type(node[1]) is int and node[1] >= 0 and node[2] in ("it", "obj"):
            proxy = self.proxies.get(node[1])
            if proxy is None:
                proxy = (_RemoteIterator if node[2] == "it" else _RemoteObject)(self, node[1])
                self.proxies[node[1]] = proxy
            return proxy
        if node[0] == "Cb" and len(node) == 2 and type(node[1]) is int and 0 <= node[1] < len(self.callbacks):
            return self.callbacks[node[1]]
        raise ValueError("malformed handle")

    def decode(self, node, originals: list | None = None):
        """A value from the candidate; a malformed or too costly one breaks the channel."""
        decoder = Decoder(self.resolve, originals)
        try:
            value = decoder(node)
            decoder.apply()
        except (ValueError, TypeError, ArithmeticError, RecursionError, MemoryError) as exc:
            reason = str(exc) if isinstance(exc, DecodeLimit) else "malformed data"
            raise self._kill(f"the candidate process sent {reason}") from None
        return value

    def request(self, op: str, target, args: tuple = (), kwargs: dict | None = None):
        """One operation on a candidate object; callbacks to the tests' functions are served while waiting."""
        if self.broken:
            raise CandidateError(self.broken)
        encoder = Encoder(self.export)
        try:
            payload = encoder((tuple(args), dict(kwargs or {})))
        except Unencodable as exc:
            raise TypeError(f"test argument cannot be sent to the candidate: {exc}") from None
        try:
            self._send({"op": op, "h": target, "a": payload})
            while True:
                reply = self.receive()
                if "cb" not in reply:
                    break
                self._run_callback(reply)
        except StepTimeout:
            self._kill("timed out")
            raise
        if "x" in reply:
            raise _candidate_exception(reply["x"])
        if "r" not in reply:
            raise self._kill("the candidate process sent malformed data")
        result = self.decode(reply["r"], encoder.containers)
        if type(result) is not tuple or len(result) != 2:
            raise self._kill("the candidate process sent malformed data")
        if op == "next":
            end = reply.get("end")
            if type(result[0]) is not list or not (end is None or end == ["stop"] or type(end) is list and len(end) == 2
                                                   and end[0] == "x"):
                raise self._kill("the candidate process sent malformed data")
            return result[0], end
        return result[0]

    def _run_callback(self, message: dict) -> None:
        number = message.get("cb")
        if type(number) is not int or not 0 <= number < len(self.callbacks):
            raise self._kill("the candidate process sent malformed data")
        call = self.decode(message.get("a"))
        if type(call) is not tuple or len(call) != 2 or type(call[1]) is not dict:
            raise self._kill("the candidate process sent malformed data")
        try:
            result = self.callbacks[number](*call[0], **call[1])
            answer = {"cr": Encoder(self.export)(result)}
        except Exception as exc:  # the tests' own function failed: the candidate sees the exception
            answer = {"cx": _exception_report(exc)}
        self._send(answer)


def _candidate_exception(report) -> Exception:
    name, message = (list(report) + ["", ""])[:2] if type(report) is list else ("", "")
    cls = getattr(builtins, str(name), None)
    if (isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins"
            and name not in _CONTROL_FLOW):
        try:
            return cls(str(message))
        except TypeError:  # exception classes with other constructors (UnicodeDecodeError)
            pass
    return CandidateError(f"{name}: {message}")


class _RemoteHandle:
    """Stands for one object that lives in the candidate's process. Equality and hashing are by
    identity here: the candidate's ``__eq__`` never sees the tests' expected values."""

    __slots__ = ("_channel", "_number")
    _channel: _Channel
    _number: int

    def __init__(self, channel: _Channel, number: int) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_number", number)

    def _op(self, op: str, *args, **kwargs):
        return object.__getattribute__(self, "_channel").request(op, object.__getattribute__(self, "_number"),
                                                                  args, kwargs)


class _RemoteIterator(_RemoteHandle):
    """A generator, ``map`` or other iterator of the candidate, run there as the tests consume it:
    the first ``next`` fetches one item, later ones fetch batches that double up to ``MAX_BATCH``
    (a long generator costs few round trips; an infinite one is never run far ahead). An exception
    of the iterator reaches the tests after the items before it, then the iterator is exhausted."""

    __slots__ = ("_buffer", "_end", "_batch")

    def __init__(self, channel: _Channel, number: int) -> None:
        super().__init__(channel, number)
        self._buffer: collections.deque = collections.deque()
        self._end: list | None = None
        self._batch = 1

    def __iter__(self):
        return self

    def __next__(self):
        if not self._buffer and self._end is None:
            items, self._end = self._op("next", self._batch)
            self._batch = min(MAX_BATCH, 2 * self._batch)
            self._buffer.extend(items)
        if self._buffer:
            return self._buffer.popleft()
        end, self._end = self._end, ["stop"]
        if end is not None and end[0] == "x":
            raise _candidate_exception(end[1])
        raise StopIteration

    def __repr__(self) -> str:
        return f"<candidate iterator #{self._number}>"


class _RemoteObject(_RemoteHandle):
    """A function, class, instance or other object of the candidate: calls, attributes, items,
    ``len``, ``iter``, ``str`` and truth run there and return values or further handles."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return self._op("call", *args, **kwargs)

    def __getattr__(self, name: str):
        return self._op("get", name)

    def __setattr__(self, name: str, value) -> None:
        self._op("set", name, value)

    def __len__(self) -> int:
        return _typed(self._op("len"), int)

    def __iter__(self):
        return _typed(self._op("iter"), _RemoteIterator)

    def __getitem__(self, key):
        return self._op("getitem", key)

    def __setitem__(self, key, value) -> None:
        self._op("setitem", key, value)

    def __delitem__(self, key) -> None:
        self._op("delitem", key)

    def __contains__(self, item) -> bool:
        return _typed(self._op("contains", item), bool)

    def __bool__(self) -> bool:
        return _typed(self._op("bool"), bool)

    def __str__(self) -> str:
        return _typed(self._op("str"), str)

    def __repr__(self) -> str:
        return _typed(self._op("repr"), str)

    __eq__ = object.__eq__
    __hash__ = object.__hash__


def _typed(value, kind):
    if not isinstance(value, kind):
        raise CandidateError(f"the candidate's object returned a {type(value).__name__}, not a {kind.__name__}")
    return value


#: Modules a candidate's ``import`` makes visible to the tests: only these, already imported by the
#: zygote; no other name the candidate chose is ever imported or looked up on the tests' side.
VISIBLE_MODULES = PRELOAD


def _bind_exports(namespace: dict, exports: list, channel: _Channel) -> None:
    """Bind the candidate's top-level names for the tests. Names of builtins are never bound (a
    candidate ``abs`` must not replace the one the tests call)."""
    for entry in exports:
        if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not str:
            raise ValueError("malformed export list")
        name, node = entry
        if name.startswith("__") or hasattr(builtins, name) or not name.isidentifier():
            continue
        if type(node) is list and len(node) == 2 and node[0] == "M":
            if node[1] in VISIBLE_MODULES and node[1] in sys.modules:
                namespace[name] = sys.modules[node[1]]
            continue
        namespace[name] = channel.decode(node)


def _entry_point(exports: list, entry_point: str | None, channel: _Channel):
    for entry in exports:
        if type(entry) is list and len(entry) == 2 and entry[0] == entry_point:
            value = channel.decode(entry[1])
            return value if isinstance(value, _RemoteObject) else None
    return None


class _StepTimer:
    """A one-shot ``SIGALRM`` timer around tests' code. The signal raises ``StepTimeout`` only while
    armed, and only once per arming: candidates can send the zygote SIGALRM too (PID 1 receives the
    signals it handles), and outside an armed step that must change nothing."""

    armed = False

    @classmethod
    def handler(cls, _signum, _frame) -> None:
        if cls.armed:
            cls.armed = False
            raise StepTimeout

    @classmethod
    def arm(cls, deadline: float) -> None:
        cls.armed = True
        signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()))

    @classmethod
    def disarm(cls) -> None:
        cls.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def run_tests(job: dict, channel: _Channel, emit, deadline: float) -> None:
    """The tester: wait for the candidate to load, then run the test steps as one program (module
    ``__main__``, the candidate importable as ``solution``) against proxies of its objects,
    emitting one report per test. Only dataset code and plain data run here; each step is bounded
    by the test time, also when it computes on the candidate's values."""
    limits = job["limits"]
    channel.clock = TestClock(channel.candidate_pid, limits, cap=deadline)
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
    program = types.ModuleType("__main__")
    program.__dict__.update(_fresh_namespace("__main__"))
    solution = types.ModuleType("solution")
    saved = {name: sys.modules.get(name) for name in ("__main__", "solution")}
    sys.modules["__main__"], sys.modules["solution"] = program, solution
    previous = signal.signal(signal.SIGALRM, _StepTimer.handler)
    try:
        _run_steps(job, ready["ready"], channel, emit, deadline, program.__dict__, solution.__dict__)
    finally:
        _StepTimer.disarm()
        signal.signal(signal.SIGALRM, previous)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _run_steps(job: dict, exports: list, channel: _Channel, emit, deadline: float, namespace: dict,
               solution: dict) -> None:
    limits = job["limits"]
    try:  # rebuilding the candidate's exported values and the setup run under the timer too
        _StepTimer.arm(min(deadline, time.monotonic() + limits["test_s"]))
        try:
            _bind_exports(solution, exports, channel)
            namespace.update((k, v) for k, v in solution.items() if not k.startswith("__"))
            entry = _entry_point(exports, job.get("entry_point"), channel)
            if job.get("setup"):
                exec(compile(job["setup"], "setup.py", "exec"), namespace)
            if entry is not None:
                namespace[job["entry_point"]] = solution[job["entry_point"]] = entry
        finally:
            _StepTimer.disarm()
    except (Exception, StepTimeout, SystemExit) as exc:
        emit({"ev": "load_error", "err": _failure(exc)})
        return
    test_index = 0
    for step, (source, is_test) in enumerate(job["steps"]):
        started = time.monotonic()
        channel.clock = TestClock(channel.candidate_pid, limits, cap=deadline)
        channel.deadline = min(deadline, started + limits["test_s"])
        try:
            _timed_exec(source, f"<test step {step}>", namespace, channel.clock.wall_end)
            ok, err = True, None
        except SystemExit as exc:  # the test program ended itself; the tests after this one do not run
            if exc.code not in (None, 0, False):
                ok, err = False, _failure(exc)
            else:
                if is_test:
                    emit({"ev": "test", "i": test_index, "ok": True, "err": None,
                          "s": round(time.monotonic() - started, 6)})
                return
        except (Exception, StepTimeout) as exc:
            ok, err = False, _failure(exc)
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


def _timed_exec(source: str, filename: str, namespace: dict, deadline: float) -> None:
    """Run test code; past ``deadline`` the timer raises ``StepTimeout`` in it."""
    _StepTimer.arm(deadline)
    try:
        exec(compile(source, filename, "exec"), namespace)
    finally:
        _StepTimer.disarm()


def _failure(exc: BaseException) -> str:
    if isinstance(exc, StepTimeout):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:300]


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
        self.spare: Spare | None = self.forks.spare()

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

    def prepare_next(self) -> bool:
        """A spare candidate process for the next run; False if the fork server is gone (a
        candidate killed or stopped it): the zygote then retires, it cannot make a clean one."""
        try:
            self.spare = self.forks.spare()
        except (OSError, RuntimeError):
            return False
        return True

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
        channel = _Channel(candidate.req_w, candidate.resp_r, candidate.pid, limits["output_bytes"])
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
        clock = TestClock(candidate.pid, limits)
        deadline = started + limits["test_s"]
        stdout, stderr = bytearray(), bytearray()
        open_fds = {candidate.out_r: stdout, candidate.err_r: stderr}
        timed_out = over_limit = exited = False
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                later = clock.next_deadline()
                if later is None:
                    timed_out = True
                    break
                deadline = later
                continue
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
                lost = index and not (runner.cleanup() and runner.prepare_next())
                if lost:  # the candidate's own doing: its later cases fail, the slot retires below
                    emit({"ev": "case", "i": index, "lost": "an earlier case broke the sandbox's fork server"})
                else:
                    emit({"ev": "case", "i": index, **runner.run_stdio_case(job, stdin_text)})
                answer = requests.read(float("inf"))
                if answer is None:
                    return
                if lost or not json.loads(answer).get("continue"):
                    break
        emit(end)  # the verdict is complete; what is left of the run cannot change it
        problem = "processes survived SIGKILL" if not runner.cleanup() else _wipe()
        if not problem and not runner.prepare_next():
            problem = "the fork server is gone (killed or stopped by a candidate)"
        if problem:  # cannot get clean: say why, exit, and the scorer starts a fresh sandbox
            emit({"ev": "exiting", "reason": problem})
            return


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
