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


def port_in_use(port: int, *, _source_port: int = 0) -> bool:
    """Whether something listens on ``port`` of the loopback interface.

    A port in the ephemeral range that nobody listens on can still accept our connect: the kernel may pick that same
    port as the source and the socket connects to itself (TCP simultaneous open). That is not a listener.
    """
    with socket.socket() as s:
        if _source_port:
            s.bind(("127.0.0.1", _source_port))
        return s.connect_ex(("127.0.0.1", port)) == 0 and s.getsockname() != s.getpeername()


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


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (some servers start children in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def exited(pid: int) -> bool:
    """Has ``pid`` finished exiting (gone, or a zombie in every thread)?

    An exiting process loses its command line before it closes its files, and a multi-threaded server's main thread
    can be a zombie while another thread still holds the listening socket; only when every thread is a zombie are its
    ports free.
    """
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child, so it does not linger as a zombie
    except ChildProcessError:
        pass
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return False
        except (OSError, IndexError):
            continue  # that thread is gone
    return True


def stop(pid: int, marker: str, *, timeout: float = 15) -> bool:
    """Stop the process we started and everything it started, if ``pid`` is still ours.

    Returns True if something was stopped, once all of it has exited (its ports are free again). A pid that now
    belongs to another program is left alone.
    """
    if not alive(pid, marker):
        return False
    tree = [pid, *descendants(pid)]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        _signal_all(tree, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if all(exited(p) for p in tree):
                return True
            time.sleep(0.1)
    raise SiteError(f"process {pid} ({marker}) and its children did not exit after SIGKILL")


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


def start_healthy(cmd: list[str], *, marker: str, check: Callable[[], bool], what: str, timeout: float, log: Path,
                  env: dict | None = None) -> int:
    """:func:`start` ``cmd`` and wait until ``check`` passes; a server that never becomes healthy is stopped before
    the error is raised (its pid was never recorded anywhere, so nothing else could stop it)."""
    pid = start(cmd, log=log, env=env)
    try:
        wait_until(check, what=what, timeout=timeout, log=log)
    except BaseException:
        stop(pid, marker)
        raise
    return pid


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False
