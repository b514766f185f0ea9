"""Helpers for tests that run the real processes: free ports, polling with deadlines, process groups."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

INSTALL = {
    "nginx": "apt-get install -y nginx   (or: make system-deps)",
    "redis-server": "apt-get install -y redis-server   (or: make system-deps)",
    "envsubst": "apt-get install -y gettext-base",
}


def require_tool(name: str) -> str:
    """The tool's path, or a failing test that says how to install it. Never a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL.get(name, 'install it')}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T | None], timeout: float, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


# Every log a Proc wrote this session, but for those whose job is to show a credential (make run's
# banner): the session's last check reads them all for anything shaped like a key or a JWT.
PROC_LOGS: list[Path] = []
CREDENTIAL_SHAPES = re.compile(r"sk-lp-[A-Za-z0-9_-]{8,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|Bearer \S")


async def eventually(predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """`wait_until` for tests on an event loop: poll without blocking it, fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


class Proc:
    """One real process of the pod, with its output kept in a file for the test to read."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        logdir: Path,
        shows_credentials: bool = False,
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        if not shows_credentials:
            PROC_LOGS.append(self.log_path)
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            argv, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            code = self.popen.wait(5)
        self._log.close()
        return code


@contextmanager
def running(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def python() -> str:
    return sys.executable


class RedisServer:
    """A real redis-server on a free loopback port; it can be killed and started again on the same
    port (an outage and its end). `persistent` keeps its data across that (append-only file, fsync
    on every write), as a production Redis would; otherwise it keeps nothing."""

    def __init__(self, logdir: Path, persistent: bool = False) -> None:
        self.path = require_tool("redis-server")
        self.port = free_port()
        self.logdir = logdir
        self.persistent = persistent
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.persistent:
            data = self.logdir / f"redis-data-{self.port}"
            data.mkdir(exist_ok=True)
            argv += ["--dir", str(data), "--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        self.proc = Proc(f"redis-{self.port}-{time.monotonic_ns()}", argv, {}, self.logdir)
        wait_until(self._answers, 10, 0.02, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)
            self.proc.stop()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def credentials_in_logs() -> list[str]:
    """`file: line` for every line of every Proc log that holds something shaped like a credential."""
    found = []
    for path in PROC_LOGS:
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if CREDENTIAL_SHAPES.search(line):
                    found.append(f"{path.name}: {CREDENTIAL_SHAPES.sub('<credential>', line)[:300]}")
    return found
