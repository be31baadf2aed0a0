"""The ALS part of ``make demo``: a synthetic scan where the file watcher would see it, and a readable summary.

    conf = prepare(site_root)      # then POST /api/v2/dags/bl832_new_file/dagRuns {"logical_date": null, "conf": conf}
    ...                            # bl832_new_file runs; its asset event starts bl832_recon_local
    print(summary(site_root))      # moved where, reconstruction outputs, OME-Zarr levels, prune dry-run report
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

FOLDER = "ALS-11111_demo"
PREVIEW_DAYS = 40
SCAN = {"n_angles": 181, "size": 128, "n_slices": 16, "seed": 7, "center_offset": 1.5}


@contextmanager
def _site(site_root: str | Path):
    """Resolve endpoints and the ledger against ``site_root`` (restoring FACILITY_SITE afterwards)."""
    old = os.environ.get("FACILITY_SITE")
    os.environ["FACILITY_SITE"] = str(site_root)
    try:
        yield Path(site_root)
    finally:
        if old is None:
            os.environ.pop("FACILITY_SITE", None)
        else:
            os.environ["FACILITY_SITE"] = old


def prepare(site_root: str | Path, *, beamline: str = "bl832") -> dict:
    """Write a new synthetic scan on the beamline's acquisition endpoint; return the conf for ``<bl>_new_file``."""
    from facility_data.als.beamline import load_beamline
    from facility_data.demo import als_synthetic as synthetic
    from facility_data.transfer import load_endpoints

    with _site(site_root):
        bl = load_beamline(beamline)
        loc = bl.location(bl.source_role)
        ep = load_endpoints()[loc.endpoint]
        name = f"{datetime.now(UTC):%Y%m%d_%H%M%S}_demo_shell.h5"
        synthetic.write_scan(ep.local_path(loc.path_of(f"{FOLDER}/{name}")), **SCAN)
        watcher_path = f"{bl.rules.raw_root}/{FOLDER}/{name}"
    return {"file_path": watcher_path, "is_export_control": False, "send_to_nersc": True}


def _zarr_levels(zarr_dir: Path) -> list[str]:
    doc = json.loads((zarr_dir / "zarr.json").read_text())
    ms = doc.get("attributes", {}).get("ome", {}).get("multiscales") or doc.get("attributes", {}).get("multiscales")
    out = []
    for ds in ms[0]["datasets"]:
        shape = json.loads((zarr_dir / ds["path"] / "zarr.json").read_text())["shape"]
        scale = ds["coordinateTransformations"][0]["scale"]
        out.append(f"level {ds['path']}: shape {tuple(shape)}, voxel {scale[-1]:g} um")
    return out


def summary(site_root: str | Path, *, beamline: str = "bl832") -> str:
    """What happened on the local site: copies per location, reconstructions, OME-Zarr levels, a prune dry run."""
    from facility_data.als.beamline import load_beamline
    from facility_data.als.ledger import Ledger
    from facility_data.als.prune import Sweep, write_report
    from facility_data.transfer import load_endpoints

    with _site(site_root) as root:
        bl = load_beamline(beamline)
        endpoints = load_endpoints()
        ledger = Ledger(bl.ledger_file())
        lines = [f"== {bl.id} (BL {bl.beamline}) on the local site {root}"]
        copies = ledger.copies(bl.id)
        lines.append(f"-- copies recorded in the ledger ({bl.ledger_file()}):")
        for c in copies:
            ec = ledger.export_controlled(bl.id, c.scan)
            lines.append(f"   {c.location:15s} {c.endpoint}:{c.path}  {c.size} B  {c.checksum or '?'}"
                         f"{'  [export-controlled]' if ec else ''}")
        if not copies:
            lines.append("   (none yet)")
        scratch = endpoints[bl.location("data_scratch").endpoint] if "data_scratch" in bl.locations else None
        lines.append("-- reconstructions at data832 scratch:")
        found = False
        if scratch is not None and scratch.local_path("").is_dir():
            for rec in sorted(scratch.local_path("").glob("*/rec*")):
                if rec.name.startswith("."):
                    continue
                found = True
                if rec.suffix == ".zarr":
                    lines.append(f"   {rec.relative_to(scratch.local_path(''))}/ (OME-Zarr)")
                    try:
                        lines += [f"     {lvl}" for lvl in _zarr_levels(rec)]
                    except (OSError, KeyError, IndexError, ValueError) as exc:
                        lines.append(f"     unreadable multiscales metadata: {exc}")
                else:
                    tiffs = list(rec.glob("*.tif*"))
                    lines.append(f"   {rec.relative_to(scratch.local_path(''))}/ ({len(tiffs)} TIFF slices, "
                                 f"mode {oct(rec.stat().st_mode & 0o7777)})")
        if not found:
            lines.append("   (none yet)")
        records = root / "scicat" / "records.json"  # the local site's SciCat stand-in (localsite.scicat_standin)
        lines.append(f"-- datasets catalogued in the local SciCat stand-in ({records}):")
        datasets = json.loads(records.read_text())["datasets"] if records.exists() else {}
        lines += [f"   {pid}  {d.get('sourceFolder')}/{d.get('datasetName')}" for pid, d in datasets.items()]
        if not datasets:
            lines.append("   (none yet)")
        report = write_report(Sweep(bl, endpoints, ledger, dry_run=True).run(), bl.reports_path())
        lines.append(f"-- prune dry run (nothing deleted): {report.text_path}")
        lines += ["   " + line for line in report.text().splitlines()]
        later = Sweep(bl, endpoints, ledger, dry_run=True, now=datetime.now(UTC) + timedelta(days=PREVIEW_DAYS)).run()
        lines.append(f"-- preview: the same dry run {PREVIEW_DAYS} days from now (not written, nothing deleted):")
        lines += ["   " + line for line in later.text().splitlines()[3:]]
        alerts = root / "alerts.jsonl"
        if alerts.exists():
            recent = [json.loads(x) for x in alerts.read_text().splitlines()[-5:]]
            lines.append("-- recent alerts:")
            lines += [f"   {a.get('dag_id')}.{a.get('task_id')}: {a.get('error')}" for a in recent]
    return "\n".join(lines) + "\n"
