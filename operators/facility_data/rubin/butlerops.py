"""What the steps ask of the source and destination Butlers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from facility_data.retry import call_with_retry, is_transient_butler
from facility_data.rubin.policy import ButlerRef, EmbargoPolicy
from facility_data.rubin.storage import StoredObject
from facility_data.rubin.windows import ExposureRef
from facility_data.rubin.zipbuild import InconsistentArtifact

log = logging.getLogger(__name__)


class UniverseMismatch(ValueError):
    """A destination Butler's dimension universe (namespace, version) is not the source's. Records exported from
    one universe do not mean the same in another, and an ingest would fail part way or mis-describe the data, so
    it is refused before anything is written; retrying cannot fix it (migrate the repository or fix the policy)."""


def check_same_universe(source, dest, source_label: str, dest_label: str) -> None:
    """Raise :class:`UniverseMismatch`, naming both repositories and universes, unless they are the same."""
    s, d = source.dimensions, dest.dimensions
    if (s.namespace, s.version) != (d.namespace, d.version):
        raise UniverseMismatch(f"destination Butler {dest_label} has dimension universe {d.namespace} version "
                               f"{d.version}, the source Butler {source_label} {s.namespace} version {s.version}: "
                               "refused, nothing ingested")


def open_butler(ref: ButlerRef, *, writeable: bool = False):
    """A Butler for a policy entry: a URI directly, a connection id through ButlerHook (Airflow connection)."""
    if ref.uri:
        from lsst.daf.butler import Butler

        return Butler.from_config(ref.uri, writeable=writeable)
    from facility_data.hooks.butler import ButlerHook

    return ButlerHook(butler_conn_id=ref.conn_id).get_butler(writeable=writeable)


def source_refs(butler, policy: EmbargoPolicy, exp: ExposureRef) -> list:
    """The exposure's raw (and, when present, guider) datasets, with dimension records attached."""
    from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

    refs = []
    for dataset_type, collection in policy.collections(exp.instrument).items():
        try:
            refs += butler.query_datasets(dataset_type, collections=collection, instrument=exp.instrument,
                                          exposure=exp.exposure, with_dimension_records=True, explain=False)
        except (MissingDatasetTypeError, MissingCollectionError):
            if dataset_type == policy.dataset_type:
                raise
            log.info("%s: no %s in %s (tolerated)", exp.obs_id, dataset_type, collection)
    return sorted(refs, key=lambda r: (r.datasetType.name, r.dataId["detector"]))


def detector_name(ref) -> str:
    return ref.dataId.records["detector"].full_name


def zip_index(butler, refs: list, objects: list[StoredObject]) -> bytes:
    """``_butler_zip_index.json`` mapping each flat member name to its datasets and datastore record.

    Uses the datastore's stored-file records (what ``retrieveArtifacts`` uses) without copying any file; the member
    name is the artifact's basename, which must be an object of the exposure's embargo folder.
    """
    from lsst.daf.butler import SerializedDatasetRefContainerV1
    from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ArtifactIndexInfo, ZipIndex

    sizes = {o.name: o.size for o in objects}
    datastore = butler._datastore  # no public API exposes stored-file records without copying the artifacts
    records = datastore._get_stored_records_associated_with_refs(refs, ignore_datastore_records=True)
    artifact_map: dict[str, ArtifactIndexInfo] = {}
    for ref in refs:
        infos = records.get(ref.id)
        if not infos:
            raise InconsistentArtifact(f"dataset {ref} has no datastore record in the source Butler")
        for info in infos:
            name = Path(info.file_location(datastore.locationFactory).uri.path).name
            if name not in sizes:
                raise InconsistentArtifact(f"artifact {name} of {ref} is not in the exposure's embargo folder")
            if name in artifact_map:
                artifact_map[name].append(ref.id)
            else:
                simple = info.to_simple()
                simple.file_size = sizes[name]
                simple.path = name  # ingest_zip rewrites it to <zip>#zip-path=<member>; no embargo path leaks
                artifact_map[name] = ArtifactIndexInfo.from_single(simple, ref.id)
    index = ZipIndex(refs=SerializedDatasetRefContainerV1.from_refs(refs), artifact_map=artifact_map)
    # sorted keys: the same exposure always gives the same index bytes, so a rebuilt zip is identical
    return json.dumps(json.loads(index.model_dump_json()), sort_keys=True).encode()


def tracts(butler, policy: EmbargoPolicy, exp: ExposureRef, visits: list[int]) -> list[int]:
    """Tracts of the policy's skymap that overlap the exposure's visit(s); empty means NoTract."""
    out: set[int] = set()
    for visit in visits:
        ids = butler.query_data_ids(["tract"], data_id={"instrument": exp.instrument, "visit": visit,
                                                        "skymap": policy.rucio.skymap}, explain=False)
        out.update(int(d["tract"]) for d in ids)
    return sorted(out)


def _retrying(fn, what: str):
    """``fn`` retried while the registry is locked or its connection dropped (bounded: retry.ATTEMPTS)."""
    return call_with_retry(fn, transient=is_transient_butler, what=what)


def ingested(dest, refs: list, visits: list[int], instrument: str) -> tuple[bool, str]:
    """Whether every dataset is known to ``dest`` with a stored artifact and the visits' records exist."""
    return _retrying(lambda: _ingested(dest, refs, visits, instrument), f"butler {_repo(dest)} (check)")


def _repo(butler) -> str:
    """The repository a Butler opened (for messages)."""
    return str(getattr(getattr(butler, "_config", None), "configDir", None) or butler)


def _ingested(dest, refs: list, visits: list[int], instrument: str) -> tuple[bool, str]:
    missing_records = [v for v in visits
                       if not dest.query_dimension_records("visit", instrument=instrument, visit=v, explain=False)]
    known = []
    for ref in refs:
        try:
            found = dest.get_dataset(ref.id)
        except Exception as exc:  # unknown dataset type in a fresh repo; a locked registry is retried
            if is_transient_butler(exc):
                raise
            found = None
        if found is not None:
            known.append(found)
    stored = dest.stored_many(known) if known else {}
    n_stored = sum(1 for v in stored.values() if v)
    ok = not missing_records and n_stored == len(refs)
    return ok, f"{n_stored}/{len(refs)} datasets stored, visit records missing: {missing_records}"


def ingest(dest, source, refs: list, visits: list[int], instrument: str, zip_path: Path) -> None:
    """Dimension records (visits included) then the zip by direct reference; safe to repeat, so the whole of it is
    retried while the registry is locked (each part is its own transaction: a failed one leaves nothing)."""
    _retrying(lambda: _ingest(dest, source, refs, visits, instrument, zip_path),
              f"butler {_repo(dest)} (ingest {zip_path.name})")


def _ingest(dest, source, refs: list, visits: list[int], instrument: str, zip_path: Path) -> None:
    for dataset_type in {r.datasetType for r in refs}:
        dest.registry.registerDatasetType(dataset_type)
    data_ids = [r.dataId for r in refs] + [
        source.registry.expandDataId(instrument=instrument, visit=v) for v in visits]
    dest.transfer_dimension_records_from(source, data_ids)
    dest.ingest_zip(str(zip_path), transfer="direct", skip_existing=True)
