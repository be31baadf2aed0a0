"""TIFF stack -> multiscale OME-Zarr: levels, shapes, values, metadata, readability by ome-zarr, bad input, CLI."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from facility_data.als import multiscale, synthetic


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
