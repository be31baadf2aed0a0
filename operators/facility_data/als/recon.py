"""Local tomographic reconstruction of a BL 8.3.2 scan (Data Exchange HDF5) into a TIFF stack.

The steps follow what the beamline's TomoPy script does at NERSC/ALCF, implemented here with numpy/scipy so the
LOCAL reconstruction target runs on any machine:

1. **Read** ``/exchange/data`` (projections), ``data_white`` (flats), ``data_dark`` (darks), ``theta``
   (degrees unless its ``units`` attribute says radians) and the detector pixel size. A missing file, a file that
   is not HDF5, or a missing/misshapen dataset raises :class:`ScanError` naming the file and the dataset, before
   anything is written. Pixels are read ``chunk`` rows at a time, so a full-size scan need not fit in memory.
2. **Normalise**: ``(proj - mean(dark)) / (mean(flat) - mean(dark))``, clipped to a small positive value, then
   ``-log`` (Beer-Lambert: the result is the line integral of linear attenuation).
3. **Rotation centre** by phase correlation (the beamline's default ``'pc'`` method): the projection at
   ``theta0 + 180`` degrees is the mirror image of the one at ``theta0`` about the rotation axis, so the sub-pixel
   shift that registers the mirrored 180-degree projection onto the 0-degree one gives ``c = (n - 1 + shift) / 2``.
   Scans without a pair 180 degrees apart fall back to the detector centre (logged, and ``center_method`` says so).
4. **Filtered back-projection**: edge-padded FFT filtering along the detector (ramp with a Shepp-Logan window by
   default), then back-projection with linear interpolation. The back-projector is a sparse matrix (two weights
   per pixel and angle) built once per scan geometry and applied to many slices in one sparse-dense product;
   this is what makes it faster than :func:`skimage.transform.iradon`, which interpolates slice by slice
   (``bench/recon_local.py`` measures the ratio). Angles get quadrature weights, so uneven spacing and the
   repeated 0/180-degree projection are weighted correctly. Pixels outside the inscribed circle are zero.
5. **Write** ``<out_dir>/rec<stem>/rec<stem>_NNNNN.tiff`` (float32, one per slice, attenuation per pixel:
   divide by the pixel size for 1/length). The stack is written to a temporary sibling directory and renamed into
   place, so a crash never leaves a half-written ``rec<stem>/`` that looks finished, and a rerun replaces it.
   Directories get mode 2775 and files 0664, because later Globus deletes fail on outputs the group cannot write.

CLI (what the LOCAL HPC controller runs as its job)::

    python -m facility_data.als.recon SCAN.h5 OUT_DIR [--center C] [--filter shepp-logan] [--chunk 32]

prints one JSON line describing the result and exits non-zero with the error on stderr otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facility_data.als.permissions import staged_directory

log = logging.getLogger(__name__)

FILTERS = ("ramp", "shepp-logan", "hann", "cosine")
# Upper bound on cached back-projector non-zeros (x 8 bytes); larger geometries rebuild it per slice chunk.
_MAX_CACHED_NNZ = 40_000_000
_BLOCK_NNZ = 4_000_000


class ScanError(ValueError):
    """The scan file is missing, unreadable or lacks what reconstruction needs (the message says what)."""


@dataclass(frozen=True)
class Scan:
    """What reconstruction needs from a DX file; ``data``/``flats``/``darks`` are ``(n, rows_read, n_det)``
    (all rows unless :func:`read_scan` was asked for a range); ``n_rows`` is the file's total."""

    path: Path
    data: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    theta: np.ndarray  # radians
    pixel_size_um: float | None
    n_rows: int


@dataclass(frozen=True)
class ReconResult:
    """Outcome of :func:`reconstruct` (JSON-serialisable through :meth:`to_dict`)."""

    h5_path: str
    tiff_dir: str
    n_slices: int
    shape: tuple[int, int, int]  # (slices, rows, cols) of the reconstructed volume
    center: float  # detector column of the rotation axis
    center_method: str  # "phase-correlation", "given" or "detector-centre"
    pixel_size_um: float | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------- reading
_UNIT_TO_UM = {"mm": 1000.0, "millimeter": 1000.0, "um": 1.0, "µm": 1.0, "micron": 1.0, "micrometer": 1.0,
               "cm": 10000.0, "m": 1e6, "nm": 1e-3}


