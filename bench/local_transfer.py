"""Benchmark: local endpoint-to-endpoint transfer with checksum verification vs `cp -r` of the same tree.

Builds a tree of mixed file sizes (many small files, some medium, a few large) in a temporary site, copies it once
with ``cp -r`` and once with LocalTransfer as the operators use it (kernel copy, CRC32C of source and copy compared,
atomic install), in the same run (best of three interleaved rounds each), and prints one JSON line:
{"bench": "local_transfer", "files", "bytes", "seconds", "cp_seconds", "vs_cp"}   (vs_cp = cp_seconds / seconds)

Usage: .venv/bin/python bench/local_transfer.py [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_tree(root: Path, scale: float) -> tuple[int, int]:
    sizes = ([4 << 10] * int(400 * scale) + [256 << 10] * int(60 * scale) + [8 << 20] * int(12 * scale)
             + [64 << 20] * max(1, int(3 * scale)))
    total = 0
    block = os.urandom(1 << 20)
    for i, size in enumerate(sizes):
        path = root / f"scan{i % 7:02d}" / f"sub{i % 3}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            left = size
            while left:
                n = min(left, len(block))
                fh.write(block[:n] if n < len(block) else block)
                left -= n
        total += size
    return len(sizes), total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of files")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        site = Path(tmp)
        os.environ["FACILITY_SITE"] = str(site)
        from facility_data.transfer import Endpoint, LocalTransfer

        src = Endpoint(name="src", kind="local", site="als", local_root=site / "endpoints" / "src")
        dst = Endpoint(name="dst", kind="local", site="als", local_root=site / "endpoints" / "dst")
        tree = src.local_path("tree")
        files, nbytes = build_tree(tree, args.scale)

        # Same bytes, same page-cache state: warm the source once, then time both copies.
        subprocess.run(["cat", *[str(p) for p in tree.rglob("*") if p.is_file()]], stdout=subprocess.DEVNULL,
                       check=True)
        # Best of three rounds each, interleaved, so write-back or a busy neighbour does not bias one side.
        cp_times, our_times = [], []
        for _ in range(3):
            cp_dst = site / "cp_copy"
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", str(tree), str(cp_dst)], check=True)
            cp_times.append(time.perf_counter() - t0)
            shutil.rmtree(cp_dst)

            t0 = time.perf_counter()
            stats = LocalTransfer().transfer(src, "tree", dst, "tree", recursive=True, verify_checksum=True)
            our_times.append(time.perf_counter() - t0)
            if stats.files != files or stats.bytes != nbytes:
                raise SystemExit(f"transfer incomplete: {stats.files}/{files} files, {stats.bytes}/{nbytes} B")
            shutil.rmtree(dst.local_path("tree"))
        seconds, cp_seconds = min(our_times), min(cp_times)

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", file=sys.stderr)
    print(json.dumps({"bench": "local_transfer", "files": files, "bytes": nbytes, "seconds": round(seconds, 3),
                      "cp_seconds": round(cp_seconds, 3), "vs_cp": round(cp_seconds / seconds, 3)}))


if __name__ == "__main__":
    main()
