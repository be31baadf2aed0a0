"""The beamline DAGs' steps as plain functions: validate a new scan, record verified copies, decide which
reconstructions may run, run the local reconstruction. The DAG factory wires them into tasks; tests call them
directly. Everything passed between steps is a JSON-able ``dict`` (a *scan record*) so it can travel in XCom
and in asset-event extras.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from facility_data.als.beamline import Beamline, check_endpoints
from facility_data.als.inventory import (
    backend_for,
    inspect,
    live_evidence,
    recorded_evidence,
    transfer_evidence,
)
from facility_data.als.ledger import Ledger
from facility_data.als.paths import ScanPath, ScanPathError, check_scan_file, parse_scan_path, scan_from_key
from facility_data.conf import ConfError, check_conf
from facility_data.config import ConfigError
from facility_data.safety import ExportEvidence, SafetyError, export_status, may_scan_leave_site
from facility_data.transfer.endpoints import Endpoint, PathError

log = logging.getLogger(__name__)


class CopyMismatch(RuntimeError):
    """A copy reported as done does not match its source (size or checksum)."""


#: The closed schemas of the manual confs: key -> accepted JSON types (anything else is refused, naming the key).
NEW_FILE_CONF = {"file_path": (str,), "is_export_control": (bool,), "send_to_nersc": (bool,)}
RECON_CONF = {"file_path": (str, type(None)), "is_export_control": (bool, type(None)),
              "send_to_nersc": (bool, type(None))}


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


def canonical_scan(bl: Beamline, ep: Endpoint, role: str, scan: ScanPath) -> tuple[ScanPath, Path | None]:
    """The scan ``scan`` really is at location ``role`` and, on a local endpoint, its file on this machine.

    Identity is the data, not the name: on a local endpoint symlinks are resolved, and an alias is the scan it
    points to. An alias that leads outside the location's raw root is refused (:class:`SafetyError`).
    """
    if ep.local_root is None:
        return scan, None
    if ep.kind != "local" and not ep.local_directory().is_dir():
        # Said to be mounted here, and it is not: hashing through Globus is impossible, so the scan's export
        # control could never be decided. Refuse loudly rather than treat the scan as unknown.
        raise ConfigError(f"endpoint {ep.name} is configured as mounted at {ep.local_directory()} (local_root), "
                          f"but that directory does not exist on this worker ({socket.gethostname()}): run this "
                          "task where the collection is mounted (include/placement.yaml) or remove local_root")
    loc = bl.location(role)
    root = ep.local_path(loc.subdir) if loc.subdir else ep.local_directory()
    try:
        given = ep.local_path(loc.path_of(scan.key))
    except PathError as exc:
        raise SafetyError(f"{scan.relative} is an alias that leads outside {ep.name}: {exc}") from None
    real, real_root = given.resolve(), root.resolve()
    if real_root not in real.parents:
        raise SafetyError(f"{scan.relative} is an alias of {real}, outside the raw root {real_root} of {ep.name}; "
                          "refused")
    key = real.relative_to(real_root).as_posix()
    if key == scan.key:
        return scan, given
    try:
        target = scan_from_key(key, bl.rules)
    except ScanPathError as exc:
        raise SafetyError(f"{scan.relative} is an alias of {real}, which is not a scan in the raw root "
                          f"({exc}); refused") from None
    log.warning("%s is an alias of %s: the scan is identified by its target", scan.relative, target.relative)
    return target, ep.local_path(loc.path_of(target.key))


def _check_file(local: Path, what: str) -> None:
    try:
        check_scan_file(local, what=what)
    except ScanPathError as exc:
        raise ConfError(str(exc)) from None


def _fingerprint(ep: Endpoint, path: str, local: Path | None, what: str) -> tuple[int | None, str | None]:
    """(size, "sha256:...") of a raw scan; the checksum is None where the backend cannot know it. A local file
    must be a regular HDF5 file (:func:`check_scan_file`)."""
    if local is not None:
        _check_file(local, what)
    item = inspect(backend_for(ep), ep, path)
    if item is None or item.is_dir:
        raise ConfError(f"{what} does not exist at {ep.name} (or is a directory)")
    checksum = item.checksum if item.checksum and item.checksum.startswith("sha256:") else None
    return item.size, checksum


def export_evidence(bl: Beamline, ledger: Ledger, relative: str, *, declared: bool | None, size: int | None,
                    checksum: str | None) -> ExportEvidence:
    """What the request and the ledger (by name and by content) say about one scan's export control."""
    return ExportEvidence(declared=declared, recorded=ledger.export_controlled(bl.id, relative),
                          same_content=ledger.same_content(size, checksum) if checksum and size is not None else {},
                          fingerprinted=bool(checksum) and size is not None)


