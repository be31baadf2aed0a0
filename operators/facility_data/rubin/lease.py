"""Per-exposure exclusion: a lease file in the destination filesystem, next to the exposure's zip.

Two runs (whichever DAG: the unembargo steps, a reconcile repair, a backfill) never work on the same exposure's sinks
at once, across workers and machines, with nothing but the filesystem the zips already live on. The lease is
``<day dir>/.<obs_id>.lease``, created with ``O_EXCL`` (atomic on local filesystems and NFS v3+), holding its owner
as JSON (host, pid and the pid's start time, dag/run/task/try when running in Airflow, ttl). Its modification time
is the heartbeat: the holder touches it (through its own open descriptor, so it never touches a successor's lease)
every ``ttl / 5`` seconds. A holder is dead, and its lease is broken at once, when it ran on this host and its pid is
gone (or now belongs to another process), or when its heartbeat is older than its ttl (another host, or a holder
that stopped). Breaking is serialised by a second ``O_EXCL`` file, so two breakers never remove a new holder's lease.

A run that finds a live holder waits (boundedly), then raises :class:`ExposureBusy`: "another run is mid-step", never
a verdict about the artifacts. The operators map it to a retryable failure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: a holder whose heartbeat is older than this is dead (the holder touches its lease every TTL_S / 5)
TTL_S = 300.0
#: how long a step waits for a live holder before giving up with ExposureBusy (Airflow's retries take over)
WAIT_S = 60.0
POLL_S = 0.5
#: a break lock is held for a few file operations; older than this, its breaker died
BREAK_STALE_S = 30.0


class ExposureBusy(RuntimeError):
    """Another live run holds the exposure's lease: nothing was done; retry later."""

    def __init__(self, path: Path, holder: Holder | None, waited_s: float):
        who = holder.describe() if holder else "a holder whose lease is being written"
        super().__init__(f"{path.name.removeprefix('.').removesuffix('.lease')}: busy, another run is working on it "
                         f"({who}); waited {waited_s:.0f} s, nothing done; retry later (lease {path})")
        self.path, self.holder = path, holder


def lease_path(zip_path: Path) -> Path:
    return zip_path.parent / f".{zip_path.stem}.lease"


def _proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, ...] (Linux; empty elsewhere or if gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, to tell a reused pid from its first owner."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, does not; nor a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False
    return start is None or not fields or fields[19] == start


HOST = socket.gethostname()
_TOKEN_HOST = re.sub(r"[^A-Za-z0-9-]", "-", HOST)  # no dot or underscore: a token parses inside a file name


def owner_token() -> str:
    """``<host>_<pid>_<random>``: names a lease and the temporary files written under it."""
    return f"{_TOKEN_HOST}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def parse_token(token: str | None) -> tuple[str, int] | None:
    """(host, pid) named by an owner token; None if ``token`` is not one."""
    try:
        host, pid, rand = (token or "").rsplit("_", 2)
        return (host, int(pid)) if re.fullmatch(r"[A-Za-z0-9-]+", host) and len(rand) == 8 else None
    except ValueError:
        return None


def token_owner_dead(token: str) -> bool:
    """Whether a token's process is known dead: it ran on this host and its pid is gone (other hosts: unknown)."""
    owner = parse_token(token)
    return owner is not None and owner[0] == _TOKEN_HOST and not pid_alive(owner[1])


def token_owner_alive_here(token: str) -> bool:
    """Whether a token's process runs on this host now."""
    owner = parse_token(token)
    return owner is not None and owner[0] == _TOKEN_HOST and pid_alive(owner[1])


def _airflow_task() -> dict:
    if "airflow.sdk" not in sys.modules:  # not in a task (importing Airflow to find out costs seconds)
        return {}
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
        return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index,
                "try_number": ti.try_number}
    except Exception:  # noqa: BLE001 - outside a task (scripts, tests): host and pid name the owner
        return {}


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    start: str | None
    ttl_s: float
    acquired: str
    task: dict
    heartbeat: float = 0.0  # the lease file's mtime when read

    def describe(self) -> str:
        task = " ".join(f"{k}={v}" for k, v in self.task.items())
        age = time.time() - self.heartbeat
        return f"held by {self.host} pid {self.pid}{' ' + task if task else ''} since {self.acquired}, " \
               f"heartbeat {age:.0f} s ago, expires after {self.ttl_s:g} s without one"

    def dead(self, now: float | None = None) -> str | None:
        """Why this holder is dead, or None if it may be alive."""
        if self.host == HOST and not pid_alive(self.pid, self.start):
            return f"pid {self.pid} is gone from {HOST}"
        age = (now or time.time()) - self.heartbeat
        if age > self.ttl_s:
            return f"no heartbeat for {age:.0f} s (ttl {self.ttl_s:g} s)"
        return None


