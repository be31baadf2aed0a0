"""``_metadata_index.json`` from the FITS headers, in astro_metadata_translator's own index format.

Compared with what astro_metadata_translator writes for the same files (``index_files``), read back with its
``process_index_data`` as a remote site does, and the headers are taken from the one streaming pass (each embargo
object is read once).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from astro_metadata_translator.file_helpers import read_basic_metadata_from_file
from astro_metadata_translator.indexing import calculate_index, index_files, process_index_data
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from facility_data.demo.rubin_synthetic import build_night
from facility_data.rubin.metaindex import HeaderCollector, metadata_index
from facility_data.rubin.storage import LocalStore, serial_objects
from facility_data.rubin.zipbuild import METADATA_INDEX, build_zip

BUTLER_INDEX = b'{"artifact_map": {}}'


def _zip_index(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        return json.loads(zf.read(METADATA_INDEX))


def _tool_index(files: list[Path]) -> dict:
    """What astro_metadata_translator itself makes of these files: its own header reads (primary merged with HDU 1)
    and index calculation. (Its ``index_files`` needs afw's PropertyList for several differing files: an astropy
    Header cannot hold the diff, so the reads are made plain dicts first, as they are from afw.)"""
    headers = {f.name: dict(read_basic_metadata_from_file(str(f), 1).items()) for f in sorted(files)}
    return json.loads(json.dumps(calculate_index(headers, "metadata"), default=str))


class CountingStore:
    """A real LocalStore that counts the bytes read from each object."""

    def __init__(self, store: LocalStore):
        self._store, self.read_bytes = store, {}

    def __getattr__(self, name):
        return getattr(self._store, name)

    def iter_objects(self, objects):
        return serial_objects(self, objects)  # through this wrapper's iter_chunks

    def iter_chunks(self, key):
        for chunk in self._store.iter_chunks(key):
            self.read_bytes[key] = self.read_bytes.get(key, 0) + len(chunk)
            yield chunk


@pytest.fixture
def night(tmp_path):
    return build_night(tmp_path / "site", day_obs=20250101, n_exposures=1, detectors=6, without_guider=(1,))


def test_zip_index_of_synthetic_raws_is_astro_metadata_translators_index(night, tmp_path):
    obs_id = night.obs_ids[0]
    objects = night.store.list_folder("LSSTCam", night.day_obs, obs_id)
    store = CountingStore(night.store)
    hashes, path = build_zip(store, objects, BUTLER_INDEX, tmp_path / "out" / f"{obs_id}.zip")
    assert hashes is not None
    assert store.read_bytes == {o.key: o.size for o in objects}, "every object read exactly once"
    index = _zip_index(path)
    fits_objects = [o for o in objects if o.name.endswith(".fits")]
    assert index["__CONTENT__"] == "metadata"
    common = index["__COMMON__"]
    assert {k: common[k] for k in ("INSTRUME", "OBSID", "DAYOBS", "SEQNUM", "BITPIX")} == {
        "INSTRUME": "LSSTCam", "OBSID": obs_id, "DAYOBS": night.day_obs, "SEQNUM": 1, "BITPIX": 8}
    assert sorted(k for k in index if not k.startswith("__")) == sorted(o.name for o in fits_objects)
    for o in fits_objects:
        assert index[o.name]["DETNAME"] == o.name.removesuffix(".fits").split(f"{obs_id}_")[1]
    # the same index as astro_metadata_translator's own, for the same files
    local = tmp_path / "files"
    local.mkdir()
    for o in fits_objects:
        (local / o.name).write_bytes(night.store.read(o.key))
    assert index == _tool_index(sorted(local.iterdir()))


def test_a_remote_site_finds_each_files_cards_in_the_index_alone(night, tmp_path):
    obs_id = night.obs_ids[0]
    objects = night.store.list_folder("LSSTCam", night.day_obs, obs_id)
    _, path = build_zip(night.store, objects, BUTLER_INDEX, tmp_path / f"{obs_id}.zip")
    with zipfile.ZipFile(path) as zf:
        by_file = process_index_data(json.loads(zf.read(METADATA_INDEX)))  # nothing but the index member read
        for name, cards in by_file.items():
            header = fits.getheader(io.BytesIO(zf.read(name)))
            assert cards == dict(header.items()), name


def _multi_hdu(path: Path, *, primary_data: bool, compressed: bool) -> Path:
    primary = fits.PrimaryHDU(np.arange(6, dtype=np.int32).reshape(2, 3) if primary_data else None)
    primary.header.update({"INSTRUME": "LSSTCam", "DAYOBS": 20250101, "EXPTIME": 30.0, "TESTING": True,
                           "OBSID": "MC_O_20250101_000001", "TRIMMED": "primary"})
    primary.header["COMMENT"] = "a comment card"
    data = (np.arange(64 * 100, dtype=np.int16).reshape(64, 100) % 97).astype(np.int16)
    ext = fits.CompImageHDU(data, compression_type="RICE_1") if compressed else fits.ImageHDU(data)
    ext.header.update({"EXTNAME": "Segment10", "CCDSLOT": "S00", "TRIMMED": "extension", "SAT": 1e5})
    hdul = fits.HDUList([primary, ext, fits.ImageHDU(np.zeros(5, dtype=np.float32), name="LATER")])
    hdul.writeto(path)
    return path


@pytest.mark.parametrize("primary_data, compressed", [(False, False), (True, False), (False, True), (True, True)])
def test_multi_hdu_files_index_like_astro_metadata_translator(tmp_path, primary_data, compressed):
    store = LocalStore(tmp_path / "embargo")
    folder = tmp_path / "embargo" / "LSSTCam" / "20250101" / "MC_O_20250101_000001"
    folder.mkdir(parents=True)
    files = [_multi_hdu(folder / f"MC_O_20250101_000001_R22_S{i}0.fits", primary_data=primary_data,
                        compressed=compressed) for i in range(2)]
    objects = store.list_folder("LSSTCam", 20250101, "MC_O_20250101_000001")
    _, path = build_zip(store, objects, BUTLER_INDEX, tmp_path / "x.zip")
    index = _zip_index(path)
    assert index == _tool_index(files)
    assert index["__COMMON__"]["TRIMMED"] == "extension" and index["__COMMON__"]["EXPTIME"] == 30.0
    assert "LATER" not in json.dumps(index)  # only the primary and first extension headers
    # one file: astro_metadata_translator's index_files itself gives the same index
    tool, okay, failed = index_files([files[0].name], str(folder), 1, None, "metadata")
    collector = HeaderCollector(files[0].name)
    collector.feed(files[0].read_bytes())
    one = json.loads(metadata_index({files[0].name: collector.cards()}, {}))
    assert failed == [] and one == json.loads(json.dumps(tool, default=str))


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=60000), max_size=12),
       primary_data=st.booleans(), compressed=st.booleans())
def test_headers_are_found_whatever_the_chunking(tmp_path_factory, cuts, primary_data, compressed):
    path = _multi_hdu(tmp_path_factory.mktemp("h") / "f.fits", primary_data=primary_data, compressed=compressed)
    data = path.read_bytes()
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    collector = HeaderCollector(path.name)
    for a, b in zip(edges, edges[1:], strict=False):
        collector.feed(memoryview(data)[a:b])
    expected = read_basic_metadata_from_file(str(path), 1)
    assert collector.cards() == {k: v for k, v in expected.items()}


def test_sidecar_overlays_the_header_and_stands_in_for_an_unreadable_one(caplog):
    header = fits.Header({"SIMPLE": True, "BITPIX": 8, "NAXIS": 0, "OBSID": "X", "SEQNUM": 1})
    raw = header.tostring().encode()
    assert len(raw) % 2880 == 0

    def cards(data: bytes):
        c = HeaderCollector("f.fits")
        c.feed(data)
        return c.cards()

    headers = {"a.fits": cards(raw), "b.fits": cards(b"not a FITS file" * 300), "c.fits": cards(raw[:2000]),
               "d.fits": cards(b""), "e.fits": cards(raw.replace(b"OBSID", "ÖBSID".encode("latin-1")))}
    assert headers["a.fits"] == {"SIMPLE": True, "BITPIX": 8, "NAXIS": 0, "OBSID": "X", "SEQNUM": 1}
    assert [n for n, c in headers.items() if c is None] == ["b.fits", "c.fits", "d.fits", "e.fits"]
    assert "no FITS header" in caplog.text
    out = json.loads(metadata_index(headers, {"a.json": b'{"SEQNUM": 2, "ROTPA": 0.5}\n', "b.json": b'{"OBSID": "X"}',
                                              "c.json": b"not json", "d.json": b"[1, 2]", "x.json": b'{"K": 1}'}))
    assert out == {"__CONTENT__": "metadata", "__COMMON__": {"OBSID": "X"},
                   "a.fits": {"SIMPLE": True, "BITPIX": 8, "NAXIS": 0, "SEQNUM": 2, "ROTPA": 0.5}, "b.fits": {}}


def test_no_fits_members_give_an_empty_index():
    assert json.loads(metadata_index({}, {"x.json": b"{}"})) == {"__CONTENT__": "metadata", "__COMMON__": {}}
