"""The copy ledger: a small durable SQLite file recording what each beamline DAG put where.

Why a ledger: the prune sweep must know, for every file it may delete, (1) whether the scan is export-controlled
(only the new-file DAG knows: it comes from the watcher's conf) and (2) the size and checksum of the copies
elsewhere, including on Globus collections whose listings carry no checksum. So every verified copy is recorded
when it is made: scan, location, key, size, checksum ("sha256:..." for files, "tree-sha256:..." for directories),
and when it arrived. The sweep still re-reads every location live (existence and size); the ledger only supplies
what a live listing cannot (export-control status, remote checksums, arrival time).

Tables:
* ``scans(beamline, scan, export_controlled, file_path, first_seen, size, checksum)``: one row per raw scan
  (``raw/<folder>/<f>.h5``) with its content fingerprint (size and ``sha256:...``), so a renamed or copied
  export-controlled scan is recognised by its bytes, not its name.
* ``copies(beamline, location, key, scan, endpoint, path, size, checksum, arrived_at, state, updated_at, run_id,
  checksum_algorithm, verified_by)``: the latest known state (``present``/``deleted``) of each item at each
  location. ``verified_by`` says how the checksum of that copy is known: ``inspect`` (computed from the bytes
  there) or ``globus:<task id>`` (a Globus task that SUCCEEDED with ``verify_checksum`` using
  ``checksum_algorithm``, checked with Globus when recorded). A row without it (older ledgers, unverified copies)
  gives no checksum evidence for a copy whose bytes cannot be read.
* ``events``: an append-only history of every record and delete, for audits.

SQLite (stdlib) gives atomic, concurrent-safe writes from parallel tasks (WAL, busy timeout) in one file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    beamline TEXT NOT NULL, scan TEXT NOT NULL, export_controlled INTEGER NOT NULL, file_path TEXT,
    first_seen TEXT NOT NULL, size INTEGER, checksum TEXT, PRIMARY KEY (beamline, scan));
CREATE TABLE IF NOT EXISTS copies (
    beamline TEXT NOT NULL, location TEXT NOT NULL, key TEXT NOT NULL, scan TEXT NOT NULL, endpoint TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER, checksum TEXT, arrived_at TEXT NOT NULL, state TEXT NOT NULL,
    updated_at TEXT NOT NULL, run_id TEXT, checksum_algorithm TEXT, verified_by TEXT,
    PRIMARY KEY (beamline, location, key));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, beamline TEXT NOT NULL, action TEXT NOT NULL,
    location TEXT, key TEXT, detail TEXT);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class CopyRecord:
    beamline: str
    location: str
    key: str
    scan: str
    endpoint: str
    path: str
    size: int | None
    checksum: str | None
    arrived_at: datetime
    state: str
    checksum_algorithm: str | None = None
    verified_by: str | None = None


class Ledger:
    """Open (creating if needed) the ledger at ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)  # executescript commits on its own
            columns = {row[1] for row in db.execute("PRAGMA table_info(scans)")}
            # ledgers from before fingerprints and before send_to_nersc was recorded
            for column, kind in (("size", "INTEGER"), ("checksum", "TEXT"), ("send_to_nersc", "INTEGER")):
                if column not in columns:
                    db.execute(f"ALTER TABLE scans ADD COLUMN {column} {kind}")
            copy_columns = {row[1] for row in db.execute("PRAGMA table_info(copies)")}
            # ledgers from before the evidence of a copy's checksum was recorded: their rows get NULL (no evidence)
            for column in ("checksum_algorithm", "verified_by"):
                if column not in copy_columns:
                    db.execute(f"ALTER TABLE copies ADD COLUMN {column} TEXT")
            db.execute("CREATE INDEX IF NOT EXISTS scans_content ON scans (size, checksum)")
            db.commit()
        finally:
            db.close()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _event(db, beamline: str, action: str, location: str | None, key: str | None, detail: dict) -> None:
        db.execute("INSERT INTO events (time, beamline, action, location, key, detail) VALUES (?,?,?,?,?,?)",
                   (_now(), beamline, action, location, key, json.dumps(detail, sort_keys=True)))

    # ---- scans ----------------------------------------------------------------------------------------------
    def record_scan(self, beamline: str, scan: str, *, export_controlled: bool, file_path: str,
                    size: int | None = None, checksum: str | None = None,
                    send_to_nersc: bool | None = None) -> bool:
        """Record a scan's export-control status (and its content fingerprint); returns the status in force.

        Once a scan was recorded as export-controlled it stays so: a later conf saying otherwise cannot relax it.
        A fingerprint, once known, is kept; a different one later is recorded in the event log. ``send_to_nersc``
        is what the latest new-file conf asked for (None keeps what was recorded): later runs honour it.
        """
        with self._connect() as db:
            row = db.execute("SELECT export_controlled, size, checksum FROM scans WHERE beamline=? AND scan=?",
                             (beamline, scan)).fetchone()
            status = bool(export_controlled) or bool(row and row[0])
            nersc = None if send_to_nersc is None else int(send_to_nersc)
            if row is None:
                db.execute("INSERT INTO scans (beamline, scan, export_controlled, file_path, first_seen, size, "
                           "checksum, send_to_nersc) VALUES (?,?,?,?,?,?,?,?)",
                           (beamline, scan, int(status), file_path, _now(), size, checksum, nersc))
            else:
                keep = row[2] is not None
                db.execute("UPDATE scans SET export_controlled=?, size=?, checksum=?, "
                           "send_to_nersc=COALESCE(?, send_to_nersc) WHERE beamline=? AND scan=?",
                           (int(status), row[1] if keep else size, row[2] if keep else checksum, nersc, beamline,
                            scan))
            self._event(db, beamline, "scan", None, scan,
                        {"export_controlled": status, "requested": bool(export_controlled), "file_path": file_path,
                         "size": size, "checksum": checksum, "send_to_nersc": send_to_nersc})
        return status

    def same_content(self, size: int, checksum: str) -> dict[str, bool]:
        """``<beamline>:<scan>`` -> export-control status of every recorded scan with these bytes (any beamline)."""
        with self._connect() as db:
            rows = db.execute("SELECT beamline, scan, export_controlled FROM scans WHERE size=? AND checksum=?",
                              (size, checksum)).fetchall()
        return {f"{b}:{scan}": bool(ec) for b, scan, ec in rows}

    def send_to_nersc(self, beamline: str, scan: str) -> bool | None:
        """What the scan's new-file conf asked for, None when not recorded."""
        with self._connect() as db:
            row = db.execute("SELECT send_to_nersc FROM scans WHERE beamline=? AND scan=?", (beamline, scan)).fetchone()
        return None if row is None or row[0] is None else bool(row[0])

    def export_controlled(self, beamline: str, scan: str) -> bool | None:
        """True/False as recorded, None when the ledger does not know the scan."""
        with self._connect() as db:
            row = db.execute("SELECT export_controlled FROM scans WHERE beamline=? AND scan=?",
                             (beamline, scan)).fetchone()
        return None if row is None else bool(row[0])

    # ---- copies ---------------------------------------------------------------------------------------------
    def record_copy(self, beamline: str, location: str, key: str, *, scan: str, endpoint: str, path: str,
                    size: int | None, checksum: str | None, run_id: str | None = None,
                    checksum_algorithm: str | None = None, verified_by: str | None = None) -> None:
        """Record a verified copy as present (arrival time kept if it was already present with the same content).
        ``verified_by``/``checksum_algorithm``: how ``checksum`` is known for this copy (see the module doc)."""
        now = _now()
        with self._connect() as db:
            row = db.execute("SELECT size, checksum, arrived_at, state FROM copies WHERE beamline=? AND location=? "
                             "AND key=?", (beamline, location, key)).fetchone()
            same = row is not None and row[3] == "present" and row[0] == size and row[1] == checksum
            arrived = row[2] if same else now
            db.execute("INSERT OR REPLACE INTO copies (beamline, location, key, scan, endpoint, path, size, checksum, "
                       "arrived_at, state, updated_at, run_id, checksum_algorithm, verified_by) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (beamline, location, key, scan, endpoint, path, size, checksum, arrived, "present", now,
                        run_id, checksum_algorithm, verified_by))
            self._event(db, beamline, "copy", location, key,
                        {"scan": scan, "endpoint": endpoint, "path": path, "size": size, "checksum": checksum,
                         "run_id": run_id, "checksum_algorithm": checksum_algorithm, "verified_by": verified_by})

    def mark_deleted(self, beamline: str, location: str, key: str, *, reason: str) -> None:
        now = _now()
        with self._connect() as db:
            db.execute("UPDATE copies SET state='deleted', updated_at=? WHERE beamline=? AND location=? AND key=?",
                       (now, beamline, location, key))
            self._event(db, beamline, "delete", location, key, {"reason": reason})

    def copy(self, beamline: str, location: str, key: str) -> CopyRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT beamline, location, key, scan, endpoint, path, size, checksum, arrived_at, "
                             "state, checksum_algorithm, verified_by FROM copies WHERE beamline=? AND location=? AND key=?",
                             (beamline, location, key)).fetchone()
        return _record(row) if row else None

    def copies(self, beamline: str, location: str | None = None, *, state: str | None = "present") -> list[CopyRecord]:
        sql = ("SELECT beamline, location, key, scan, endpoint, path, size, checksum, arrived_at, state, "
               "checksum_algorithm, verified_by FROM copies WHERE beamline=?")
        args: list = [beamline]
        if location is not None:
            sql += " AND location=?"
            args.append(location)
        if state is not None:
            sql += " AND state=?"
            args.append(state)
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY location, key", args).fetchall()
        return [_record(r) for r in rows]

    def events(self, beamline: str) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT time, action, location, key, detail FROM events WHERE beamline=? ORDER BY id",
                              (beamline,)).fetchall()
        return [{"time": t, "action": a, "location": loc, "key": k, **json.loads(d)} for t, a, loc, k, d in rows]


def _record(row) -> CopyRecord:
    *head, arrived, state, algorithm, verified_by = row
    return CopyRecord(*head, arrived_at=datetime.fromisoformat(arrived), state=state, checksum_algorithm=algorithm,
                      verified_by=verified_by)
