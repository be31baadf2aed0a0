"""Synthetic BL 8.3.2 micro-tomography scans with a known ground truth.

A scan is written as an HDF5 file in the Data Exchange ("DX") layout that real BL 8.3.2 scans use:

* ``/exchange/data``        projections, uint16 ``(n_angles, n_slices, size)`` (rows of a projection are slices)
* ``/exchange/data_white``  flat fields (beam, no sample), uint16 ``(n_flats, n_slices, size)``
* ``/exchange/data_dark``   dark fields (no beam), uint16 ``(n_darks, n_slices, size)``
* ``/exchange/theta``       rotation angles in degrees, ``(n_angles,)``, 0..180 inclusive
* ``/measurement/...`` and ``/process/...``: the instrument, sample and acquisition metadata that the SciCat ingest
  reads (sample/file name, proposal, experimenter email, PI, beamline, detector pixel size in mm, energy, exposure
  time, dark/flat counts, rotation range, motor and beam-current arrays sampled per projection).

The object is a 3-D modified Shepp-Logan phantom (ellipsoids, Kak & Slaney). Projections are the *analytic*
line integrals of those ellipsoids (exact, not computed with the same discrete projector a reconstruction uses, so
tests do not commit the "inverse crime"), turned into detector counts by Beer-Lambert attenuation of a flat field
with a beam profile and a fixed-pattern pixel gain, plus a dark offset, Poisson photon noise and Gaussian read
noise. The rotation axis can sit ``center_offset`` pixels off the detector centre, as on a real, imperfectly
aligned stage.

:func:`phantom` returns the ground truth a reconstruction of that scan should reproduce: linear attenuation per
pixel (the same units as :func:`facility_data.als.recon.reconstruct` writes), shape ``(n_slices, size, size)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

# Modified 3-D Shepp-Logan: density, semi-axes (a, b, c), centre (x0, y0, z0), rotation about z (degrees).
# In-plane coordinates are fractions of the object radius; y0 grows downwards (image rows).
_ELLIPSOIDS = np.array(
    [
        [1.0, 0.6900, 0.920, 0.810, 0.00, 0.0000, 0.00, 0.0],
        [-0.8, 0.6624, 0.874, 0.780, 0.00, 0.0184, 0.00, 0.0],
        [-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0000, 0.00, -18.0],
        [-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0000, 0.00, 18.0],
        [0.1, 0.2100, 0.250, 0.410, 0.00, -0.3500, -0.15, 0.0],
        [0.1, 0.0460, 0.046, 0.050, 0.00, -0.1000, 0.05, 0.0],
        [0.1, 0.0460, 0.046, 0.050, 0.00, 0.1000, -0.05, 0.0],
        [0.1, 0.0460, 0.023, 0.050, -0.08, 0.6050, 0.00, 0.0],
        [0.1, 0.0230, 0.023, 0.020, 0.00, 0.6060, 0.00, 0.0],
        [0.1, 0.0230, 0.046, 0.020, 0.06, 0.6050, 0.00, 0.0],
    ]
)
# The object's radius as a fraction of half the detector width (room for an off-centre rotation axis).
_RADIUS_FRACTION = 0.85
# The slice stack spans this range of the phantom's z axis (where the small features are).
_Z_RANGE = (-0.25, 0.25)

# Metadata written under /measurement and /process, with the keys write_scan accepts to override them.
DEFAULT_METADATA: dict[str, Any] = {
    "sample_name": "synthetic_shepp_logan",
    "proposal": "ALS-11111",
    "experimenter_name": "Synthetic User",
    "experimenter_email": "synthetic.user@example.org",
    "pi": "Synthetic PI",
    "experiment_lead": "Synthetic Lead",
    "beamline": "bl832",
    "instrument_name": "bl832",
    "source_name": "Advanced Light Source",
    "detector_model": "PCO.edge 5.5 (synthetic)",
    "pixel_size_mm": 0.00325,
    "energy_kev": 25.0,
    "exposure_time_s": 0.05,
    "scintillator": "LuAG 50um",
    "objective": "2x",
}


def _z_positions(n_slices: int) -> np.ndarray:
    return np.linspace(_Z_RANGE[0], _Z_RANGE[1], n_slices) if n_slices > 1 else np.zeros(1)


def _scaled_ellipsoids(size: int, attenuation: float) -> tuple[np.ndarray, float]:
    """Ellipsoid parameters in pixels, and the attenuation per pixel of unit density."""
    radius = _RADIUS_FRACTION * size / 2.0
    e = _ELLIPSOIDS.copy()
    e[:, [1, 2, 4, 5]] *= radius  # a, b, x0, y0 to pixels; c and z0 stay in phantom units
    return e, attenuation / size


def phantom(size: int = 128, n_slices: int = 8, *, attenuation: float = 8.0, supersample: int = 2) -> np.ndarray:
    """Ground truth of :func:`write_scan`: linear attenuation per pixel, ``(n_slices, size, size)`` float32.

    ``attenuation`` is the line integral through a unit-density object as wide as the detector; it scales the
    phantom so that projections transmit a realistic 10-60 % of the beam. Each pixel is the mean over
    ``supersample``\u00b2 sub-pixel samples (partial-volume edges, as a reconstruction sees them).
    """
    _check_sizes(size=size, n_slices=n_slices, n_angles=2)
    ell, mu_per_unit = _scaled_ellipsoids(size, attenuation)
    centre = (size - 1) / 2.0
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    out = np.zeros((n_slices, size, size), dtype=np.float64)
    for dy in offsets:
        for dx in offsets:
            r = np.arange(size)[:, None] - centre + dy
            x = np.arange(size)[None, :] - centre + dx
            for z_idx, z in enumerate(_z_positions(n_slices)):
                for rho, a, b, c, x0, y0, z0, phi in ell:
                    kz = 1.0 - ((z - z0) / c) ** 2
                    if kz <= 0:
                        continue
                    cp, sp = math.cos(math.radians(phi)), math.sin(math.radians(phi))
                    u = (x - x0) * cp + (r - y0) * sp
                    v = -(x - x0) * sp + (r - y0) * cp
                    out[z_idx] += rho * ((u / a) ** 2 + (v / b) ** 2 <= kz)
    return (out * mu_per_unit / supersample**2).astype(np.float32)


def projections(size: int, n_slices: int, theta_deg: np.ndarray, *, attenuation: float = 8.0,
                center_offset: float = 0.0) -> np.ndarray:
    """Exact parallel-beam line integrals of the phantom, ``(n_angles, n_slices, size)`` float64.

    Detector column ``j`` sees the line at signed distance ``j - c`` from the rotation axis, with
    ``c = (size - 1) / 2 + center_offset``; the integral follows ``t = x cos(theta) - y sin(theta)`` with ``y``
    along image rows, the convention of :func:`skimage.transform.radon` and of the reconstruction.
    """
    ell, mu_per_unit = _scaled_ellipsoids(size, attenuation)
    theta = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))[:, None, None]
    cols = np.arange(size, dtype=np.float64)[None, None, :]
    t = cols - ((size - 1) / 2.0 + center_offset)
    z = _z_positions(n_slices)[None, :, None]
    out = np.zeros((theta.shape[0], n_slices, size))
    for rho, a, b, c, x0, y0, z0, phi in ell:
        s2 = np.clip(1.0 - ((z - z0) / c) ** 2, 0.0, None)  # squared in-plane scale of this slice's ellipse
        alpha = -theta - math.radians(phi)  # angle between the line normal and the ellipse's a axis
        h2 = (a * np.cos(alpha)) ** 2 + (b * np.sin(alpha)) ** 2
        tc = t - (x0 * np.cos(theta) - y0 * np.sin(theta))
        inside = np.clip(s2 * h2 - tc**2, 0.0, None)
        out += rho * 2.0 * a * b * np.sqrt(inside) / h2
    return out * mu_per_unit


def _check_sizes(*, size: int, n_slices: int, n_angles: int) -> None:
    for name, value, low in (("size", size, 8), ("n_slices", n_slices, 1), ("n_angles", n_angles, 2)):
        if not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def write_scan(path: Path | str, *, n_angles: int = 121, size: int = 96, n_slices: int = 8, seed: int = 0,
               center_offset: float = 0.0, attenuation: float = 8.0, flux: float = 4000.0,
               n_flats: int = 6, n_darks: int = 4, **metadata: Any) -> Path:
    """Write a synthetic BL 8.3.2 scan to ``path`` (an ``.h5`` file; parent directories are created).

    ``metadata`` overrides :data:`DEFAULT_METADATA` (unknown keys are an error, so a typo cannot silently write
    the default). ``flux`` is the mean flat-field count. The same arguments always produce the same file content.
    Returns the path written.
    """
    import h5py

    _check_sizes(size=size, n_slices=n_slices, n_angles=n_angles)
    unknown = sorted(set(metadata) - set(DEFAULT_METADATA))
    if unknown:
        raise TypeError(f"write_scan: unknown metadata keys {unknown}; known: {sorted(DEFAULT_METADATA)}")
    if abs(center_offset) > size * (1 - _RADIUS_FRACTION) / 2:
        raise ValueError(f"center_offset {center_offset} would push the object off a {size}-pixel detector")
    md = {**DEFAULT_METADATA, **metadata}
    path = Path(path)
    rng = np.random.default_rng(seed)

    theta = np.linspace(0.0, 180.0, n_angles)
    line_integrals = projections(size, n_slices, theta, attenuation=attenuation, center_offset=center_offset)

    # Detector: dark offset with a fixed pattern, a beam that falls off vertically and ripples horizontally
    # (bending-magnet beam through a monochromator), and a per-pixel gain (scintillator/camera fixed pattern).
    rows = np.linspace(-1, 1, n_slices)[:, None]
    cols = np.linspace(-1, 1, size)[None, :]
    dark_level = 100.0 + 3.0 * rng.standard_normal((n_slices, size))
    beam = (1.0 - 0.25 * rows**2) * (1.0 + 0.05 * np.sin(3.0 * np.pi * cols))
    gain = 1.0 + 0.02 * rng.standard_normal((n_slices, size))
    bright = flux * beam * gain

    def counts(expected_signal: np.ndarray) -> np.ndarray:
        signal = rng.poisson(expected_signal).astype(np.float64)
        noisy = dark_level + signal + 2.0 * rng.standard_normal(expected_signal.shape)
        return np.clip(np.rint(noisy), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    data = counts(bright[None] * np.exp(-line_integrals))
    flats = counts(np.broadcast_to(bright, (n_flats, n_slices, size)))
    darks = counts(np.zeros((n_darks, n_slices, size)))

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["implements"] = "exchange:measurement:process"
        ex = f.create_group("exchange")
        chunks = (1, n_slices, size)
        ex.create_dataset("data", data=data, chunks=chunks).attrs["axes"] = "theta:y:x"
        ex.create_dataset("data_white", data=flats, chunks=chunks)
        ex.create_dataset("data_dark", data=darks, chunks=chunks)
        ex.create_dataset("theta", data=theta).attrs["units"] = "degrees"
        _write_metadata(f, md, path=path, n_angles=n_angles, size=size, n_slices=n_slices,
                        n_flats=n_flats, n_darks=n_darks, rng=rng)
    return path


def _write_metadata(f, md: dict[str, Any], *, path: Path, n_angles: int, size: int, n_slices: int,
                    n_flats: int, n_darks: int, rng: np.random.Generator) -> None:
    """The /measurement and /process trees (scalars as 1-element datasets, as the beamline writes them)."""

    def put(key: str, value: Any, units: str | None = None) -> None:
        value = np.array([value.encode()]) if isinstance(value, str) else np.atleast_1d(value)
        ds = f.create_dataset(key, data=value)
        if units:
            ds.attrs["units"] = units

    put("/measurement/sample/file_name", path.stem)
    put("/measurement/sample/name", md["sample_name"])
    put("/measurement/sample/experiment/proposal", md["proposal"])
    put("/measurement/sample/experiment/beamline", md["beamline"])
    put("/measurement/sample/experiment/pi", md["pi"])
    put("/measurement/sample/experiment/experiment_lead", md["experiment_lead"])
    put("/measurement/sample/experimenter/name", md["experimenter_name"])
    put("/measurement/sample/experimenter/email", md["experimenter_email"])
    put("/measurement/instrument/instrument_name", md["instrument_name"])
    put("/measurement/instrument/source/source_name", md["source_name"])
    put("/measurement/instrument/detector/model", md["detector_model"])
    put("/measurement/instrument/detector/pixel_size", float(md["pixel_size_mm"]), "mm")
    put("/measurement/instrument/detector/dimension_x", size)
    put("/measurement/instrument/detector/dimension_y", n_slices)
    put("/measurement/instrument/detector/binning_x", 1)
    put("/measurement/instrument/detector/binning_y", 1)
    put("/measurement/instrument/detector/exposure_time", float(md["exposure_time_s"]), "s")
    put("/measurement/instrument/detector/temperature", 22.5, "C")
    put("/measurement/instrument/detector/dark_field_value", 100.0)
    put("/measurement/instrument/monochromator/energy", float(md["energy_kev"]), "keV")
    put("/measurement/instrument/detection_system/scintillator/scintillator_type", md["scintillator"])
    put("/measurement/instrument/detection_system/objective/camera_objective", md["objective"])
    put("/process/acquisition/name", path.stem)
    put("/process/acquisition/rotation/num_angles", n_angles)
    put("/process/acquisition/rotation/range", 180.0, "degrees")
    put("/process/acquisition/rotation/nhalfCir", 1)
    put("/process/acquisition/flat_fields/num_flat_fields", n_flats)
    put("/process/acquisition/dark_fields/num_dark_fields", n_darks)
    # Per-projection readbacks (ring current, stage, time), which the ingest samples at 10 points.
    put("/measurement/instrument/source/current", 500.0 + 0.2 * rng.standard_normal(n_angles), "mA")
    put("/measurement/instrument/sample_motor_stack/setup/sample_x", np.full(n_angles, 1.25), "mm")
    put("/measurement/instrument/time_stamp", 1.7e9 + md["exposure_time_s"] * np.arange(n_angles), "s")
