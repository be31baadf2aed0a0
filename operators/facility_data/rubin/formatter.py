"""The one FITS formatter the project's Butler repos need (daf_butler ships none that accepts ``.fits``).

It must be importable by every process that reads the repos, hence it lives in the installed package. Reading returns
a small dict (primary header cards, size, md5) rather than pixels: enough to prove a dataset is readable and
byte-identical, without afw.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lsst.daf.butler import FormatterV2
from lsst.resources import ResourcePath


def parse_primary_header(data: bytes) -> dict[str, str]:
    """Cards of the first FITS header (80-character records up to END)."""
    cards: dict[str, str] = {}
    for i in range(0, len(data) - 79, 80):
        card = data[i : i + 80].decode("ascii", "replace")
        key = card[:8].strip()
        if key == "END":
            break
        if card[8:10] == "= ":
            cards[key] = card[10:].split(" /")[0].strip().strip("'").strip()
    return cards


class FitsBytesFormatter(FormatterV2):
    """Read-only formatter for raw FITS files: header cards plus size and md5 of the whole file."""

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fz"})
    can_read_from_uri = True

    def read_from_uri(self, uri: ResourcePath, component: str | None = None, expected_size: int = -1) -> Any:
        data = uri.read()
        return {"header": parse_primary_header(data[:28800]), "size": len(data),
                "md5": hashlib.md5(data).hexdigest()}