def read_pixel_size_um(h5file) -> float | None:
    """``/measurement/instrument/detector/pixel_size`` in micrometres (BL 8.3.2 writes mm when no unit is given)."""
    ds = h5file.get("/measurement/instrument/detector/pixel_size")
    if ds is None:
        return None
    value = float(np.ravel(ds[()])[0])
    unit = ds.attrs.get("units", "mm")
    unit = unit.decode() if isinstance(unit, bytes) else str(unit)
    factor = _UNIT_TO_UM.get(unit.strip().lower())
    if factor is None:
        raise ScanError(f"{h5file.filename}: pixel_size has unknown units {unit!r}")
    return value * factor if value > 0 else None


def read_scan(h5_path: Path | str, *, slices: slice | None = None, projections: list[int] | None = None) -> Scan:
    """Read projections, flats, darks, angles and pixel size, validating the layout.

    ``slices`` reads only a range of rows (``slice(0, 0)``: metadata and shapes only); ``projections`` only those
    projection indices (increasing). Reconstruction reads a few rows at a time, so a full-size scan never has
    to fit in memory.
    """
    import h5py

    path = Path(h5_path)
    if not path.is_file():
        raise ScanError(f"scan file not found: {path}")
    rows = slices or slice(None)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ScanError(f"{path} is not a readable HDF5 file: {exc}") from exc
    with f:
        arrays, n_rows = {}, 0
        for name in ("data", "data_white", "data_dark"):
            ds = f.get(f"/exchange/{name}")
            if ds is None:
                raise ScanError(f"{path}: dataset /exchange/{name} is missing (not a Data Exchange scan?)")
            if ds.ndim != 3:
                raise ScanError(f"{path}: /exchange/{name} has shape {ds.shape}, expected 3-D (n, rows, cols)")
            n_rows = ds.shape[1]
            arrays[name] = ds
        shapes = {k: v.shape[1:] for k, v in arrays.items()}
        if len(set(shapes.values())) != 1:
            raise ScanError(f"{path}: projections, flats and darks differ in image shape: {shapes}")
        th = f.get("/exchange/theta")
        if th is None:
            raise ScanError(f"{path}: dataset /exchange/theta (rotation angles) is missing")
        theta = np.asarray(th[()], dtype=np.float64).ravel()
        if theta.size != arrays["data"].shape[0]:
            raise ScanError(f"{path}: {theta.size} angles in /exchange/theta but "
                            f"{arrays['data'].shape[0]} projections in /exchange/data")
        unit = th.attrs.get("units", "degrees")
        unit = unit.decode() if isinstance(unit, bytes) else str(unit)
        if not unit.lower().startswith("rad"):
            theta = np.deg2rad(theta)
        pixel_size_um = read_pixel_size_um(f)
        if min(arrays["data"].shape[0], arrays["data_white"].shape[0], arrays["data_dark"].shape[0]) == 0:
            raise ScanError(f"{path}: needs at least one projection, one flat and one dark")
        which = slice(None) if projections is None else list(projections)
        read = {name: np.asarray(ds[:, rows, :] if name != "data" else ds[which, rows, :], dtype=np.float32)
                for name, ds in arrays.items()}
    return Scan(path, read["data"], read["data_white"], read["data_dark"], theta, pixel_size_um, n_rows)


# ------------------------------------------------------------------------------------------- preprocessing
def normalize(data: np.ndarray, flats: np.ndarray, darks: np.ndarray, *, floor: float = 1e-3) -> np.ndarray:
    """Flat/dark normalise and take ``-log``: line integrals of attenuation, same shape as ``data``, float32."""
    dark = darks.mean(axis=0, dtype=np.float64).astype(np.float32)
    flat = flats.mean(axis=0, dtype=np.float64).astype(np.float32) - dark
    # Dead pixels (flat <= dark) would divide by zero; give them transmission 1 (no information, no artefact).
    flat = np.where(flat > 0, flat, np.float32(1.0))
    trans = (data - dark) / flat
    np.clip(trans, floor, None, out=trans)
    return -np.log(trans, out=trans)


