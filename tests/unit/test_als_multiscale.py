"""TIFF stack -> multiscale OME-Zarr: levels, shapes, values, OME-NGFF 0.5 validity (ome-zarr-models) and
readability (ome-zarr), bad input, CLI."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from facility_data.als import multiscale
from facility_data.demo import als_synthetic as synthetic


@pytest.fixture
def stack(tmp_path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    vol = rng.random((5, 40, 36)).astype(np.float32)
    d = tmp_path / "recscan"
    d.mkdir()
    for z, img in enumerate(vol):
        tifffile.imwrite(d / f"recscan_{z:05d}.tiff", img)
    (d / ".hidden.tiff").write_bytes(b"ignored")
    return d, vol


def assert_valid_ngff_05(zarr_dir: Path):
    """The store validates as an OME-NGFF 0.5 image with ome-zarr-models (warnings count as failures)."""
    import zarr
    from ome_zarr_models.v05.image import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Image.from_zarr(zarr.open_group(str(zarr_dir), mode="r"))


def read_back(zarr_dir: Path):
    """The image node as ``ome_zarr.reader`` sees it."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    image = list(Reader(parse_url(str(zarr_dir)))())[0]
    assert image.specs and isinstance(image.specs[0], Multiscales)
    return image


def write_stack(d: Path, vol: np.ndarray) -> Path:
    d.mkdir()
    for z, img in enumerate(vol):
        tifffile.imwrite(d / f"s_{z:05d}.tif", img)
    return d


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 5), st.integers(1, 37), st.integers(1, 37)),
       dtype=st.sampled_from(["uint8", "uint16", "float32"]),
       n_levels=st.none() | st.integers(1, 4), pixel=st.floats(0.01, 50))
