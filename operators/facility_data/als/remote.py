"""Functions run *where the data is* (ALCF through Globus Compute, or the local process pool standing in for it).

They take plain paths on the remote filesystem, import only what they need, fail loudly (an exception travels back
as the task's error) and check their outputs before returning a JSON-able summary. The package must be installed
in the Globus Compute endpoint's environment.
"""

from __future__ import annotations


def reconstruct_scan(h5_path: str, out_folder: str) -> dict:
    """Reconstruct ``h5_path`` into ``<out_folder>/rec<stem>/``; returns the reconstruction summary."""
    from pathlib import Path

    from facility_data.als.recon import reconstruct

    result = reconstruct(h5_path, out_folder).to_dict()
    tiffs = list(Path(result["tiff_dir"]).glob("*.tif*"))
    if len(tiffs) != result["n_slices"]:
        raise RuntimeError(f"reconstruction of {h5_path} wrote {len(tiffs)} TIFFs, expected {result['n_slices']}")
    return result


def multiscale_scan(tiff_dir: str, zarr_dir: str, h5_path: str, pixel_size_um_fallback: float) -> dict:
    """Convert the TIFF stack to a multiscale OME-Zarr (pixel size from the scan, else the fallback)."""
    from facility_data.als.multiscale import MultiscaleError, build_multiscale, pixel_size_from_scan
    from facility_data.als.permissions import make_group_writable

    try:
        pixel = pixel_size_from_scan(h5_path)
    except MultiscaleError:
        pixel = pixel_size_um_fallback
    result = build_multiscale(tiff_dir, zarr_dir, pixel).to_dict()
    make_group_writable(zarr_dir)
    return result