def find_center(p0: np.ndarray, p180: np.ndarray, *, upsample: int = 20) -> float:
    """Rotation-axis column from two ``-log`` normalised projections 180 degrees apart (phase correlation).

    The 180-degree projection is the mirror image of the 0-degree one about the axis ``c`` (``x -> 2c - x``);
    flipping it (``x -> n - 1 - x``) leaves a shift of ``2c - (n - 1)``, measured to 1/``upsample`` pixel.
    """
    from skimage.registration import phase_cross_correlation

    if p0.shape != p180.shape or p0.ndim != 2:
        raise ValueError(f"need two 2-D projections of the same shape, got {p0.shape} and {p180.shape}")
    shift, _, _ = phase_cross_correlation(p0, p180[:, ::-1], upsample_factor=upsample, normalization=None)
    return ((p0.shape[-1] - 1) + float(shift[-1])) / 2.0


def opposite_index(theta: np.ndarray) -> int | None:
    """Index of the projection 180 degrees after the first, or None when none lies within 1.5 angular steps."""
    target = theta[0] + math.pi
    i180 = int(np.argmin(np.abs(theta - target)))
    step = float(np.median(np.abs(np.diff(theta)))) if theta.size > 1 else math.pi
    return None if i180 == 0 or abs(theta[i180] - target) > 1.5 * step else i180


def estimate_center(scan: Scan) -> tuple[float, str]:
    """``(center, method)``: phase correlation of the first projection and the one 180 degrees later (``scan``
    holds either all projections or just that pair); the detector centre, method ``"detector-centre"`` (logged),
    when the scan has no such pair."""
    n_det = scan.data.shape[-1]
    i180 = opposite_index(scan.theta)
    if i180 is None:
        log.warning("%s: no projection 180 degrees after the first, using the detector centre", scan.path)
        return (n_det - 1) / 2.0, "detector-centre"
    pair = scan.data[[0, i180]] if scan.data.shape[0] == scan.theta.size else scan.data[:2]
    norm = normalize(pair, scan.flats, scan.darks)
    return find_center(norm[0], norm[1]), "phase-correlation"


