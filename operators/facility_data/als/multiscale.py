"""TIFF stack -> multiscale OME-Zarr (OME-NGFF ``multiscales``), the BL 8.3.2 "multi-resolution" product.

``build_multiscale(tiff_dir, zarr_dir, pixel_size_um)`` reads the reconstruction's TIFFs in name order (one per z
slice) and writes an OME-Zarr image group at ``zarr_dir`` (conventionally ``rec<stem>.zarr/`` next to
``rec<stem>/``):

* level ``0`` is the full-resolution ``(z, y, x)`` volume (dtype of the TIFFs), level ``k`` halves every axis
  that is still longer than one voxel by a 2x2x2 block mean (odd edges are padded by repeating the border);
* the format is OME-NGFF 0.5 on Zarr v3: the group's ``zarr.json`` holds ``attributes.ome`` (``version`` 0.5,
  ``multiscales``), every level's array has ``dimension_names`` ``["z", "y", "x"]``, matching the axes;
* the ``multiscales`` metadata declares axes ``z, y, x`` of type ``space`` in ``micrometer``, the downscaling
  (``type`` ``mean``, ``metadata`` naming the method) and, per level, a ``scale`` of ``pixel_size_um * 2**k``
  (per axis: axes that stopped shrinking keep their scale) then a ``translation`` that puts each coarse voxel at
  the centre of the block it averages, so readers place every level at the same physical position;
* before the pyramid is put in place it is validated with ``ome-zarr-models`` (its v05 ``Image`` model reading
  the written store); an invalid pyramid fails the build and is never published.

The volume is streamed: level 0 is written one slice at a time and each coarser level is computed from the
previous one two slices at a time, so memory stays at a few slices even for a full-size 2560^3 reconstruction.
The pyramid is written to a temporary sibling and renamed into place (no half-written ``.zarr`` looks
finished; a rerun replaces it), then made group-writable (dirs 2775, files 0664) for later Globus deletes.

``pixel_size_from_scan(h5_path)`` reads the scan's detector pixel size in micrometres; ``validate_ome_ngff(path)``
checks any store as above.

CLI::

    python -m facility_data.als.multiscale TIFF_DIR [--zarr-dir DIR] (--pixel-size-um UM | --raw-file SCAN.h5)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facility_data.als.permissions import staged_directory

log = logging.getLogger(__name__)

_TIFF = re.compile(r".*\.tiff?$", re.IGNORECASE)
_AXES = ("z", "y", "x")


class MultiscaleError(ValueError):
    """The input TIFF stack or parameters cannot make a pyramid (the message says why)."""


@dataclass(frozen=True)
class MultiscaleResult:
    zarr_dir: str
    shapes: list[tuple[int, int, int]]  # per level, (z, y, x)
    scales_um: list[tuple[float, float, float]]  # per level, voxel size in micrometres
    dtype: str

    @property
    def n_levels(self) -> int:
        return len(self.shapes)

    def to_dict(self) -> dict:
        return {**asdict(self), "n_levels": self.n_levels}


def list_tiffs(tiff_dir: Path | str) -> list[Path]:
    """The stack's TIFF files in slice order (sorted by name; hidden files ignored)."""
    tiff_dir = Path(tiff_dir)
    if not tiff_dir.is_dir():
        raise MultiscaleError(f"TIFF directory not found: {tiff_dir}")
    files = sorted(p for p in tiff_dir.iterdir() if _TIFF.match(p.name) and not p.name.startswith("."))
    if not files:
        raise MultiscaleError(f"no .tif/.tiff files in {tiff_dir}")
    return files


def default_levels(shape: tuple[int, int, int], *, min_size: int = 16, max_levels: int = 6) -> int:
    """Levels until the smaller in-plane side would drop below ``min_size`` (at least 1)."""
    smallest = min(shape[1:])
    return max(1, min(max_levels, int(math.floor(math.log2(max(smallest, 1) / min_size))) + 1))


