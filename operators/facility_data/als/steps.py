"""The beamline DAGs' steps as plain functions: validate a new scan, record verified copies, decide which
reconstructions may run, run the local reconstruction. The DAG factory wires them into tasks; tests call them
directly. Everything passed between steps is a JSON-able ``dict`` (a *scan record*) so it can travel in XCom
and in asset-event extras.
"""

from __future__ import annotations

import logging
from pathlib import Path

from facility_data.als.beamline import Beamline, check_endpoints
from facility_data.als.inventory import backend_for, inspect
from facility_data.als.ledger import Ledger
from facility_data.als.paths import ScanPathError, parse_scan_path, validate_scan
from facility_data.config import ConfigError
from facility_data.safety import SafetyError, may_leave_site
from facility_data.transfer.endpoints import Endpoint

log = logging.getLogger(__name__)


class ConfError(ValueError):
    """A run's conf (or asset-event extra) is malformed; raised before any side effect."""


class CopyMismatch(RuntimeError):
    """A copy reported as done does not match its source (size or checksum)."""


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfError(f"{name} must be true or false, got {type(value).__name__} ({value!r})")
    return value


def endpoints_for(bl: Beamline, endpoints: dict[str, Endpoint]) -> dict[str, Endpoint]:
    """role -> Endpoint for the beamline's locations (ConfigError if an endpoint is missing)."""
    check_endpoints(bl, endpoints)
    return {role: endpoints[loc.endpoint] for role, loc in bl.locations.items()}


def scan_record(bl: Beamline, scan, *, export_controlled: bool, send_to_nersc: bool) -> dict:
    """What every later step needs to know about a scan, with each location's endpoint and path."""
    paths = {}
    for role, loc in bl.locations.items():
        if loc.kind == "raw":
            paths[role] = {"endpoint": loc.endpoint, "raw": loc.path_of(scan.key)}
        else:
            paths[role] = {"endpoint": loc.endpoint, "folder": loc.path_of(scan.folder),
                           "tiff": loc.path_of(scan.tiff_dir), "zarr": loc.path_of(scan.zarr_dir)}
    return {"beamline": bl.id, "file_path": scan.watcher_path(bl.rules), "relative": scan.relative,
            "key": scan.key, "folder": scan.folder, "stem": scan.stem, "tiff_key": scan.tiff_dir,
            "zarr_key": scan.zarr_dir, "export_controlled": export_controlled, "send_to_nersc": send_to_nersc,
            "source": bl.source_role, "paths": paths}


def validate_new_scan(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, conf: dict) -> dict:
    """Validate a new-file conf (file_path, is_export_control, send_to_nersc) and record the scan's status.

    Checks, in order and before anything moves: types, the path contract (under the raw root, no traversal, .h5,
    naming rules) and that the file exists at the source location. The only write is the ledger row stating
    the scan's export-control status (so a prune can never mistake it for unrestricted data).
    """
    if not isinstance(conf, dict):
        raise ConfError(f"conf must be an object, got {type(conf).__name__}")
    unknown = sorted(set(conf) - {"file_path", "is_export_control", "send_to_nersc"})
    if unknown:
        raise ConfError(f"unknown conf keys {unknown}; expected file_path, is_export_control, send_to_nersc")
    if "file_path" not in conf or conf["file_path"] in (None, ""):
        raise ConfError("conf.file_path is required: the watcher path of the new scan, e.g. "
                        f"{bl.rules.raw_root}/<PROPOSAL>-<digits>_<user>/<YYYYMMDD_HHMMSS_name>.h5")
    export_controlled = _bool("is_export_control", conf.get("is_export_control", False))
    send_to_nersc = _bool("send_to_nersc", conf.get("send_to_nersc", bl.send_to_nersc))
    eps = endpoints_for(bl, endpoints)
    source = bl.location(bl.source_role)
    src_ep = eps[bl.source_role]
    backend = backend_for(src_ep)

    def exists(relative: str) -> bool:
        st = backend.stat(src_ep, source.path_of(relative.split("/", 1)[1]))
        return st is not None and not st.is_dir

    try:
        scan = validate_scan(conf["file_path"], bl.rules, exists=exists)
    except ScanPathError as exc:
        raise ConfError(str(exc)) from None
    status = ledger.record_scan(bl.id, scan.relative, export_controlled=export_controlled,
                                file_path=conf["file_path"])
    if status and not export_controlled:
        log.warning("%s was recorded as export-controlled before; it stays export-controlled", scan.relative)
    record = scan_record(bl, scan, export_controlled=status, send_to_nersc=send_to_nersc)
    log.info("new scan %s (%s): export_controlled=%s send_to_nersc=%s, found at %s:%s", scan.relative,
             conf["file_path"], status, send_to_nersc, src_ep.name, source.path_of(scan.key))
    return record


