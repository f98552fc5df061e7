"""Entry point of a KillablePool worker process: ``python -m mdreward._worker module:function R W``.

Reads pickled payloads from fd R, answers ``(kind, value)`` on fd W. Started with an empty
``__main__`` so a user's script is never re-imported in workers. If the target's module has a
``warm_up()`` it runs before the worker reports ready (first calls into sympy are slow).
"""
from __future__ import annotations

import importlib
import signal
import sys
from multiprocessing.connection import Connection


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    target, read_fd, write_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    func = getattr(module, func_name)
    if hasattr(module, "warm_up"):
        module.warm_up()
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    outbox.send(("ready", None))
    while True:
        try:
            payload = inbox.recv()
        except EOFError:
            return
        try:
            outbox.send(("ok", func(payload)))
        except Exception as exc:  # report and keep serving; the parent decides what it means
            outbox.send(("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    main()