def validate_new_scan(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, conf: dict) -> dict:
    """Validate a new-file conf (file_path, is_export_control, send_to_nersc) and record the scan's status.

    Checks, in order and before anything moves: the closed schema (unknown keys, types), the path contract
    (under the raw root, no traversal, .h5, naming rules), that the source is a real HDF5 file (not a symlink,
    directory, FIFO or device) and its content fingerprint. The only write is the ledger row stating the scan's
    export-control status and fingerprint; a scan with the bytes of an export-controlled scan is export-controlled
    whatever the conf says.
    """
    conf = check_conf(conf, NEW_FILE_CONF, what=f"{bl.id}_new_file")
    if conf.get("file_path") in (None, ""):
        raise ConfError("conf.file_path is required: the watcher path of the new scan, e.g. "
                        f"{bl.rules.raw_root}/<PROPOSAL>-<digits>_<user>/<YYYYMMDD_HHMMSS_name>.h5")
    requested = conf.get("is_export_control", False)
    send_to_nersc = conf.get("send_to_nersc", bl.send_to_nersc)
    try:
        scan = parse_scan_path(conf["file_path"], bl.rules)
    except ScanPathError as exc:
        raise ConfError(str(exc)) from None
    src_ep = endpoints_for(bl, endpoints)[bl.source_role]
    source = bl.location(bl.source_role)
    real, local = canonical_scan(bl, src_ep, bl.source_role, scan)
    if real != scan:
        raise ConfError(f"file_path {conf['file_path']!r} is a symbolic link alias of {real.relative}; a new scan "
                        "must be the real file")
    what = f"scan {scan.relative} (from {conf['file_path']!r})"
    if local is not None and not local.exists():
        raise ConfError(f"{what} does not exist at the acquisition endpoint")
    size, checksum = _fingerprint(src_ep, source.path_of(scan.key), local, what)
    twins = ledger.same_content(size, checksum) if checksum else {}
    controlled_twins = sorted(n for n, ec in twins.items() if ec and n != f"{bl.id}:{scan.relative}")
    status = ledger.record_scan(bl.id, scan.relative, export_controlled=requested or bool(controlled_twins),
                                file_path=conf["file_path"], size=size, checksum=checksum,
                                send_to_nersc=send_to_nersc)
    if status and not requested:
        log.warning("%s is export-controlled (%s) although the conf does not say so; it stays at ALS",
                    scan.relative, f"same content as {controlled_twins}" if controlled_twins else "recorded before")
    record = scan_record(bl, scan, export_controlled=status, send_to_nersc=send_to_nersc)
    record["fingerprint"] = {"size": size, "checksum": checksum}
    log.info("new scan %s (%s): export_controlled=%s send_to_nersc=%s, found at %s:%s (%s B, %s)", scan.relative,
             conf["file_path"], status, send_to_nersc, src_ep.name, source.path_of(scan.key), size,
             checksum or "checksum unknown")
    return record


