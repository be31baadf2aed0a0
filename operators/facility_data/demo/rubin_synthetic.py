"""A synthetic LSSTCam night in real SQLite Butler repos and a real embargo store (local directory or S3).

Built by hand from dimension records (no obs_lsst): instrument, detectors, physical_filter, day_obs, group, exposures
with timespans, one-to-one visits with visit_* records and regions, and a skymap whose tracts overlap some visits and
not others (NoTract). Each exposure's folder in the store holds one small FITS file per detector, a JSON sidecar per
FITS file and ``<obs_id>_expectedSensors.json``; the source ("embargo") Butler's raw / guider_raw datasets point at
those objects (``direct`` ingest), as the summit's ingest service does at USDF.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from facility_data.config import temporary_env
from facility_data.rubin.policy import ButlerRef, EmbargoPolicy, PolicyRow, RucioTarget, Storage
from facility_data.rubin.storage import EmbargoStore, LocalStore, folder_key

INSTRUMENT = "LSSTCam"
SKYMAP = "lsst_cells_v1"
FORMATTER = "facility_data.rubin.formatter.FitsBytesFormatter"
#: Tracts of the synthetic skymap: id -> (ra_min, ra_max, dec_min, dec_max) in degrees. Pointings walk in RA from
#: 10 deg in 0.3 deg steps, so the first exposures fall in tract 100, some in 100 and 101, later ones in none.
TRACTS = {100: (9.0, 12.0, -32.0, -28.0), 101: (11.5, 14.0, -32.0, -28.0)}
CALIB_WHERE = "not exposure.can_see_sky AND exposure.observation_type IN ('bias', 'dark', 'flat', 'flat_dark')"


@dataclass(frozen=True)
class Detector:
    id: int
    name: str
    purpose: str  # SCIENCE, WAVEFRONT or GUIDER


def detector_layout(n: int) -> list[Detector]:
    """``n`` detectors shaped like LSSTCam's: 205 -> 189 science, 8 wavefront, 8 guider; fewer scale down."""
    if n < 1:
        raise ValueError("need at least one detector")
    n_guider = min(8, n // 5)
    n_wave = min(8, (n - n_guider) // 10)
    out = []
    for i in range(n - n_guider - n_wave):
        out.append(Detector(i, f"R{1 + i // 9:02d}_S{(i % 9) // 3}{i % 3}", "SCIENCE"))
    for j in range(n_wave):
        out.append(Detector(189 + j, f"R{j // 2:02d}_SW{j % 2}", "WAVEFRONT"))
    for k in range(n_guider):
        out.append(Detector(197 + k, f"R{k // 2:02d}_SG{k % 2}", "GUIDER"))
    return out


def _card_value(v) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    return "'" + v.replace("'", "''") + "'" if isinstance(v, str) else str(v)


def fits_bytes(obs_id: str, detector: Detector, size: int, extra: dict | None = None) -> bytes:
    """A valid minimal FITS file of about ``size`` bytes (header + 8-bit data, padded to 2880-byte blocks); ``extra``
    cards (str, int, float, bool values) follow the identifying ones."""
    cards = [("SIMPLE", "T"), ("BITPIX", "8"), ("NAXIS", "1"), ("NAXIS1", None), ("OBSID", f"'{obs_id}'"),
             ("DETNAME", f"'{detector.name}'"), ("CCDSLOT", f"'{detector.purpose}'"),
             *((k, _card_value(v)) for k, v in (extra or {}).items() if k not in ("OBSID", "DETNAME", "CCDSLOT"))]
    ndata = max(0, size - 2880)
    header = b"".join(f"{k:<8}= {v if v is not None else ndata:>20}".ljust(80).encode() for k, v in cards)
    header = (header + b"END".ljust(80)).ljust(2880, b" ")
    seed = hashlib.sha256(f"{obs_id}/{detector.name}".encode()).digest()
    data = (seed * (ndata // len(seed) + 1))[:ndata]
    return header + data + b"\0" * (-len(data) % 2880)


@dataclass
class Night:
    """What :func:`build_night` made: enough for tests and the demo to find and check everything."""

    day_obs: int
    instrument: str
    source_repo: Path
    destination_repos: list[Path]
    store: EmbargoStore
    destination_prefix: Path
    obs_ids: list[str] = field(default_factory=list)
    exposure_ids: dict[str, int] = field(default_factory=dict)
    ends: dict[str, datetime] = field(default_factory=dict)  # obs_id -> exposure end (UTC)
    incomplete: set[str] = field(default_factory=set)
    without_guider: set[str] = field(default_factory=set)
    calibs: set[str] = field(default_factory=set)
    files: int = 0
    bytes: int = 0

    def release_range(self, *, embargo_hours: float = 80.0, settle_minutes: float = 5.0,
                      step_minutes: int = 15) -> tuple[datetime, datetime]:
        """[first, last) window edges (aligned to the 15-minute schedule) holding every on-sky exposure's release:
        a backfill over this range unembargoes the night (calibs are released right after they end)."""
        lag = timedelta(hours=embargo_hours, minutes=settle_minutes)
        first = min(self.ends.values()) + lag
        last = max(self.ends.values()) + lag
        first = first.replace(minute=first.minute - first.minute % step_minutes, second=0, microsecond=0)
        last = last.replace(minute=last.minute - last.minute % step_minutes, second=0, microsecond=0)
        return first, last + timedelta(minutes=step_minutes)

    def policy(self, *, rucio_rse: str = "SLAC_RAW_DISK", rucio_scope: str = "raw", embargo_hours: float = 80.0,
               settle_minutes: float = 5.0, storage: Storage | None = None, rucio_conn_id: str = "rucio_default",
               destination_prefix: str | Path | None = None) -> EmbargoPolicy:
        """A policy over this night's repos and store, addressed by URI (no Airflow connection needed)."""
        if storage is None:
            if not isinstance(self.store, LocalStore):
                raise ValueError("an S3 night needs an explicit Storage (with its aws connection id)")
            storage = Storage(kind="local", root=str(self.store.root))
        return EmbargoPolicy(
            rows=[PolicyRow(instrument=self.instrument, where=CALIB_WHERE, embargo_hours=0),
                  PolicyRow(instrument=self.instrument, embargo_hours=embargo_hours)],
            source=ButlerRef(uri=str(self.source_repo)),
            storage=storage,
            destination_prefix=str(destination_prefix or self.destination_prefix),
            destinations=[ButlerRef(uri=str(p)) for p in self.destination_repos],
            rucio=RucioTarget(conn_id=rucio_conn_id, rse=rucio_rse, scope=rucio_scope),
            settle_minutes=settle_minutes,
        )


def _tai(dt: datetime):
    from astropy.time import Time

    return Time(dt.astimezone(UTC).replace(tzinfo=None), scale="utc").tai


def _box(ra0: float, ra1: float, dec0: float, dec1: float):
    from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

    corners = [(ra0, dec0), (ra1, dec0), (ra1, dec1), (ra0, dec1)]
    return ConvexPolygon([UnitVector3d(LonLat.fromDegrees(r, d)) for r, d in corners])


_templates: dict[int, Path] = {}


def ensure_repo(root: Path, detectors: list[Detector]):
    """Create (once) a SQLite repo with the static records: instrument, detectors, filter, visit systems, skymap.

    New repos are copies of a per-process template (creating a registry costs ~100 SQLite commits)."""
    import shutil
    import tempfile

    from lsst.daf.butler import Butler

    root = Path(root)
    if not (root / "butler.yaml").exists():
        template = _templates.get(len(detectors))
        if template is None or not (template / "butler.yaml").exists():
            template = Path(tempfile.mkdtemp(prefix="rubin-repo-template-")) / "repo"
            template.mkdir()
            Butler.makeRepo(str(template))
            _static_records(Butler.from_config(str(template), writeable=True), detectors)
            _templates[len(detectors)] = template
        shutil.copytree(template, root, dirs_exist_ok=True)
    butler = Butler.from_config(str(root), writeable=True)
    _static_records(butler, detectors)
    return butler


def _static_records(butler, detectors: list[Detector]) -> None:
    from lsst.daf.butler import DatasetType

    reg = butler.registry
    reg.syncDimensionData("instrument", {"name": INSTRUMENT, "visit_max": 6050123199999, "visit_system": 2,
                                         "exposure_max": 6050123199999, "detector_max": 1000,
                                         "class_name": "lsst.obs.lsst.LsstCam"})
    reg.insertDimensionData("detector", *[
        {"instrument": INSTRUMENT, "id": d.id, "full_name": d.name, "name_in_raft": d.name.split("_")[1],
         "raft": d.name.split("_")[0], "purpose": d.purpose} for d in detectors], skip_existing=True)
    reg.syncDimensionData("physical_filter", {"instrument": INSTRUMENT, "name": "r_57", "band": "r"})
    for vs_id, name in ((0, "one-to-one"), (2, "by-seq-start-end")):
        reg.syncDimensionData("visit_system", {"instrument": INSTRUMENT, "id": vs_id, "name": name})
    reg.syncDimensionData("skymap", {"name": SKYMAP, "hash": hashlib.sha1(SKYMAP.encode()).digest(),
                                     "tract_max": 20000, "patch_nx_max": 10, "patch_ny_max": 10})
    for tract, box in TRACTS.items():
        reg.syncDimensionData("tract", {"skymap": SKYMAP, "id": tract, "region": _box(*box)})
    dims = ["instrument", "exposure", "detector"]
    for name in ("raw", "guider_raw"):
        butler.registry.registerDatasetType(DatasetType(name, dims, "StructuredDataDict",
                                                        universe=butler.dimensions))


def exposure_id(day_obs: int, seq: int) -> int:
    return day_obs * 100000 + seq


def obs_id_for(day_obs: int, seq: int) -> str:
    return f"MC_O_{day_obs}_{seq:06d}"


def build_night(site_root: str | Path, *, day_obs: int, n_exposures: int = 20, detectors: int = 205,
                file_size: int = 8640, start: datetime | None = None, store: EmbargoStore | None = None,
                destinations: int = 1, incomplete: tuple[int, ...] = (), without_guider: tuple[int, ...] = (),
                calibs: tuple[int, ...] = (), cadence_s: float = 36.0, exposure_s: float = 30.0,
                first_seq: int = 1) -> Night:
    """Write a night of ``n_exposures`` exposures into the site's embargo store and source Butler.

    Layout under ``site_root``: ``embargo/rubin-summit`` (local store, unless ``store`` is given), ``butler/embargo``
    (source repo), ``butler/main`` [, ``butler/main2`` ...] (destinations), ``main`` (destination prefix).
    ``incomplete``/``without_guider``/``calibs`` are sequence numbers: an incomplete exposure lacks its last science
    file (object and dataset) though expectedSensors lists it; one without guider data has no guider sensors at all;
    a calib is a bias that cannot see the sky. ``start`` is the first exposure's begin (UTC); by default 02:00 UTC the
    day after ``day_obs``.
    """

    with _resources_env(store):
        return _build_night(site_root, day_obs, n_exposures, detectors, file_size, start, store, destinations,
                            incomplete, without_guider, calibs, cadence_s, exposure_s, first_seq)


@contextmanager
def _resources_env(store):
    """For an S3 store, lsst-resources (the Butler's ingest checks) needs the store's endpoint and credentials,
    which it only reads from the environment; set them for the duration of the build."""
    if store is None or isinstance(store, LocalStore):
        yield
        return
    creds = store.client._request_signer._credentials
    env = {"S3_ENDPOINT_URL": store.client.meta.endpoint_url, "AWS_ACCESS_KEY_ID": creds.access_key,
           "AWS_SECRET_ACCESS_KEY": creds.secret_key}
    with temporary_env(env):
        yield


def _build_night(site_root, day_obs, n_exposures, detectors, file_size, start, store, destinations, incomplete,
                 without_guider, calibs, cadence_s, exposure_s, first_seq) -> Night:
    from lsst.daf.butler import DatasetIdGenEnum, DatasetRef, FileDataset, Timespan

    site_root = Path(site_root)
    layout = detector_layout(detectors)
    store = store or LocalStore(site_root / "embargo" / "rubin-summit")
    source = ensure_repo(site_root / "butler" / "embargo", layout)
    dests = [site_root / "butler" / ("main" if i == 0 else f"main{i + 1}") for i in range(destinations)]
    for d in dests:
        ensure_repo(d, layout)
    day = datetime.strptime(str(day_obs), "%Y%m%d").replace(tzinfo=UTC)
    start = start or day + timedelta(days=1, hours=2)
    night = Night(day_obs, INSTRUMENT, site_root / "butler" / "embargo", dests, store, site_root / "main")
    reg = source.registry
    reg.syncDimensionData("day_obs", {"instrument": INSTRUMENT, "id": day_obs, "timespan": Timespan(
        _tai(day + timedelta(hours=12)), _tai(day + timedelta(hours=36)))})
    types = {t: reg.getDatasetType(t) for t in ("raw", "guider_raw")}

    for n in range(n_exposures):
        seq = first_seq + n
        obs_id, exp_id = obs_id_for(day_obs, seq), exposure_id(day_obs, seq)
        begin = start + timedelta(seconds=n * cadence_s)
        end = begin + timedelta(seconds=exposure_s)
        ra, dec = 10.0 + 0.3 * n, -30.0
        is_calib = seq in calibs
        group = begin.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        timespan = Timespan(_tai(begin), _tai(end))
        reg.syncDimensionData("group", {"instrument": INSTRUMENT, "name": group})
        common = {"instrument": INSTRUMENT, "id": exp_id, "day_obs": day_obs, "physical_filter": "r_57",
                  "seq_num": seq, "exposure_time": exposure_s, "target_name": "synthetic",
                  "observation_reason": "bias" if is_calib else "science", "science_program": "SYNTH",
                  "azimuth": 180.0, "zenith_angle": 20.0, "timespan": timespan}
        reg.insertDimensionData("exposure", {
            **common, "obs_id": obs_id, "group": group, "dark_time": exposure_s + 0.9,
            "observation_type": "bias" if is_calib else "science", "seq_start": seq, "seq_end": seq,
            "tracking_ra": ra, "tracking_dec": dec, "sky_angle": 0.0, "has_simulated": True,
            "can_see_sky": not is_calib}, skip_existing=True)
        members = [d for d in layout if not (seq in without_guider and d.purpose == "GUIDER")]
        if not is_calib:
            reg.insertDimensionData("visit", {**common, "name": obs_id, "region": _box(ra - 0.2, ra + 0.2,
                                                                                      dec - 0.2, dec + 0.2)},
                                    skip_existing=True)
            reg.insertDimensionData("visit_definition", {"instrument": INSTRUMENT, "exposure": exp_id,
                                                         "visit": exp_id}, skip_existing=True)
            reg.insertDimensionData("visit_system_membership", *[
                {"instrument": INSTRUMENT, "visit_system": vs, "visit": exp_id} for vs in (0, 2)],
                skip_existing=True)
            reg.insertDimensionData("visit_detector_region", *[
                {"instrument": INSTRUMENT, "detector": d.id, "visit": exp_id,
                 "region": _box(ra - 0.2 + 0.001 * (d.id % 100), ra - 0.19 + 0.001 * (d.id % 100), dec - 0.01,
                                dec + 0.01)} for d in members if d.purpose == "SCIENCE"], skip_existing=True)

        folder = folder_key(INSTRUMENT, day_obs, obs_id)
        expected = {d.name: d.purpose for d in members}
        store.put(folder + f"{obs_id}_expectedSensors.json",
                  json.dumps({"obsId": obs_id, "expectedSensors": expected}, indent=1).encode())
        present = members
        if seq in incomplete:
            # the missing file is the last science detector
            missing = [d for d in members if d.purpose == "SCIENCE"][-1]
            present = [d for d in members if d is not missing]
        by_type: dict[str, list] = {"raw": [], "guider_raw": []}
        for d in present:
            # the sidecar holds header cards, as the summit's do; the FITS header carries them too
            cards = {"OBSID": obs_id, "DETNAME": d.name, "CCDSLOT": d.purpose, "INSTRUME": INSTRUMENT,
                     "DAYOBS": day_obs, "SEQNUM": seq, "DATE-BEG": begin.isoformat(), "DATE-END": end.isoformat()}
            data = fits_bytes(obs_id, d, file_size, cards)
            key = folder + f"{obs_id}_{d.name}.fits"
            store.put(key, data)
            sidecar = json.dumps(cards).encode()
            store.put(key.removesuffix(".fits") + ".json", sidecar)
            night.files += 2
            night.bytes += len(data) + len(sidecar)
            t = "guider_raw" if d.purpose == "GUIDER" else "raw"
            ref = DatasetRef(types[t], {"instrument": INSTRUMENT, "exposure": exp_id, "detector": d.id},
                             run=f"{INSTRUMENT}/raw/{'guider' if t == 'guider_raw' else 'all'}",
                             id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN)  # as raw ingest does
            by_type[t].append(FileDataset(path=store.uri(key), refs=[ref], formatter=FORMATTER))
        night.files += 1
        for datasets in by_type.values():
            if datasets:
                source.registry.registerRun(datasets[0].refs[0].run)
                source.ingest(*datasets, transfer="direct", record_validation_info=True)
        night.obs_ids.append(obs_id)
        night.exposure_ids[obs_id] = exp_id
        night.ends[obs_id] = end
        if seq in incomplete:
            night.incomplete.add(obs_id)
        if seq in without_guider:
            night.without_guider.add(obs_id)
        if is_calib:
            night.calibs.add(obs_id)
    return night


_used_days: set[int] = set()


def unique_day_obs(first_year: int = 1990, last_year: int = 2024) -> int:
    """A random day_obs not used before in this process, so tests sharing one Rucio server do not collide."""
    import secrets

    while True:
        day = (first_year + secrets.randbelow(last_year - first_year + 1)) * 10000 + \
            (1 + secrets.randbelow(12)) * 100 + 1 + secrets.randbelow(28)
        if day not in _used_days:
            _used_days.add(day)
            return day


def write_policy(policy: EmbargoPolicy, path: str | Path) -> Path:
    """Write a policy as YAML (what include/embargo_policy.yaml holds), e.g. for FACILITY_RUBIN_POLICY."""
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(policy.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path


#: prompt products of the synthetic night: a calexp-like (visit + detector) and a catalogue-like (visit) type
PROMPT_TYPES = {"calexp": ("instrument", "visit", "detector"), "sourceTable_visit": ("instrument", "visit")}


def add_prompt_products(night: Night, *, runs: tuple[str, ...] = ("LSSTCam/prompt/output-1",
                                                                  "LSSTCam/prompt/output-2"),
                        detectors: int = 2) -> dict[str, list[str]]:
    """Put prompt-processing outputs of every on-sky exposure's visit into the source Butler, the visits split
    between ``runs`` in order: per visit one ``calexp`` per detector (0..detectors-1) and one ``sourceTable_visit``
    (StructuredDataDict: no pipeline stack needed to read them). Returns run -> obs_ids it holds."""
    from lsst.daf.butler import Butler, DatasetType

    source = Butler.from_config(str(night.source_repo), writeable=True)
    for name, dims in PROMPT_TYPES.items():
        source.registry.registerDatasetType(DatasetType(name, dims, "StructuredDataDict",
                                                        universe=source.dimensions))
    visits = [o for o in night.obs_ids if o not in night.calibs]
    per_run = -(-len(visits) // len(runs))
    out: dict[str, list[str]] = {}
    for i, run in enumerate(runs):
        source.registry.registerRun(run)
        out[run] = visits[i * per_run:(i + 1) * per_run]
        for obs_id in out[run]:
            visit = night.exposure_ids[obs_id]
            for det in range(detectors):
                source.put({"obs_id": obs_id, "detector": det, "kind": "calexp"}, "calexp", instrument=INSTRUMENT,
                           visit=visit, detector=det, run=run)
            source.put({"obs_id": obs_id, "sources": [[det, 1.5 * det] for det in range(detectors)]},
                       "sourceTable_visit", instrument=INSTRUMENT, visit=visit, run=run)
    return out