# ------------------------------------------------------------------------------------------------- filtering
def _filter_response(n_pad: int, name: str) -> np.ndarray:
    """rFFT-domain filter: the ramp derived in real space (no DC offset; Kak & Slaney eq. 61) times a window."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; choose one of {FILTERS}")
    n = np.concatenate((np.arange(1, n_pad // 2 + 1, 2), np.arange(n_pad // 2 - 1, 0, -2)))
    h = np.zeros(n_pad)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * n) ** 2
    resp = 2.0 * np.real(np.fft.fft(h))[: n_pad // 2 + 1]
    omega = np.pi * np.fft.rfftfreq(n_pad) * 2.0  # 0 .. pi
    if name == "shepp-logan":
        resp[1:] *= np.sin(omega[1:] / 2) / (omega[1:] / 2)
    elif name == "cosine":
        resp *= np.cos(omega / 2)
    elif name == "hann":
        resp *= 0.5 * (1 + np.cos(omega))
    return resp.astype(np.float32)


def filter_sinograms(sino: np.ndarray, filter_name: str = "shepp-logan") -> np.ndarray:
    """Filter ``(..., n_det)`` projections along the detector; edges are padded with the border values so a
    sample wider than the field of view does not ring (a common case in micro-CT)."""
    n_det = sino.shape[-1]
    n_pad = max(64, 1 << int(math.ceil(math.log2(2 * n_det))))
    left = (n_pad - n_det) // 2
    widths = [(0, 0)] * (sino.ndim - 1) + [(left, n_pad - n_det - left)]
    padded = np.pad(sino, widths, mode="edge")
    spec = np.fft.rfft(padded, axis=-1)
    spec *= _filter_response(n_pad, filter_name)
    return np.fft.irfft(spec, n=n_pad, axis=-1)[..., left:left + n_det].astype(np.float32)


# --------------------------------------------------------------------------------------------- back-projection
def angle_weights(theta: np.ndarray) -> np.ndarray:
    """Quadrature weights (radians) for angles modulo pi: half the gap to each neighbour; sums to pi."""
    phi = np.mod(theta, math.pi)
    order = np.argsort(phi, kind="stable")
    s = phi[order]
    gaps = np.diff(np.concatenate((s, s[:1] + math.pi)))
    w_sorted = (gaps + np.roll(gaps, 1)) / 2.0
    w = np.empty_like(w_sorted)
    w[order] = w_sorted
    return w


class BackProjector:
    """Linear-interpolation back-projection for one geometry, as sparse matrices over chunks of angles.

    ``apply(filtered)`` maps filtered projections ``(n_slices, n_angles, n_det)`` to images
    ``(n_slices, n_det, n_det)``. Image pixel ``(row, col)`` at ``x = col - m``, ``y = row - m`` with
    ``m = (n_det - 1) / 2`` sees detector coordinate ``x cos(theta) - y sin(theta) + center``.
    """

    def __init__(self, theta: np.ndarray, n_det: int, center: float, *, angles_per_block: int | None = None):
        import scipy.sparse  # noqa: F401  (fail here, not half-way)

        self.theta = np.asarray(theta, dtype=np.float64)
        self.n_det = n_det
        self.center = float(center)
        m = (n_det - 1) / 2.0
        yy, xx = np.mgrid[:n_det, :n_det]
        x, y = xx - m, yy - m
        self.inside = np.flatnonzero((x**2 + y**2).ravel() <= (n_det / 2.0) ** 2)
        self._x = x.ravel()[self.inside]
        self._y = y.ravel()[self.inside]
        self._weights = angle_weights(self.theta) / 2.0  # /2: the filter's normalisation (as skimage's iradon)
        n_angles = self.theta.size
        nnz = 2 * self.inside.size * n_angles
        if angles_per_block is None:  # blocks of ~4M entries: building them stays in cache (10x faster than one)
            angles_per_block = max(1, min(n_angles, _BLOCK_NNZ // (2 * self.inside.size)))
        self.blocks = [(a, min(a + angles_per_block, n_angles)) for a in range(0, n_angles, angles_per_block)]
        self.cached = nnz <= _MAX_CACHED_NNZ
        self._cache = [self._build(a0, a1) for a0, a1 in self.blocks] if self.cached else None

    def _build(self, a0: int, a1: int):
        """CSR rows = image pixels, columns = (angle, detector pixel); two entries per angle, built directly in
        CSR order (columns grow with the angle), so no COO sort is needed. Samples that fall off the detector
        keep a clipped column with weight 0, which keeps every row the same length."""
        import scipy.sparse

        n_pix, n_det, n_ang = self.inside.size, self.n_det, a1 - a0
        th = self.theta[a0:a1]
        cos, sin = np.cos(th).astype(np.float32), np.sin(th).astype(np.float32)
        u = self._x[:, None].astype(np.float32) * cos - self._y[:, None].astype(np.float32) * sin
        u += np.float32(self.center)
        i0 = np.floor(u)
        frac = u - i0
        i0 = i0.astype(np.int32)
        w = self._weights[a0:a1].astype(np.float32)
        data = np.empty((n_pix, n_ang, 2), dtype=np.float32)
        data[..., 0] = (1 - frac) * w * ((i0 >= 0) & (i0 < n_det))
        data[..., 1] = frac * w * ((i0 >= -1) & (i0 < n_det - 1))
        base = (np.arange(n_ang, dtype=np.int32) * n_det)[None, :]
        indices = np.empty((n_pix, n_ang, 2), dtype=np.int32)
        indices[..., 0] = base + np.clip(i0, 0, n_det - 1)
        indices[..., 1] = base + np.clip(i0 + 1, 0, n_det - 1)
        indptr = np.arange(0, 2 * n_ang * (n_pix + 1), 2 * n_ang, dtype=np.int64)
        return scipy.sparse.csr_matrix((data.ravel(), indices.ravel(), indptr), shape=(n_pix, n_ang * n_det))

    def _operators(self) -> Iterator[tuple[int, int, object]]:
        for i, (a0, a1) in enumerate(self.blocks):
            yield a0, a1, (self._cache[i] if self._cache is not None else self._build(a0, a1))

    def apply(self, filtered: np.ndarray) -> np.ndarray:
        n_slices, n_angles, n_det = filtered.shape
        if n_angles != self.theta.size or n_det != self.n_det:
            raise ValueError(f"projections {filtered.shape} do not match the geometry "
                             f"({self.theta.size} angles, {self.n_det} detector pixels)")
        acc = np.zeros((self.inside.size, n_slices), dtype=np.float32)
        for a0, a1, op in self._operators():
            block = np.ascontiguousarray(filtered[:, a0:a1, :].reshape(n_slices, -1).T)
            acc += op @ block
        out = np.zeros((n_slices, n_det * n_det), dtype=np.float32)
        out[:, self.inside] = acc.T
        return out.reshape(n_slices, n_det, n_det)


def fbp(sinograms: np.ndarray, theta: np.ndarray, center: float | None = None, *,
        filter_name: str = "shepp-logan", projector: BackProjector | None = None) -> np.ndarray:
    """Filtered back-projection of ``(n_slices, n_angles, n_det)`` sinograms (line integrals) at ``theta``
    (radians); ``center`` defaults to the detector centre. Returns ``(n_slices, n_det, n_det)`` float32."""
    sinograms = np.asarray(sinograms, dtype=np.float32)
    if sinograms.ndim == 2:
        sinograms = sinograms[None]
    n_det = sinograms.shape[-1]
    if projector is None:
        projector = BackProjector(theta, n_det, (n_det - 1) / 2.0 if center is None else center)
    return projector.apply(filter_sinograms(sinograms, filter_name))


# ------------------------------------------------------------------------------------------------- pipeline
def tiff_dir_for(h5_path: Path | str, out_dir: Path | str) -> Path:
    """``<out_dir>/rec<stem>/``, the BL 8.3.2 name of a scan's TIFF stack."""
    return Path(out_dir) / f"rec{Path(h5_path).stem}"