def record_copy(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, scan: dict, *, source: str,
                destination: str, what: str = "raw", run_id: str | None = None) -> dict:
    """Verify that ``destination`` holds the same bytes as ``source`` and record both copies in the ledger.

    ``what`` is ``raw``, ``tiff`` or ``zarr``. Size must match; checksums must match when both are knowable.
    A mismatch raises :class:`CopyMismatch` (the transfer is not trusted as done).
    """
    eps = endpoints_for(bl, endpoints)
    key = scan["key"] if what == "raw" else scan[f"{what}_key"]
    found = {}
    for role in (source, destination):
        ep = eps[role]
        path = scan["paths"][role][what]
        item = inspect(backend_for(ep), ep, path)
        if item is None:
            raise CopyMismatch(f"{what} of {scan['relative']} is missing at {role} ({ep.name}:{path})")
        found[role] = (ep, path, item)
    (_, _, a), (_, dst_path, b) = found[source], found[destination]
    if a.size != b.size:
        raise CopyMismatch(f"{what} of {scan['relative']}: {destination} holds {b.size} B, {source} {a.size} B")
    if a.checksum and b.checksum and a.checksum != b.checksum:
        raise CopyMismatch(f"{what} of {scan['relative']}: checksum at {destination} differs from {source}")
    checksum = a.checksum or b.checksum
    for role, (ep, path, item) in found.items():
        ledger.record_copy(bl.id, role, key, scan=scan["relative"], endpoint=ep.name, path=path, size=item.size,
                           checksum=item.checksum or checksum, run_id=run_id)
    log.info("verified %s of %s: %s:%s == %s:%s (%d B, %s)", what, scan["relative"], found[source][0].name,
             found[source][1], found[destination][0].name, dst_path, b.size, checksum or "checksum unknown")
    return {"size": b.size, "checksum": checksum, "files": b.files}


def nersc_copy_decision(bl: Beamline, endpoints: dict[str, Endpoint], scan: dict) -> tuple[bool, str]:
    """Should the raw file go data -> NERSC? (never when export-controlled; never when send_to_nersc is false)."""
    if "nersc" not in bl.locations:
        return False, f"{bl.id} has no NERSC location"
    eps = endpoints_for(bl, endpoints)
    decision = may_leave_site(export_controlled=scan["export_controlled"], from_site=eps["data"].site,
                              to_site=eps["nersc"].site, what=scan["relative"])
    if not decision.allowed:
        return False, decision.reason
    if not scan["send_to_nersc"]:
        return False, f"send_to_nersc is false for {scan['relative']}"
    return True, decision.reason


# ---- reconstruction requests --------------------------------------------------------------------------------
def event_extras(triggering_asset_events) -> list[dict]:
    """The extras of every triggering asset event (a run may collect several scans' events), oldest first."""
    if not triggering_asset_events:
        return []
    events = [e for evs in triggering_asset_events.values() for e in evs]
    events.sort(key=lambda e: e.timestamp)
    return [dict(e.extra or {}) for e in events]


