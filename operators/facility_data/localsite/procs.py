"""Background processes of the local site: start detached, record, health-check, stop only what we started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


class SiteError(RuntimeError):
    """The local site cannot be brought up (a prerequisite is missing or a service does not become healthy)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(cmd: list[str], *, log: Path, env: dict | None = None, cwd: Path | None = None) -> int:
    """Start ``cmd`` in its own session (so it outlives us and can be stopped as a group); return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
    return proc.pid


def cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def alive(pid: int | None, marker: str) -> bool:
    """Is ``pid`` running and still the process we started (its command line contains ``marker``)?"""
    if not pid:
        return False
    line = cmdline(pid)
    return line is not None and marker in line


def stop(pid: int, marker: str, *, timeout: float = 15) -> bool:
    """Stop the process group we started, if ``pid`` is still ours. Returns True if something was stopped."""
    if not alive(pid, marker):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, marker):
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def wait_until(check: Callable[[], bool], *, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    tail = ""
    if log and log.exists():
        tail = "\n  last log lines:\n    " + "\n    ".join(log.read_text(errors="replace").splitlines()[-15:])
    raise SiteError(f"{what} did not become healthy within {timeout:.0f} s{tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False