def _halve(block: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Block mean by ``factors`` (1 or 2 per axis), padding odd edges by repetition."""
    pad = [(0, (-n) % f) for n, f in zip(block.shape, factors, strict=True)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    z, y, x = block.shape
    fz, fy, fx = factors
    out = block.reshape(z // fz, fz, y // fy, fy, x // fx, fx).mean(axis=(1, 3, 5), dtype=np.float64)
    return out


def validate_ome_ngff(zarr_dir: Path | str) -> None:
    """Raise :class:`MultiscaleError` unless ``zarr_dir`` is a valid OME-NGFF 0.5 image (ome-zarr-models v05)."""
    import zarr
    from ome_zarr_models.v05.image import Image
    from pydantic import ValidationError

    try:
        Image.from_zarr(zarr.open_group(str(zarr_dir), mode="r"))
    except ValidationError as exc:  # one line per failed rule, without pydantic's dump of the input
        raise MultiscaleError(f"{zarr_dir} is not valid OME-NGFF 0.5: "
                              + "; ".join(e["msg"] for e in exc.errors(include_url=False))) from exc
    except Exception as exc:  # no zarr group, no "ome" key, a missing array: also "not valid"
        raise MultiscaleError(f"{zarr_dir} is not valid OME-NGFF 0.5: {exc}") from exc


def _ome_attributes(name: str, scales: list[tuple[float, float, float]]) -> dict:
    """The group's ``ome`` attribute, built with ome-zarr-models' v05 models (which check it as they build)."""
    from ome_zarr_models.v05.axes import Axis
    from ome_zarr_models.v05.image import ImageAttrs
    from ome_zarr_models.v05.multiscales import Dataset, Multiscale

    from facility_data import __version__

    # voxel centres: a level-k voxel averages a block whose centre is (scale_k - scale_0) / 2 from the origin
    datasets = [Dataset.build(path=str(k), scale=scale,
                              translation=[(s - s0) / 2 for s, s0 in zip(scale, scales[0], strict=True)])
                for k, scale in enumerate(scales)]
    method = {"description": "2x2x2 block mean (axes of length 1 are not reduced; odd edges repeat the border)",
              "method": f"{__name__}.build_multiscale", "version": __version__}
    multiscale = Multiscale(axes=[Axis(name=n, type="space", unit="micrometer") for n in _AXES],
                            datasets=datasets, name=name, type="mean", metadata=method)
    return ImageAttrs(version="0.5", multiscales=[multiscale]).model_dump(mode="json", exclude_none=True)


def pixel_size_from_scan(h5_path: Path | str) -> float:
    """The scan's ``/measurement/instrument/detector/pixel_size`` in micrometres."""
    import h5py

    from facility_data.als.recon import read_pixel_size_um

    path = Path(h5_path)
    if not path.is_file():
        raise MultiscaleError(f"scan file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            size = read_pixel_size_um(f)
    except OSError as exc:
        raise MultiscaleError(f"{path} is not a readable HDF5 file: {exc}") from exc
    if size is None:
        raise MultiscaleError(f"{path}: no positive /measurement/instrument/detector/pixel_size")
    return size


def build_multiscale(tiff_dir: Path | str, zarr_dir: Path | str, pixel_size_um: float, *,
                     n_levels: int | None = None, chunk_xy: int = 256) -> MultiscaleResult:
    """Write the OME-Zarr pyramid of a TIFF stack; see the module docstring. Returns shapes and scales."""
    import tifffile
    import zarr

    if not (isinstance(pixel_size_um, int | float) and math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise MultiscaleError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    files = list_tiffs(tiff_dir)
    first = tifffile.imread(files[0])
    if first.ndim != 2:
        raise MultiscaleError(f"{files[0]} is not a 2-D image (shape {first.shape})")
    shape0 = (len(files), *first.shape)
    levels = n_levels if n_levels is not None else default_levels(shape0)
    if levels < 1:
        raise MultiscaleError(f"n_levels must be >= 1, got {levels}")

    zarr_dir = Path(zarr_dir)
    dtype = first.dtype
    with staged_directory(zarr_dir) as partial:
        root = zarr.open_group(str(partial), mode="w")
        chunks = lambda shp: (1, min(chunk_xy, shp[1]), min(chunk_xy, shp[2]))  # noqa: E731
        arr = root.create_array("0", shape=shape0, chunks=chunks(shape0), dtype=dtype, dimension_names=_AXES)
        for z, path in enumerate(files):
            img = first if z == 0 else tifffile.imread(path)
            if img.shape != first.shape:
                raise MultiscaleError(f"{path} has shape {img.shape}, the stack's first image {first.shape}")
            arr[z] = img
        shapes, scales = [shape0], [(float(pixel_size_um),) * 3]
        for level in range(1, levels):
            prev = root[str(level - 1)]
            factors = tuple(2 if n > 1 else 1 for n in prev.shape)
            shape = tuple(-(-n // f) for n, f in zip(prev.shape, factors, strict=True))
            cur = root.create_array(str(level), shape=shape, chunks=chunks(shape), dtype=dtype,
                                    dimension_names=_AXES)
            for z in range(shape[0]):
                block = np.asarray(prev[z * factors[0]:(z + 1) * factors[0]])
                reduced = _halve(block, factors)
                level_slice = reduced[0] if np.issubdtype(dtype, np.floating) else np.rint(reduced[0])
                cur[z] = level_slice.astype(dtype)
            shapes.append(shape)
            scales.append(tuple(s * f for s, f in zip(scales[-1], factors, strict=True)))
        root.attrs["ome"] = _ome_attributes(Path(tiff_dir).name, scales)
        try:  # the store as written: arrays, their dimension_names and the metadata together
            validate_ome_ngff(partial)
        except MultiscaleError as exc:
            raise MultiscaleError(f"refusing to publish {zarr_dir}: {exc}") from exc
    log.info("wrote %s: %d levels %s, voxel %.4g um", zarr_dir, levels, shapes, pixel_size_um)
    return MultiscaleResult(str(zarr_dir), shapes, scales, str(dtype))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facility_data.als.multiscale",
                                     description="TIFF stack -> multiscale OME-Zarr")
    parser.add_argument("tiff_dir", type=Path)
    parser.add_argument("--zarr-dir", type=Path, default=None, help="default: <tiff_dir>.zarr next to it")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--pixel-size-um", type=float)
    size.add_argument("--raw-file", type=Path, help="the scan .h5 to read the pixel size from")
    parser.add_argument("--levels", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        pixel = args.pixel_size_um if args.raw_file is None else pixel_size_from_scan(args.raw_file)
        zarr_dir = args.zarr_dir or args.tiff_dir.with_name(args.tiff_dir.name + ".zarr")
        result = build_multiscale(args.tiff_dir, zarr_dir, pixel, n_levels=args.levels)
    except MultiscaleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