def recon_requests(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, target: str, *,
                   event_extras: list[dict], conf: dict | None, decision_override) -> list[dict]:
    """The scans a ``<bl>_recon_<target>`` run must process, after every check, before any side effect.

    Scans come from the triggering asset events' extras, or (manual run) from the conf's ``file_path``. Each is
    re-validated against the path contract. Export-control status is the strictest of the event, the conf and
    the ledger. A target that would take an export-controlled scan off site raises :class:`SafetyError`.
    Returns [] when the decision settings disable the target (the caller skips).
    """
    if target not in bl.recon_targets:
        raise ConfigError(f"{bl.id} has no reconstruction target {target!r}")
    eps = endpoints_for(bl, endpoints)
    raw: list[dict] = []
    for extra in event_extras:
        if not isinstance(extra, dict) or not isinstance(extra.get("file_path"), str):
            raise ConfError(f"asset event extra without a file_path: {extra!r}")
        raw.append({"file_path": extra["file_path"],
                    "export_controlled": _bool("export_controlled", extra.get("export_controlled", True))})
    if not raw and conf and conf.get("file_path"):
        raw.append({"file_path": conf["file_path"],
                    "export_controlled": _bool("is_export_control", conf.get("is_export_control", False))})
    if not raw:
        raise ConfError(f"{bl.id}_recon_{target}: no triggering asset event and no conf.file_path")
    decisions = bl.effective_decisions(decision_override)
    if not getattr(decisions, target):
        log.warning("%s reconstruction is disabled by the decision settings (Variable %s); nothing to do for %s",
                    target, bl.decision_variable, [r["file_path"] for r in raw])
        return []
    out = []
    dest_role = {"local": "data_scratch", "nersc": "nersc", "alcf": "alcf"}[target]
    for r in raw:
        try:
            scan = parse_scan_path(r["file_path"], bl.rules)
        except ScanPathError as exc:
            raise ConfError(str(exc)) from None
        known = ledger.export_controlled(bl.id, scan.relative)
        controlled = bool(r["export_controlled"]) or bool(known)
        decision = may_leave_site(export_controlled=controlled, from_site=eps["data"].site,
                                  to_site=eps[dest_role].site, what=scan.relative)
        if not decision.allowed:
            raise SafetyError(f"REFUSED {target} reconstruction: {decision.reason}. No data was moved and no job "
                              "was started.")
        out.append(scan_record(bl, scan, export_controlled=controlled, send_to_nersc=False))
    return out


# ---- local reconstruction (the embedded default) ------------------------------------------------------------
def local_paths(bl: Beamline, endpoints: dict[str, Endpoint], scan: dict) -> tuple[Path, Path, Path, Path]:
    """(raw .h5, output folder, TIFF dir, Zarr dir) on this machine; both data locations must be local."""
    eps = endpoints_for(bl, endpoints)
    for role in ("data", "data_scratch"):
        if eps[role].kind != "local":
            raise ConfigError(f"{bl.id}: local reconstruction needs a local {role} endpoint "
                              f"({eps[role].name} is {eps[role].kind}); run it where data832 is mounted")
    h5 = eps["data"].local_path(scan["paths"]["data"]["raw"])
    folder = eps["data_scratch"].local_path(scan["paths"]["data_scratch"]["folder"])
    tiff = eps["data_scratch"].local_path(scan["paths"]["data_scratch"]["tiff"])
    zarr = eps["data_scratch"].local_path(scan["paths"]["data_scratch"]["zarr"])
    return h5, folder, tiff, zarr


def record_output(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, scan: dict, role: str, what: str,
                  *, run_id: str | None = None) -> dict:
    """Record a reconstruction output (``tiff`` or ``zarr``) present at ``role`` in the ledger."""
    eps = endpoints_for(bl, endpoints)
    ep, path = eps[role], scan["paths"][role][what]
    item = inspect(backend_for(ep), ep, path)
    if item is None or not item.is_dir or item.files == 0:
        raise CopyMismatch(f"{what} output of {scan['relative']} is missing or empty at {role} ({ep.name}:{path})")
    ledger.record_copy(bl.id, role, scan[f"{what}_key"], scan=scan["relative"], endpoint=ep.name, path=path,
                       size=item.size, checksum=item.checksum, run_id=run_id)
    return {"files": item.files, "size": item.size, "checksum": item.checksum}


def record_present(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, scan: dict, role: str, *,
                   run_id: str | None = None) -> dict:
    """Record the raw scan as present at ``role`` (where it arrived without a transfer of ours)."""
    eps = endpoints_for(bl, endpoints)
    ep, path = eps[role], scan["paths"][role]["raw"]
    item = inspect(backend_for(ep), ep, path)
    if item is None or item.is_dir:
        raise CopyMismatch(f"{scan['relative']} is not a file at {role} ({ep.name}:{path})")
    ledger.record_copy(bl.id, role, scan["key"], scan=scan["relative"], endpoint=ep.name, path=path,
                       size=item.size, checksum=item.checksum, run_id=run_id)
    return {"size": item.size, "checksum": item.checksum, "files": 1}
