"""An S3 API server for the local site: moto's server mode (in-memory; stands in for USDF's Ceph RGW)."""

from __future__ import annotations

import sys
from pathlib import Path

from facility_data.localsite.procs import SiteError, alive, http_ok, port_in_use, start_healthy, stop

MARKER = "moto.server"


class S3Server:
    def __init__(self, root: Path, port: int):
        self.root = root
        self.port = port
        self.log = root / "s3.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/moto-api/")

    def start(self) -> int:
        if port_in_use(self.port):
            raise SiteError(f"port {self.port} for the S3 server is taken: set FACILITY_S3_PORT")
        return start_healthy([sys.executable, "-m", MARKER, "-H", "127.0.0.1", "-p", str(self.port)], marker=MARKER,
                             check=self.healthy, what=f"S3 API server on {self.url}", timeout=60, log=self.log)

    def running(self, pid: int | None) -> bool:
        return alive(pid, MARKER) and self.healthy()

    def stop(self, pid: int | None) -> bool:
        return bool(pid) and stop(pid, MARKER)