def record_copy(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, scan: dict, *, source: str,
                destination: str, what: str = "raw", run_id: str | None = None,
                transfer: dict | None = None) -> dict:
    """Verify that ``destination`` holds the same bytes as ``source`` and record both copies in the ledger.

    ``what`` is ``raw``, ``tiff`` or ``zarr``. Size must match; checksums must match when both are knowable.
    A mismatch raises :class:`CopyMismatch` (the transfer is not trusted as done).

    Each copy's checksum is recorded with its evidence (see :mod:`facility_data.als.inventory`): computed from the
    bytes where they can be read; for a Globus destination, ``transfer`` (the GlobusTransferOperator's result)
    names the task that Globus must confirm SUCCEEDED with verify_checksum, and the checksum is the source's known
    one (live, the ledger's verified one, or the raw scan's fingerprint). Without evidence the copy is recorded
    with no trusted checksum, so the prune sweep keeps what only it would vouch for.
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
    (_, _, a), (dst_ep, dst_path, b) = found[source], found[destination]
    if a.size != b.size:
        raise CopyMismatch(f"{what} of {scan['relative']}: {destination} holds {b.size} B, {source} {a.size} B")
    if a.checksum and b.checksum and a.checksum != b.checksum:
        raise CopyMismatch(f"{what} of {scan['relative']}: checksum at {destination} differs from {source}")
    evidence = {role: live_evidence(item) or recorded_evidence(ledger, bl.id, role, key, item.size)[0]
                for role, (_, _, item) in found.items()}
    fingerprint = scan.get("fingerprint") or {}
    known = (evidence[source].checksum if evidence[source] else None) or \
        (fingerprint.get("checksum") if what == "raw" and fingerprint.get("size") == a.size else None)
    why = ""
    if evidence[destination] is None and dst_ep.kind == "globus":
        evidence[destination], why = transfer_evidence(backend_for(dst_ep), dst_ep, dst_path, transfer, known)
    checksum = a.checksum or b.checksum
    for role, (ep, path, item) in found.items():
        ev = evidence[role]
        ledger.record_copy(bl.id, role, key, scan=scan["relative"], endpoint=ep.name, path=path, size=item.size,
                           checksum=ev.checksum if ev else item.checksum or checksum, run_id=run_id,
                           checksum_algorithm=ev.algorithm if ev else None, verified_by=ev.verified_by if ev else None)
    ev = evidence[destination]
    log.info("verified %s of %s: %s:%s == %s:%s (%d B, %s)", what, scan["relative"], found[source][0].name,
             found[source][1], dst_ep.name, dst_path, b.size,
             f"{ev.checksum} by {ev.verified_by}" if ev else f"checksum not verified there: {why or 'unknown'}")
    return {"size": b.size, "checksum": ev.checksum if ev else checksum, "files": b.files,
            "verified_by": ev.verified_by if ev else None}


def leave_site_decision(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, scan: dict, role: str):
    """The safety policy's answer for a new-file scan record going from data to location ``role``, from the status
    in the record (as validated), the ledger's (by name and by content) and the fingerprint together.

    A refusal because the scan is export-controlled is returned (the scan stays, as it must); a scan whose status
    is not known for sure raises :class:`SafetyError`, so the run fails loudly instead of guessing.
    """
    eps = endpoints_for(bl, endpoints)
    fp = scan.get("fingerprint") or {}
    evidence = export_evidence(bl, ledger, scan["relative"], declared=scan["export_controlled"],
                               size=fp.get("size"), checksum=fp.get("checksum"))
    decision = may_scan_leave_site(evidence, from_site=eps["data"].site, to_site=eps[role].site,
                                   what=scan["relative"])
    if not decision.allowed and export_status(evidence)[0] is None:
        raise SafetyError(f"REFUSED copy to {role}: {decision.reason}. The scan stays at ALS.")
    return decision


def nersc_copy_decision(bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger,
                        scan: dict) -> tuple[bool, str]:
    """Should the raw file go data -> NERSC? Never when export-controlled (nor of unknown status, which raises);
    never when send_to_nersc is false."""
    if "nersc" not in bl.locations:
        return False, f"{bl.id} has no NERSC location"
    decision = leave_site_decision(bl, endpoints, ledger, scan, "nersc")
    if not decision.allowed:
        return False, decision.reason
    refusal = send_to_nersc_refusal(bl, scan["relative"], scan["send_to_nersc"])
    if refusal:
        return False, refusal
    return True, decision.reason


def send_to_nersc_refusal(bl: Beamline, relative: str, declared: bool | None, source: str = "") -> str | None:
    """Why scan ``relative`` must not go to NERSC (its ``send_to_nersc`` is false), or None. ``declared`` None
    (not said) means the beamline's default. Export control is separate: :func:`leave_site_decision`."""
    wanted = bl.send_to_nersc if declared is None else declared
    if wanted:
        return None
    said = f" ({source})" if source else ("" if declared is not None else " (the beamline's default)")
    return f"send_to_nersc is false for {relative}{said}"


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
    conf = check_conf(conf, RECON_CONF, what=f"{bl.id}_recon_{target}")
    raw: list[dict] = []
    for extra in event_extras:
        if not isinstance(extra, dict) or not isinstance(extra.get("file_path"), str):
            raise ConfError(f"asset event extra without a file_path: {extra!r}")
        declared = extra.get("export_controlled", True)  # an event that does not say is treated as controlled
        if not isinstance(declared, bool):
            raise ConfError(f"asset event extra export_controlled must be true or false, got {declared!r}")
        nersc = extra.get("send_to_nersc")
        if not isinstance(nersc, (bool, type(None))):
            raise ConfError(f"asset event extra send_to_nersc must be true or false, got {nersc!r}")
        raw.append({"file_path": extra["file_path"], "declared": declared, "send_to_nersc": nersc,
                    "said_by": "the new-file run's asset event"})
    if not raw and conf.get("file_path"):
        raw.append({"file_path": conf["file_path"], "declared": conf.get("is_export_control"),
                    "send_to_nersc": conf.get("send_to_nersc"), "said_by": "conf.send_to_nersc"})
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
            given = parse_scan_path(r["file_path"], bl.rules)
        except ScanPathError as exc:
            raise ConfError(str(exc)) from None
        try:
            scan, local = canonical_scan(bl, eps["data"], "data", given)
        except SafetyError as exc:
            raise SafetyError(f"REFUSED {target} reconstruction: {exc}. No data was moved and no job was "
                              "started.") from None
        if target == "nersc":
            nersc, said_by = r["send_to_nersc"], r["said_by"]
            if nersc is None:  # not said by the event or the conf: what the scan's new-file run asked for
                nersc, said_by = ledger.send_to_nersc(bl.id, scan.relative), "recorded by the new-file run"
            refusal = send_to_nersc_refusal(bl, scan.relative, nersc, said_by if nersc is not None else "")
            if refusal:
                raise SafetyError(f"REFUSED nersc reconstruction: {refusal}. No data was moved and no job was "
                                  "started.")
        what = f"scan {scan.relative} (from {r['file_path']!r})"
        size = checksum = None
        if eps[dest_role].site != eps["data"].site:  # hashing is needed only where the scan would leave
            size, checksum = _fingerprint(eps["data"], bl.location("data").path_of(scan.key), local, what)
        elif local is not None:
            _check_file(local, what)
        evidence = export_evidence(bl, ledger, scan.relative, declared=r["declared"], size=size, checksum=checksum)
        decision = may_scan_leave_site(evidence, from_site=eps["data"].site, to_site=eps[dest_role].site,
                                       what=scan.relative)
        if not decision.allowed:
            raise SafetyError(f"REFUSED {target} reconstruction: {decision.reason}. No data was moved and no job "
                              "was started.")
        status = export_status(evidence)[0]
        # whatever is not known to be free stays marked controlled for every later transfer
        out.append(scan_record(bl, scan, export_controlled=status is not False, send_to_nersc=False))
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
    log.info("recorded %s at %s: %s:%s (%s B, %s)", scan["relative"], role, ep.name, path, item.size,
             item.checksum or "checksum unknown")
    return {"size": item.size, "checksum": item.checksum, "files": 1}
