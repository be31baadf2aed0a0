"""Catalogue a BL 8.3.2 scan in SciCat: RawDataset + OrigDatablock + thumbnail, idempotently.

``ingest_scan(hook, h5_path, ...)`` reads the Data Exchange HDF5 file locally (h5py), then:

1. **Extracts** the SciCat fields (sample file name, proposal, PI, experimenter name and email, beamline,
   instrument) and ``scientificMetadata`` (detector, optics, acquisition settings keyed by their HDF5 path, plus a
   10-point ``data_sample`` of per-projection readbacks such as ring current and stage positions). Missing
   metadata fields are logged as warnings and skipped (best effort, as on the beamline); a missing or unreadable
   file, or one without ``/exchange/data``, is an :class:`IngestInputError` before any request is sent.
2. **Access**: ``ownerGroup`` = the proposal, or ``owner_group_fallback`` (the beamline staff group, e.g.
   ``8.3.2``) when the proposal is absent or "None"; ``accessGroups`` = the beamline name and the fallback group.
   ``contactEmail`` is cleaned (spaces, commas, quotes removed); "None", empty or address-less values become
   ``unknown@example.com``.
3. **Paths**: the file is known to SciCat by its *storage* path: ``source_path`` (the path the acquisition side
   reported, default ``h5_path``) with its ``source_root`` prefix replaced by ``storage_root``. A source path
   outside ``source_root`` is an error (no blind string replace). ``sourceFolder`` is the storage folder.
4. **Creates**, each only if absent: the RawDataset (looked up by ``pid`` if given, else by ``sourceFolder`` +
   ``datasetName`` = the file stem), the OrigDatablock (looked up by the storage path among the dataset's blocks)
   and the thumbnail attachment (a log-scaled, autocontrasted PNG of the first projection). Rerunning converges.
   A 5xx, a dropped connection or a malformed answer to the dataset POST is followed by a lookup before anything
   is retried, since the server may have stored the dataset anyway.
   All requests go through pyscicat (``datasets_get_many``, ``datasets_create`` with its ``RawDataset`` model,
   ``datasets_origdatablock_create`` with ``CreateDatasetOrigDatablockDto``, ``datasets_attachment_create`` with
   ``Attachment``) on the hook's :class:`~facility_data.hooks.scicat.SciCatClient`.
5. **Never leaves a silent half state**: once a dataset exists, a failure raises :class:`SciCatIngestError`
   whose message lists exactly what exists (dataset pid, created now or before; datablock present or missing;
   thumbnail present or missing) and that a rerun completes it.

Returns the dataset pid. Callers that must not fail on a catalogue problem (data movement never waits for SciCat)
catch :data:`INGEST_ERRORS`.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import ValidationError
from pyscicat.model import Attachment, CreateDatasetOrigDatablockDto, DataFile, RawDataset

from facility_data.hooks.scicat import (
    SciCatAuthError,
    SciCatClient,
    SciCatError,
    SciCatHTTPError,
    SciCatResponseError,
    records,
)

log = logging.getLogger(__name__)

UNKNOWN_EMAIL = "unknown@example.com"
THUMBNAIL_CAPTION = "raw image"
DATA_FORMAT = "DX"

SCICAT_KEYS = {
    "file_name": "/measurement/sample/file_name",
    "instrument_name": "/measurement/instrument/instrument_name",
    "beamline": "/measurement/sample/experiment/beamline",
    "experiment_lead": "/measurement/sample/experiment/experiment_lead",
    "pi": "/measurement/sample/experiment/pi",
    "proposal": "/measurement/sample/experiment/proposal",
    "email": "/measurement/sample/experimenter/email",
    "experimenter": "/measurement/sample/experimenter/name",
}
SCIENTIFIC_KEYS = [
    "/measurement/sample/name",
    "/measurement/instrument/source/source_name",
    "/measurement/instrument/detector/model",
    "/measurement/instrument/detector/pixel_size",
    "/measurement/instrument/detector/dimension_x",
    "/measurement/instrument/detector/dimension_y",
    "/measurement/instrument/detector/binning_x",
    "/measurement/instrument/detector/binning_y",
    "/measurement/instrument/detector/temperature",
    "/measurement/instrument/detector/dark_field_value",
    "/measurement/instrument/detector/delay_time",
    "/measurement/instrument/detection_system/objective/camera_objective",
    "/measurement/instrument/detection_system/scintillator/scintillator_type",
    "/measurement/instrument/attenuator/setup/filter_y",
    "/measurement/instrument/camera_motor_stack/setup/tilt_motor",
    "/measurement/instrument/monochromator/setup/Z2",
    "/measurement/instrument/slits/setup/hslits_size",
    "/measurement/instrument/slits/setup/hslits_center",
    "/process/acquisition/name",
    "/process/acquisition/dark_fields/num_dark_fields",
    "/process/acquisition/flat_fields/num_flat_fields",
    "/process/acquisition/flat_fields/i0cycle",
    "/process/acquisition/rotation/num_angles",
    "/process/acquisition/rotation/range",
    "/process/acquisition/rotation/nhalfCir",
]
# Scalars or per-projection arrays; arrays are sampled at 10 points.
DATA_SAMPLE_KEYS = [
    "/measurement/instrument/monochromator/energy",
    "/measurement/instrument/detector/exposure_time",
    "/measurement/instrument/source/current",
    "/measurement/instrument/source/beam_intensity_incident",
    "/measurement/instrument/sample_motor_stack/setup/sample_x",
    "/measurement/instrument/sample_motor_stack/setup/axis1pos",
    "/measurement/instrument/sample_motor_stack/setup/axis2pos",
    "/measurement/instrument/camera_motor_stack/setup/camera_distance",
    "/measurement/instrument/time_stamp",
]
# Only these are expected on every scan; the rest vary by beamline configuration and are not worth a warning.
REQUIRED_FOR_CATALOGUE = ("proposal", "email", "pi", "beamline")


class IngestInputError(ValueError):
    """The scan file or the ingest parameters are unusable; nothing was sent to SciCat."""


class SciCatIngestError(SciCatError):
    """Ingest failed; the message says exactly what exists in SciCat (``state`` holds it as a dict)."""

    def __init__(self, message: str, *, state: dict[str, Any]):
        super().__init__(message)
        self.state = state


#: Everything ingest_scan raises for a SciCat or input problem (not programming errors).
INGEST_ERRORS = (SciCatError, IngestInputError)


def retryable(exc: BaseException) -> bool:
    """May a later try succeed with nobody fixing anything? No for a refused login, a 4xx answer, an unusable scan
    or connection (a ValueError, or no such connection), looked for through the causes (a half-done ingest wraps
    what stopped it); yes for the rest: SciCat unreachable, 5xx or garbled answers, and unexpected errors (the DAG's
    retries then run first, as for any task)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SciCatAuthError | ValueError | AirflowNotFoundException):
            return False
        if isinstance(seen, SciCatHTTPError) and not seen.is_server_error:
            return False
        seen = seen.__cause__
    return True