def reconstruct(h5_path: Path | str, out_dir: Path | str, *, center: float | None = None,
                filter_name: str = "shepp-logan", chunk: int = 32) -> ReconResult:
    """Reconstruct a DX scan into ``<out_dir>/rec<stem>/`` (one float32 TIFF per slice).

    ``center`` (detector column of the rotation axis) overrides the phase-correlation estimate. Slices are
    processed ``chunk`` at a time to bound memory. Errors in the input raise :class:`ScanError` before anything
    is written; the TIFF directory appears only once complete.
    """
    import tifffile

    t_start = time.perf_counter()
    h5_path = Path(h5_path)
    if filter_name not in FILTERS:
        raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    info = read_scan(h5_path, slices=slice(0, 0))  # validates the layout; reads no pixels
    n_angles, n_rows, n_det = info.theta.size, info.n_rows, info.data.shape[-1]
    if center is None:
        i180 = opposite_index(info.theta)
        center_value, method = estimate_center(
            read_scan(h5_path, projections=[0, i180]) if i180 is not None else info)
    else:
        center_value, method = float(center), "given"
    log.info("reconstructing %s: %d slices, %d angles, %d detector pixels, centre %.2f (%s)",
             h5_path, n_rows, n_angles, n_det, center_value, method)

    final = tiff_dir_for(h5_path, out_dir)
    with staged_directory(final) as partial:
        projector = BackProjector(info.theta, n_det, center_value)
        for start in range(0, n_rows, chunk):
            part = read_scan(h5_path, slices=slice(start, min(start + chunk, n_rows)))
            proj = normalize(part.data, part.flats, part.darks)
            images = fbp(proj.transpose(1, 0, 2), info.theta, filter_name=filter_name, projector=projector)
            for k, image in enumerate(images):
                tifffile.imwrite(partial / f"{final.name}_{start + k:05d}.tiff", image)
    seconds = time.perf_counter() - t_start
    log.info("wrote %d slices to %s in %.2f s", n_rows, final, seconds)
    return ReconResult(str(h5_path), str(final), n_rows, (n_rows, n_det, n_det), center_value, method,
                       info.pixel_size_um, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facility_data.als.recon", description=__doc__.split("\n")[0])
    parser.add_argument("h5", type=Path, help="the scan (Data Exchange HDF5)")
    parser.add_argument("out_dir", type=Path, help="directory that receives rec<stem>/")
    parser.add_argument("--center", type=float, default=None, help="rotation-axis column (default: estimate)")
    parser.add_argument("--filter", dest="filter_name", default="shepp-logan", choices=FILTERS)
    parser.add_argument("--chunk", type=int, default=32, help="slices per chunk (memory bound)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        result = reconstruct(args.h5, args.out_dir, center=args.center, filter_name=args.filter_name,
                             chunk=args.chunk)
    except (ScanError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
