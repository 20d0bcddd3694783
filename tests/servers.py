"""Real servers for the tests of notifiers and check-ins, each on a free loopback port.

``Recorder``: an HTTP server (``http.server.ThreadingHTTPServer``, in a thread of the
test process) that records every request (method, path, headers, body, gzip undone)
and answers by its path: ``/status/<code>/...`` with that status, ``/hang/...`` never
(it sleeps until the server stops), ``/huge/...`` 500 with a 5 MB body,
``/redirect/...`` a 302 to another host, ``/trickle/...`` 500 with a body sent one
byte every 0.2 s, ``/startfails/...`` 503 to a path ending in ``/start`` (a check-in's
start) and 200 to others; anything else 200 "OK".

``SmtpServer``: aiosmtpd in a subprocess (``python -m aiosmtpd``) writing every message
it receives to a Maildir.
"""

from __future__ import annotations

import gzip
import json
import mailbox
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.proc.harness import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused_url(path: str = "/") -> str:
    """An address where nothing listens: connecting is refused at once."""
    return f"http://127.0.0.1:{free_port()}{path}"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


class Recorder:
    """The recording HTTP server; ``url(path)`` is an address on it."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                recorder.requests.append(
                    Request(self.command, self.path, dict(self.headers.items()), body)
                )
                parts = self.path.split("/")
                kind = parts[1] if len(parts) > 1 else ""
                if kind == "hang":
                    recorder.stopping.wait(30)
                    return
                if kind == "redirect":
                    self._answer(302, b"moved", {"Location": "https://elsewhere.example/x"})
                elif kind == "huge":
                    self._answer(500, b"E" * 5_000_000)
                elif kind == "trickle":
                    self.send_response(500)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(1000):
                        if recorder.stopping.wait(0.2):
                            return
                        self.wfile.write(b"x")
                        self.wfile.flush()
                elif kind == "startfails" and self.path.partition("?")[0].endswith("/start"):
                    self._answer(503, b"try later")
                elif kind == "status":
                    code = int(parts[2])
                    self._answer(code, f"answer {code}: not today".encode())
                else:
                    self._answer(200, b"OK")

            def _answer(
                self, code: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the client read what it wanted and went

            do_GET = do_POST = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def matching(self, prefix: str) -> list[Request]:
        return [r for r in list(self.requests) if r.path.startswith(prefix)]

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class SmtpServer:
    """aiosmtpd in a subprocess, keeping what it receives in ``directory`` (a Maildir)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{self.port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(directory),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._listening, 15, f"aiosmtpd listening on port {self.port}")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            output = self.process.stdout.read() if self.process.stdout else b""
            raise AssertionError(f"aiosmtpd exited: {output!r}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def messages(self) -> list[Message]:
        if not self.directory.exists():
            return []
        return list(mailbox.Maildir(self.directory, create=False))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()


def recorder() -> Iterator[Recorder]:
    server = Recorder()
    try:
        yield server
    finally:
        server.stop()


# The recording HTTP server as a fixture (tests/conftest.py makes it ``http``).
http = pytest.fixture(recorder, name="http")
