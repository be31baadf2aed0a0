"""``<obs_id>_dimensions.yaml``: the dimension records a remote site (FrDF, UKDF) needs to import the zip.

A daf_butler YAML export of the exposure with its day_obs, group, visit, visit_definition, visit_detector_region,
visit_system and visit_system_membership records. Static records (instrument, detector, physical_filter) are
registered once per repo with the instrument and are not repeated per exposure.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

ELEMENTS = ("day_obs", "group", "exposure", "visit_system", "visit", "visit_definition", "visit_detector_region",
            "visit_system_membership")


def exposure_records(butler, instrument: str, exposure: int) -> dict[str, list]:
    """Element name -> records for one exposure (empty lists for a calib without a visit)."""
    q = butler.query_dimension_records
    exp = q("exposure", instrument=instrument, exposure=exposure, explain=False)
    if not exp:
        raise LookupError(f"exposure {exposure} of {instrument} is not in the source Butler")
    rec = exp[0]
    out: dict[str, list] = {e: [] for e in ELEMENTS}
    out["exposure"] = exp
    out["day_obs"] = q("day_obs", instrument=instrument, day_obs=rec.day_obs, explain=False)
    out["group"] = q("group", instrument=instrument, group=rec.group, explain=False)
    defs = q("visit_definition", instrument=instrument, exposure=exposure, explain=False)
    out["visit_definition"] = defs
    for visit in sorted({d.visit for d in defs}):
        out["visit"] += q("visit", instrument=instrument, visit=visit, explain=False)
        out["visit_detector_region"] += q("visit_detector_region", instrument=instrument, visit=visit,
                                          explain=False)
        out["visit_system_membership"] += q("visit_system_membership", instrument=instrument, visit=visit,
                                            explain=False)
    systems = {m.visit_system for m in out["visit_system_membership"]}
    out["visit_system"] = [r for r in q("visit_system", instrument=instrument, explain=False) if r.id in systems]
    return out


def visit_ids(records: dict[str, list]) -> list[int]:
    return sorted({r.id for r in records["visit"]})


def export_yaml(butler, records: dict[str, list]) -> bytes:
    """The YAML export (daf_butler format) of ``records``, element by element in dependency order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dimensions.yaml"
        with butler.export(filename=str(path), format="yaml") as export:
            for element in ELEMENTS:
                recs = sorted(records[element], key=lambda r: json.dumps(r.dataId.required_values, default=str))
                if recs:
                    export.saveDimensionData(element, recs)
        return path.read_bytes()


class _AnyTagLoader(yaml.SafeLoader):
    """Parses butler's tagged scalars/mappings (times, regions) as plain (tag, value) data, for comparison."""


def _tagged(loader, tag_suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return {"!tag": tag_suffix, "value": value}


_AnyTagLoader.add_multi_constructor("!", _tagged)
_AnyTagLoader.add_multi_constructor("tag:", _tagged)


def parse_export(data: bytes) -> dict:
    """Element -> sorted records of an export, for semantic comparison (formatting and order ignored)."""
    doc = yaml.load(data, Loader=_AnyTagLoader)  # noqa: S506 - restricted SafeLoader subclass
    if not isinstance(doc, dict) or "data" not in doc:
        raise ValueError("not a daf_butler export (no data section)")
    out: dict[str, list] = {}
    for block in doc["data"]:
        if block.get("type") == "dimension":
            out.setdefault(block["element"], []).extend(block["records"])
    return {k: sorted(v, key=lambda r: json.dumps(r, sort_keys=True, default=str)) for k, v in out.items()}


def same_export(a: bytes, b: bytes) -> bool:
    return a == b or parse_export(a) == parse_export(b)