def test_every_pyramid_is_valid_ome_ngff_05_and_reads_back(shape, dtype, n_levels, pixel):
    vol = (np.arange(np.prod(shape)).reshape(shape) % 200).astype(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rec.zarr"
        res = multiscale.build_multiscale(write_stack(Path(tmp) / "rec", vol), out, pixel, n_levels=n_levels)
        model = assert_valid_ngff_05(out)
        (ms,) = model.ome_attributes.multiscales
        assert [d.path for d in ms.datasets] == [str(k) for k in range(res.n_levels)]
        assert [tuple(model.members[str(k)].shape) for k in range(res.n_levels)] == res.shapes
        image = read_back(out)
        assert [tuple(a.shape) for a in image.data] == res.shapes
        assert np.array_equal(np.asarray(image.data[0]), vol) and image.data[-1].dtype == np.dtype(dtype)
        for k, transforms in enumerate(image.metadata["coordinateTransformations"]):
            assert transforms[0] == {"type": "scale", "scale": list(res.scales_um[k])}


def test_zarr_json_has_the_fields_ome_ngff_05_requires(stack, tmp_path):
    tiff_dir, _ = stack
    out = tmp_path / "recscan.zarr"
    res = multiscale.build_multiscale(tiff_dir, out, 0.65, n_levels=3)
    group = json.loads((out / "zarr.json").read_text())
    assert group["zarr_format"] == 3 and group["node_type"] == "group"
    assert set(group["attributes"]) == {"ome"}  # NGFF 0.5 keeps everything under "ome"
    ome = group["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert ms["axes"] == [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    assert ms["name"] == "recscan" and ms["type"] == "mean"
    assert ms["metadata"]["method"] == "facility_data.als.multiscale.build_multiscale"
    assert {"description", "version"} <= set(ms["metadata"])
    for k in range(res.n_levels):
        arr = json.loads((out / str(k) / "zarr.json").read_text())
        assert arr["zarr_format"] == 3 and arr["node_type"] == "array"
        assert arr["dimension_names"] == ["z", "y", "x"], k
        assert [t["type"] for t in ms["datasets"][k]["coordinateTransformations"]] == ["scale", "translation"]


def test_a_non_ascii_stack_name_is_kept_and_valid(tmp_path):
    vol = np.ones((2, 20, 20), dtype=np.uint16)
    out = tmp_path / "réc ü 01.zarr"
    multiscale.build_multiscale(write_stack(tmp_path / "réc ü 01", vol), out, 1.0)
    assert assert_valid_ngff_05(out).ome_attributes.multiscales[0].name == "réc ü 01"
    assert read_back(out).metadata["name"] == "réc ü 01"


def test_translation_puts_each_coarse_voxel_at_the_centre_of_its_block(tmp_path):
    """Voxel centres: a level-k voxel is the mean of a 2^k block, so it sits at the block's physical centre."""
    vol = np.zeros((4, 64, 64), dtype=np.float32)
    res = multiscale.build_multiscale(write_stack(tmp_path / "rec", vol), tmp_path / "rec.zarr", 0.5, n_levels=3)
    ms = assert_valid_ngff_05(tmp_path / "rec.zarr").ome_attributes.multiscales[0]
    for k, ds in enumerate(ms.datasets):
        scale, translation = ds.coordinateTransformations
        assert list(scale.scale) == list(res.scales_um[k])
        # level-k voxel (0, 0, 0) averages level-0 voxels 0 .. 2^k - 1 on each axis (centres at 0.5 * i)
        assert list(translation.translation) == pytest.approx([0.5 * np.arange(2**k).mean()] * 3), k
    # an axis that stopped shrinking keeps its translation (one slice: z is never averaged)
    one = multiscale.build_multiscale(write_stack(tmp_path / "one", vol[:1]), tmp_path / "one.zarr", 0.5,
                                      n_levels=3)
    ms = assert_valid_ngff_05(one.zarr_dir).ome_attributes.multiscales[0]
    assert [ds.coordinateTransformations[1].translation[0] for ds in ms.datasets] == [0.0, 0.0, 0.0]


def test_validate_rejects_a_store_without_dimension_names(tmp_path):
    """The format written before issue 16: NGFF 0.5 group metadata over arrays lacking dimension_names."""
    import zarr
    from ome_zarr.format import CurrentFormat
    from ome_zarr.writer import write_multiscales_metadata

    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    root.create_array("0", shape=(2, 8, 8), dtype="uint8")
    write_multiscales_metadata(root, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}], fmt=CurrentFormat(), axes=["z", "y", "x"])
    with pytest.raises(multiscale.MultiscaleError, match="not valid OME-NGFF 0.5.*dimension_names"):
        multiscale.validate_ome_ngff(tmp_path / "old.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(multiscale.MultiscaleError, match="not valid OME-NGFF 0.5.*'ome'"):
        multiscale.validate_ome_ngff(tmp_path / "plain.zarr")


def test_levels_shapes_and_values(stack, tmp_path):
    tiff_dir, vol = stack
    res = multiscale.build_multiscale(tiff_dir, tmp_path / "recscan.zarr", 0.65, n_levels=3)
    assert res.shapes == [(5, 40, 36), (3, 20, 18), (2, 10, 9)]
    assert res.scales_um == [(0.65,) * 3, (1.3,) * 3, (2.6,) * 3]
    import zarr

    root = zarr.open_group(str(tmp_path / "recscan.zarr"), mode="r")
    assert np.array_equal(root["0"][:], vol)
    # level 1 voxel (0, 0, 0) is the mean of the 2x2x2 block at the origin
    assert root["1"][0, 0, 0] == pytest.approx(vol[:2, :2, :2].mean(), rel=1e-5)
    # odd z: the last level-1 slice averages the last slice with itself (edge padding)
    assert root["1"][2, 0, 0] == pytest.approx(vol[4, :2, :2].mean(), rel=1e-5)


def test_readable_by_ome_zarr_with_physical_units(stack, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    tiff_dir, vol = stack
    multiscale.build_multiscale(tiff_dir, tmp_path / "recscan.zarr", 3.25)
    nodes = list(Reader(parse_url(str(tmp_path / "recscan.zarr")))())
    image = nodes[0]
    assert image.specs and isinstance(image.specs[0], Multiscales)
    assert [tuple(a.shape) for a in image.data] == [(5, 40, 36), (3, 20, 18)]  # default: down to >= 16 px
    assert np.allclose(np.asarray(image.data[0]), vol)
    axes = image.metadata["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"]
    assert {a["unit"] for a in axes} == {"micrometer"} and {a["type"] for a in axes} == {"space"}
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales == [[3.25] * 3, [6.5] * 3]


def test_pixel_size_from_a_scan_and_pyramid_of_a_reconstruction(tmp_path):
    from facility_data.als import recon

    h5 = synthetic.write_scan(tmp_path / "20240101_000000_s.h5", n_angles=31, size=64, n_slices=4,
                              pixel_size_mm=0.00065)
    assert multiscale.pixel_size_from_scan(h5) == pytest.approx(0.65)
    rec = recon.reconstruct(h5, tmp_path)
    res = multiscale.build_multiscale(rec.tiff_dir, tmp_path / f"rec{h5.stem}.zarr",
                                      multiscale.pixel_size_from_scan(h5))
    assert res.shapes == [(4, 64, 64), (2, 32, 32), (1, 16, 16)] and res.dtype == "float32"
    assert_valid_ngff_05(tmp_path / f"rec{h5.stem}.zarr")


def test_group_writable_and_atomic(stack, tmp_path):
    tiff_dir, _ = stack
    out = tmp_path / "recscan.zarr"
    multiscale.build_multiscale(tiff_dir, out, 1.0, n_levels=2)
    assert stat.S_IMODE(out.stat().st_mode) == 0o2775
    for p in out.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o2775 if p.is_dir() else 0o664), p
    assert not list(tmp_path.glob(".*partial*"))
    # a rerun replaces the pyramid (here with fewer levels) instead of mixing old and new
    multiscale.build_multiscale(tiff_dir, out, 1.0, n_levels=1)
    assert not (out / "1").exists()


def test_z_axis_stops_shrinking_at_one(tmp_path):
    d = tmp_path / "one"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", np.ones((64, 64), dtype=np.uint16) * 7)
    res = multiscale.build_multiscale(d, tmp_path / "one.zarr", 2.0, n_levels=3)
    assert res.shapes == [(1, 64, 64), (1, 32, 32), (1, 16, 16)]
    assert res.scales_um[2] == (2.0, 8.0, 8.0)
    import zarr

    assert zarr.open_group(str(tmp_path / "one.zarr"), mode="r")["2"][0, 0, 0] == 7


@pytest.mark.parametrize("pixel", [0, -1.0, float("nan"), "3"])
def test_bad_pixel_size(stack, tmp_path, pixel):
    with pytest.raises(multiscale.MultiscaleError, match="pixel_size_um"):
        multiscale.build_multiscale(stack[0], tmp_path / "x.zarr", pixel)
    assert not (tmp_path / "x.zarr").exists()


def test_missing_and_empty_tiff_dir(tmp_path):
    with pytest.raises(multiscale.MultiscaleError, match="not found"):
        multiscale.build_multiscale(tmp_path / "nope", tmp_path / "x.zarr", 1.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(multiscale.MultiscaleError, match="no .tif"):
        multiscale.build_multiscale(tmp_path / "empty", tmp_path / "x.zarr", 1.0)
    assert not (tmp_path / "x.zarr").exists()


def test_mismatched_slice_leaves_nothing_behind(stack, tmp_path):
    tiff_dir, _ = stack
    tifffile.imwrite(tiff_dir / "recscan_99999.tiff", np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(multiscale.MultiscaleError, match="shape"):
        multiscale.build_multiscale(tiff_dir, tmp_path / "x.zarr", 1.0)
    assert not (tmp_path / "x.zarr").exists() and not list(tmp_path.glob(".*partial*"))


def test_pixel_size_from_bad_scan(tmp_path):
    with pytest.raises(multiscale.MultiscaleError, match="not found"):
        multiscale.pixel_size_from_scan(tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(multiscale.MultiscaleError, match="not a readable HDF5"):
        multiscale.pixel_size_from_scan(tmp_path / "bad.h5")


def test_cli_reads_pixel_size_from_the_raw_file(stack, tmp_path):
    tiff_dir, _ = stack
    h5 = synthetic.write_scan(tmp_path / "s.h5", n_angles=4, size=16, n_slices=1, pixel_size_mm=0.0013)
    proc = subprocess.run([sys.executable, "-m", "facility_data.als.multiscale", str(tiff_dir),
                           "--raw-file", str(h5)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["zarr_dir"] == str(tiff_dir.with_name("recscan.zarr"))
    assert out["scales_um"][0] == pytest.approx([1.3, 1.3, 1.3])