def read_holder(path: Path) -> Holder | None | str:
    """The lease's holder; None if there is no lease; ``"unreadable"`` while its owner is still writing it."""
    try:
        mtime = path.stat().st_mtime
        data = json.loads(path.read_bytes())
        return Holder(**{k: data[k] for k in ("token", "host", "pid", "start", "ttl_s", "acquired", "task")},
                      heartbeat=mtime)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return "unreadable"


class Lease:
    """A held lease: heartbeats in a daemon thread until :meth:`release`."""

    def __init__(self, path: Path, token: str, fd: int, ttl_s: float):
        self.path, self.token, self._fd, self.ttl_s = path, token, fd, ttl_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{path.name}")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 5):
            try:
                os.utime(self._fd)  # our inode only, even if the path now names a successor's lease
                if os.stat(self.path).st_ino != os.fstat(self._fd).st_ino:
                    raise FileNotFoundError(self.path)
            except OSError as exc:
                self.lost = f"lease {self.path} lost (broken as stale?): {exc}"
                log.error("%s", self.lost)
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            # e.g. the directory turned read-only: never mask the step's own error; without heartbeats the lease
            # expires after ttl_s and the next run breaks it as a dead holder's
            log.warning("could not remove lease %s (%s); it expires in %.0f s without heartbeats",
                        self.path, e, self.ttl_s)
        finally:
            os.close(self._fd)


def _create(path: Path, token: str, ttl_s: float) -> Lease | None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    body = {"token": token, "host": HOST, "pid": os.getpid(), "start": _pid_start(os.getpid()), "ttl_s": ttl_s,
            "acquired": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "task": _airflow_task()}
    os.write(fd, json.dumps(body).encode())
    os.fsync(fd)
    return Lease(path, token, fd, ttl_s)


def _break(path: Path, token: str, why: str) -> bool:
    """Remove the lease if it is still the dead holder's (``token``); serialised with other breakers. False if
    another breaker is at it."""
    brk = path.with_name(path.name + ".break")
    try:
        fd = os.open(brk, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - brk.stat().st_mtime > BREAK_STALE_S:
                brk.unlink()  # its breaker died within a few file operations
        except FileNotFoundError:
            pass
        return False
    try:
        current = read_holder(path)
        if isinstance(current, Holder) and current.token == token:
            path.unlink()
            log.warning("broke the lease %s of a dead holder (%s): %s", path, current.describe(), why)
    finally:
        os.close(fd)
        brk.unlink(missing_ok=True)
    return True


def acquire(path: Path, *, wait_s: float | None = None, ttl_s: float | None = None) -> Lease:
    """Take the lease at ``path``: at once if free or its holder is dead, else wait up to ``wait_s`` for it, then
    raise :class:`ExposureBusy`."""
    wait_s = WAIT_S if wait_s is None else wait_s
    ttl_s = TTL_S if ttl_s is None else ttl_s
    path.parent.mkdir(parents=True, exist_ok=True)
    token, began, logged = owner_token(), time.monotonic(), False
    while True:
        lease = _create(path, token, ttl_s)
        if lease is not None:
            return lease
        holder = read_holder(path)
        if isinstance(holder, Holder) and (why := holder.dead()):
            if not _break(path, holder.token, why):
                time.sleep(POLL_S / 10)  # another breaker is at it
            continue
        if holder == "unreadable":  # being written, or its writer died between create and write
            try:
                if time.time() - path.stat().st_mtime > ttl_s:
                    path.unlink(missing_ok=True)
                    continue
            except FileNotFoundError:
                continue
        waited = time.monotonic() - began
        if waited >= wait_s:
            raise ExposureBusy(path, holder if isinstance(holder, Holder) else None, waited)
        if not logged and isinstance(holder, Holder):
            log.info("%s: waiting up to %g s: %s", path.name, wait_s, holder.describe())
            logged = True
        time.sleep(min(POLL_S, wait_s - waited))