@dataclass
class ScanMetadata:
    """What the ingest reads from a scan file."""

    fields: dict[str, Any]  # SCICAT_KEYS names -> value (absent keys missing)
    scientific: dict[str, Any]  # JSON-safe scientificMetadata
    thumbnail_png: bytes
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- reading
def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()] if value.ndim else _json_safe(value.item())
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _read_value(ds) -> Any:
    """A dataset's value: 1-element datasets (how the beamline stores scalars) become scalars."""
    value = ds[()]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    return _json_safe(value)


def build_thumbnail(image: np.ndarray, *, max_size: int = 512) -> bytes:
    """PNG bytes of a projection: log-scaled, autocontrasted (0.1 % cut), at most ``max_size`` px per side."""
    from PIL import Image, ImageOps

    img = np.asarray(image, dtype=np.float64)
    img = np.log(img - img.min() + 1.001)
    top = img.max()
    img8 = (255 * img / top if top > 0 else np.zeros_like(img)).astype(np.uint8)
    pil = ImageOps.autocontrast(Image.fromarray(img8), cutoff=0.1)
    pil.thumbnail((max_size, max_size))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def extract_metadata(h5_path: Path | str) -> ScanMetadata:
    """Read the SciCat fields, scientificMetadata and thumbnail of a scan (no network)."""
    import h5py

    path = Path(h5_path)
    if not path.is_file():
        raise IngestInputError(f"scan file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise IngestInputError(f"{path} is not a readable HDF5 file: {exc}") from exc
    warnings: list[str] = []
    with f:
        data = f.get("/exchange/data")
        if data is None or data.ndim != 3 or data.shape[0] == 0:
            raise IngestInputError(f"{path}: no projections at /exchange/data (not a Data Exchange scan?)")
        fields = {}
        for name, key in SCICAT_KEYS.items():
            if key in f:
                fields[name] = _read_value(f[key])
            elif name in REQUIRED_FOR_CATALOGUE:
                warnings.append(f"{key} missing")
        scientific: dict[str, Any] = {key: _read_value(f[key]) for key in SCIENTIFIC_KEYS if key in f}
        sample = {}
        for key in DATA_SAMPLE_KEYS:
            if key in f:
                arr = np.ravel(f[key][()])
                step = max(1, arr.size // 10)
                sample[key] = _json_safe(arr[::step][:10])
        scientific["data_sample"] = sample
        if "file_name" in fields:
            scientific["/measurement/sample/file_name"] = fields["file_name"]
        thumbnail = build_thumbnail(data[0])
    for w in warnings:
        log.warning("%s: %s", path, w)
    return ScanMetadata(fields, scientific, thumbnail, warnings)


# ---------------------------------------------------------------------------------------------- field rules
def clean_email(raw: Any) -> str:
    """The beamline's email field, cleaned; a placeholder when it is empty, "None" or not an address."""
    email = re.sub(r"[\s,'\"]", "", str(raw or ""))
    if not email or email.upper() == "NONE" or not re.fullmatch(r"[^@]+@[^@]+\.[^@]+", email):
        return UNKNOWN_EMAIL
    return email


def _valid(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text if text and text.upper() != "NONE" else None


def access_controls(beamline: Any, proposal: Any, owner_group_fallback: str) -> tuple[str, list[str]]:
    """``(ownerGroup, accessGroups)``: proposal-owned, readable by the beamline and its staff group."""
    beamline_name = _valid(str(beamline).replace("'", "").strip(" ,") if beamline is not None else None)
    owner = _valid(proposal) or owner_group_fallback
    groups = [g for g in (beamline_name, owner_group_fallback) if g]
    return owner, list(dict.fromkeys(groups))


def search_terms(name: str) -> list[str]:
    return [t.lower() for t in re.split(r"[^A-Za-z0-9]", name) if t]


def storage_path(source_path: str | Path, source_root: str, storage_root: str) -> PurePosixPath:
    """Rewrite ``source_root/<rest>`` to ``storage_root/<rest>`` (identity when both are empty)."""
    src = PurePosixPath(str(source_path))
    if ".." in src.parts:
        raise IngestInputError(f"source path {src} contains '..'")
    if not source_root and not storage_root:
        return src
    if not source_root or not storage_root:
        raise IngestInputError("source_root and storage_root must be given together (both or neither)")
    try:
        rest = src.relative_to(PurePosixPath(source_root))
    except ValueError:
        raise IngestInputError(f"source path {src} is not under source_root {source_root}") from None
    return PurePosixPath(storage_root) / rest


def build_dataset(meta: ScanMetadata, *, name: str, stored: PurePosixPath, size: int, mtime: float,
                  owner_group: str, access_groups: list[str]) -> dict[str, Any]:
    """The RawDataset fields (SciCat v3/v4 names; every one is a field of pyscicat's ``RawDataset``)."""
    f = meta.fields
    pi = _valid(f.get("pi")) or "Unknown"
    terms = search_terms(str(f.get("file_name") or name))
    body = {
        "type": "raw",
        "datasetName": name,
        "owner": pi,
        "principalInvestigator": pi,
        "contactEmail": clean_email(f.get("email")),
        "creationLocation": _valid(f.get("instrument_name")) or _valid(f.get("beamline")) or "Unknown",
        "dataFormat": DATA_FORMAT,
        "sourceFolder": str(stored.parent),
        "size": size,
        "numberOfFiles": 1,
        "creationTime": datetime.fromtimestamp(mtime, tz=UTC).isoformat(),
        "description": " ".join(terms),
        "keywords": terms,
        "isPublished": False,
        "scientificMetadata": meta.scientific,
        "ownerGroup": owner_group,
        "accessGroups": access_groups,
    }
    if _valid(f.get("proposal")):
        body["proposalId"] = _valid(f.get("proposal"))
    return body


# --------------------------------------------------------------------------------------------------- ingest
def _client(hook_or_client) -> SciCatClient:
    return hook_or_client.get_conn() if hasattr(hook_or_client, "get_conn") else hook_or_client


def _find(client: SciCatClient, *, pid: str | None, where: dict[str, Any]) -> str | None:
    if pid:
        try:
            found = client.datasets_get_one(pid)
        except SciCatHTTPError as exc:
            if exc.status != 404:
                raise
            found = None  # v3 answers 404 for an unknown pid, v4 an empty 200
        return found.get("pid", pid) if isinstance(found, dict) else None
    matches = client.datasets_get_many(where)
    if len(matches) > 1:
        log.warning("%d SciCat datasets match %s: %s; using the first", len(matches), where,
                    [m.get("pid") for m in matches])
    return matches[0].get("pid") if matches else None


def _create_dataset(client: SciCatClient, dataset, *, pid: str | None, where: dict, attempts: int) -> str:
    """POST the dataset; after an unclear failure, look it up before trying again."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return client.datasets_create(dataset)
        except SciCatHTTPError as exc:
            if not exc.is_server_error:
                raise
            last = exc
        except SciCatResponseError as exc:
            last = exc
        except SciCatError as exc:  # connection dropped
            last = exc
        found = _find(client, pid=pid, where=where)
        if found:
            log.warning("SciCat dataset creation answered %s but the dataset exists (%s); continuing", last, found)
            return found
        log.warning("SciCat dataset creation failed (%s) and nothing was stored; attempt %d/%d", last,
                    attempt + 1, attempts)
    raise SciCatIngestError(f"SciCat dataset for {where} was not created after {attempts} attempts ({last}); "
                            "nothing exists in SciCat for this scan", state={"dataset": None})


def ingest_scan(hook, h5_path: Path | str, *, source_path: str | Path | None = None, source_root: str = "",
                storage_root: str = "", owner_group_fallback: str = "8.3.2", pid: str | None = None,
                create_attempts: int = 3) -> str:
    """Catalogue the scan at ``h5_path`` (read locally) in SciCat and return the dataset pid.

    ``hook`` is a :class:`facility_data.hooks.scicat.SciCatHook` (or anything with ``get_conn()``) or a
    :class:`SciCatClient`. See the module docstring for the rules; all input checks happen before any request.
    """
    h5_path = Path(h5_path)
    if not owner_group_fallback:
        raise IngestInputError("owner_group_fallback must name the beamline staff group (e.g. '8.3.2')")
    stored = storage_path(source_path if source_path is not None else h5_path, source_root, storage_root)
    meta = extract_metadata(h5_path)
    stat = h5_path.stat()
    owner, groups = access_controls(meta.fields.get("beamline"), meta.fields.get("proposal"), owner_group_fallback)
    name = h5_path.stem
    body = build_dataset(meta, name=name, stored=stored, size=stat.st_size, mtime=stat.st_mtime,
                         owner_group=owner, access_groups=groups)
    when = datetime.fromtimestamp(stat.st_mtime, tz=UTC).isoformat()
    try:  # every model is built before the first request
        dataset = RawDataset(**body, pid=pid)
        block = CreateDatasetOrigDatablockDto(size=stat.st_size, dataFileList=[
            DataFile(path=str(stored), size=stat.st_size, time=when)])
    except ValidationError as exc:
        raise IngestInputError(f"{h5_path}: the SciCat records cannot be built: {exc}") from exc
    thumbnail = "data:image/png;base64," + base64.b64encode(meta.thumbnail_png).decode()
    where = {"sourceFolder": body["sourceFolder"], "datasetName": name}

    client = _client(hook)
    existing = _find(client, pid=pid, where=where)
    if existing:
        dataset_pid, origin = existing, "already existed"
        log.info("SciCat dataset %s for %s already exists", dataset_pid, stored)
    else:
        dataset_pid, origin = _create_dataset(client, dataset, pid=pid, where=where, attempts=create_attempts), \
            "created by this run"
        log.info("created SciCat dataset %s for %s", dataset_pid, stored)

    state = {"dataset": dataset_pid, "dataset_origin": origin, "origdatablock": "not checked", "thumbnail": "not checked"}
    try:
        blocks = records(client.datasets_origdatablocks_get_one(dataset_pid), "datasets_origdatablocks_get_one")
        has_block = any(str(df.get("path")) == str(stored) for b in blocks for df in (b.get("dataFileList") or []))
        state["origdatablock"] = "present" if has_block else "missing"
        if not has_block:
            client.datasets_origdatablock_create(dataset_pid, block)
            state["origdatablock"] = "present"
            log.info("added origdatablock %s to SciCat dataset %s", stored, dataset_pid)
        attachments = client.datasets_attachments_get(dataset_pid)
        has_thumb = any(a.get("caption") == THUMBNAIL_CAPTION for a in attachments)
        state["thumbnail"] = "present" if has_thumb else "missing"
        if not has_thumb:
            client.datasets_attachment_create(Attachment(datasetId=dataset_pid, thumbnail=thumbnail,
                                                         caption=THUMBNAIL_CAPTION, ownerGroup=owner,
                                                         accessGroups=groups))
            state["thumbnail"] = "present"
            log.info("attached thumbnail to SciCat dataset %s", dataset_pid)
    except (SciCatError, AttributeError) as exc:  # AttributeError: a record without .get in a list answer
        raise SciCatIngestError(
            f"SciCat ingest of {h5_path} incomplete: dataset {dataset_pid} exists ({origin}); "
            f"origdatablock {state['origdatablock']}; thumbnail {state['thumbnail']}. Cause: {exc}. "
            "Rerunning the ingest completes it (it finds the dataset by sourceFolder and datasetName).",
            state=state) from exc
    if meta.warnings:
        log.warning("SciCat dataset %s ingested with metadata warnings: %s", dataset_pid, "; ".join(meta.warnings))
    return dataset_pid
