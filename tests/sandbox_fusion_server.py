"""A local stand-in for a SandboxFusion service: a real HTTP server speaking its documented
``POST /run_code`` schema (validated with the ``sandbox-fusion`` client's own models).

SandboxFusion itself needs a container engine, which this machine lacks. The stand-in runs each
program with ``python`` inside a one-shot bubblewrap sandbox (never unisolated), honours
``run_timeout``, and can be told to fail: ``fail_next`` requests answer HTTP 503 (or a
``SandboxError`` status), ``reject_with`` answers every request with that HTTP status.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sandbox_fusion.models import RunCodeRequest

from mdreward.sandbox import SandboxLimits
from mdreward.sandbox.local import bwrap_mounts


def _isolated(code: str) -> list[str]:
    privileges = ["--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
    return bwrap_mounts(sys.executable, SandboxLimits()) + privileges + ["--", sys.executable, "-I", "-c", code]


class FusionStandIn:
    def __init__(self) -> None:
        self.fail_next = 0
        self.fail_as_status = False
        self.reject_with: int | None = None
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                stand_in._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FusionStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _reply(self, handler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, handler) -> None:
        if handler.path != "/run_code":
            return self._reply(handler, 404, {"detail": "not found"})
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            failing = self.fail_next > 0
            self.fail_next -= failing
        try:
            status, answer = self._answer(body, failing)
        finally:
            with self._lock:  # before replying: the client may send its next request at once
                self.in_flight -= 1
        self._reply(handler, status, answer)

    def _answer(self, body: dict, failing: bool) -> tuple[int, dict]:
        if self.reject_with is not None:
            return self.reject_with, {"detail": "rejected"}
        try:
            request = RunCodeRequest(**body)
        except Exception as exc:  # pydantic's ValidationError: the client broke the schema
            return 422, {"detail": str(exc)}
        if failing and self.fail_as_status:
            return 200, {"status": "SandboxError", "message": "pod evicted", "compile_result": None, "run_result": None}
        if failing:
            return 503, {"detail": "overloaded"}
        return 200, self._run(request)

    def _run(self, request: RunCodeRequest) -> dict:
        started = time.monotonic()
        try:
            done = subprocess.run(_isolated(request.code), input=(request.stdin or "").encode(), capture_output=True,
                                  timeout=request.run_timeout, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            run = {"status": "Finished", "return_code": done.returncode,
                   "stdout": done.stdout.decode(errors="replace"), "stderr": done.stderr.decode(errors="replace")}
        except subprocess.TimeoutExpired as exc:
            run = {"status": "TimeLimitExceeded", "return_code": None,
                   "stdout": (exc.stdout or b"").decode(errors="replace"), "stderr": ""}
        run["execution_time"] = time.monotonic() - started
        ok = run["status"] == "Finished" and run["return_code"] == 0
        return {"status": "Success" if ok else "Failed", "message": "", "compile_result": None, "run_result": run,
                "executor_pod_name": None, "files": {}}
