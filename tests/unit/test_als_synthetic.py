"""Synthetic BL 8.3.2 scans: DX layout, metadata, physics, determinism and argument checks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from facility_data.demo import als_synthetic as synthetic


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "raw" / "20240101_120000_phantom.h5"
    return synthetic.write_scan(path, n_angles=61, size=48, n_slices=4, seed=3, proposal="ALS-12345",
                                experimenter_email="a.user@lbl.gov")


def test_layout_matches_data_exchange(scan):
    with h5py.File(scan, "r") as f:
        assert f["/exchange/data"].shape == (61, 4, 48)
        assert f["/exchange/data"].dtype == np.uint16
        assert f["/exchange/data_white"].shape[1:] == (4, 48)
        assert f["/exchange/data_dark"].shape[1:] == (4, 48)
        theta = f["/exchange/theta"][()]
        assert f["/exchange/theta"].attrs["units"] == "degrees"
        assert theta[0] == 0.0 and theta[-1] == 180.0 and theta.size == 61
        assert f["/measurement/instrument/detector/pixel_size"][0] == pytest.approx(0.00325)
        assert f["/measurement/instrument/detector/pixel_size"].attrs["units"] == "mm"


def test_metadata_the_ingest_reads(scan):
    with h5py.File(scan, "r") as f:
        assert f["/measurement/sample/experiment/proposal"].asstr()[0] == "ALS-12345"
        assert f["/measurement/sample/experimenter/email"].asstr()[0] == "a.user@lbl.gov"
        assert f["/measurement/sample/file_name"].asstr()[0] == "20240101_120000_phantom"
        assert f["/measurement/sample/experiment/beamline"].asstr()[0] == "bl832"
        assert f["/measurement/instrument/monochromator/energy"][0] == pytest.approx(25.0)
        assert f["/measurement/instrument/detector/exposure_time"][0] == pytest.approx(0.05)
        assert f["/process/acquisition/rotation/num_angles"][0] == 61
        assert f["/measurement/instrument/source/current"].shape == (61,)


def test_counts_follow_beer_lambert(scan):
    """Flat-normalised projections recover the analytic line integrals (within photon noise)."""
    with h5py.File(scan, "r") as f:
        data = f["/exchange/data"][()].astype(float)
        flat = f["/exchange/data_white"][()].mean(axis=0)
        dark = f["/exchange/data_dark"][()].mean(axis=0)
    measured = -np.log((data - dark) / (flat - dark))
    truth = synthetic.projections(48, 4, np.linspace(0, 180, 61))
    assert truth.max() > 1.0  # the object absorbs a realistic fraction of the beam
    assert np.abs(measured - truth).mean() < 0.03
    assert np.corrcoef(measured.ravel(), truth.ravel())[0, 1] > 0.99


def test_same_seed_same_file_and_different_seed_different_noise(tmp_path):
    a = synthetic.write_scan(tmp_path / "a.h5", n_angles=10, size=16, n_slices=2, seed=1)
    b = synthetic.write_scan(tmp_path / "b.h5", n_angles=10, size=16, n_slices=2, seed=1)
    c = synthetic.write_scan(tmp_path / "c.h5", n_angles=10, size=16, n_slices=2, seed=2)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        assert np.array_equal(fa["/exchange/data"][()], fb["/exchange/data"][()])
        assert not np.array_equal(fa["/exchange/data"][()], fc["/exchange/data"][()])


def test_phantom_is_the_ground_truth_of_the_projections():
    """Summing the phantom along a row is the 0-degree projection (the phantom and projector agree)."""
    size = 64
    ph = synthetic.phantom(size, 3, supersample=4)
    assert ph.shape == (3, size, size) and ph.dtype == np.float32
    proj0 = synthetic.projections(size, 3, np.array([0.0]))[0]
    assert np.abs(ph.sum(axis=1) - proj0).mean() < 0.01 * proj0.max()
    assert ph.min() >= -1e-6 and ph.max() > 0


def test_center_offset_moves_the_projection(tmp_path):
    centred = synthetic.projections(64, 1, np.array([0.0]))[0, 0]
    shifted = synthetic.projections(64, 1, np.array([0.0]), center_offset=3.0)[0, 0]
    assert np.allclose(np.roll(centred, 3)[10:-10], shifted[10:-10], atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 4}, "size must be"),
    ({"n_angles": 1}, "n_angles must be"),
    ({"n_slices": 0}, "n_slices must be"),
    ({"center_offset": 30.0}, "off a"),
])
def test_bad_arguments_are_rejected_before_writing(tmp_path, kwargs, message):
    target = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match=message):
        synthetic.write_scan(target, **{"n_angles": 10, "size": 32, "n_slices": 2, **kwargs})
    assert not target.exists()


def test_unknown_metadata_key_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="proposl"):
        synthetic.write_scan(tmp_path / "x.h5", n_angles=4, size=16, n_slices=1, proposl="typo")
    assert not (tmp_path / "x.h5").exists()
