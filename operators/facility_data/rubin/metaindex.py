"""``_metadata_index.json``: the header cards of an exposure's FITS files in astro_metadata_translator's index format.

The format is the one ``astro-metadata-translator``'s ``index_files(..., content="metadata")`` writes (the tool this
replaces builds it that way): ``__CONTENT__: metadata``, ``__COMMON__`` with the cards every file shares, then one
entry per file with its own cards; ``astro_metadata_translator.indexing.process_index_data`` reads it back. Remote
sites use it to ingest without opening every file.

A file's cards are its primary header merged with its first extension's header (the extension wins, as in
astro_metadata_translator with ``hdrnum=1``; a tile-compressed extension gives its image header), overlaid with its
JSON sidecar where one exists. :class:`HeaderCollector` takes the header blocks from the bytes as they stream into the
zip and skips the data, so no file is read twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

BLOCK = 2880  # FITS block size; a header is whole blocks of 80-byte cards ending with END
FITS_SUFFIXES = (".fits", ".fz")
_MAX_HEADER = 4 << 20  # header bytes kept per HDU: past this the stream is not judged to be FITS


def _has_end(block) -> bool:
    return any(block[i:i + 8] == b"END     " for i in range(0, BLOCK, 80))


def _data_bytes(header) -> int:
    """Bytes of the HDU's data, padded to whole blocks (FITS standard 4.4.1: |BITPIX|/8 x GCOUNT x (PCOUNT + prod
    NAXISn), random groups without NAXIS1)."""
    naxis = int(header.get("NAXIS", 0))
    first = 2 if header.get("GROUPS") and header.get("NAXIS1") == 0 else 1
    n = 0
    if naxis:
        n = 1
        for i in range(first, naxis + 1):
            n *= int(header[f"NAXIS{i}"])
    size = abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + n)
    return -(-size // BLOCK) * BLOCK


def _cards(header) -> dict:
    """A header as the plain dict astro_metadata_translator's index holds (a repeated keyword keeps its last value;
    a card without a value is null)."""
    from astropy.io.fits.card import Undefined

    return {k: None if isinstance(v, type(Undefined)) else v for k, v in header.items()}


class HeaderCollector:
    """Fed a FITS file's bytes in order, keeps its primary and first extension headers (a few KiB) and skips the
    data. ``cards()`` then gives the merged cards, or None if the stream held no readable FITS header."""

    def __init__(self, name: str):
        self.name = name
        self.headers: list = []
        self.problem: str | None = None
        self._buf = bytearray()
        self._skip = 0
        self._done = False

    def feed(self, chunk) -> None:
        if self._done:
            return
        view = memoryview(chunk).cast("B")
        while view and not self._done:
            if self._skip:
                n = min(self._skip, len(view))
                view, self._skip = view[n:], self._skip - n
                continue
            need = BLOCK - len(self._buf) % BLOCK
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) % BLOCK:
                continue
            if len(self._buf) == BLOCK and self._buf[:8] != (b"XTENSION" if self.headers else b"SIMPLE  "):
                self._stop(None if self.headers else "does not start with SIMPLE")  # no extension: not an error
            elif _has_end(self._buf[-BLOCK:]):
                self._header_complete()
            elif len(self._buf) >= _MAX_HEADER:
                self._stop(f"no END card in the first {_MAX_HEADER} bytes")

    def _stop(self, problem: str | None) -> None:
        self.problem, self._done = problem, True
        self._buf = bytearray()

    def _header_complete(self) -> None:
        from astropy.io import fits

        try:
            header = fits.Header.fromstring(bytes(self._buf).decode("ascii"))
            skip = _data_bytes(header)
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            self._stop(f"unreadable header {len(self.headers)}: {exc}")
            return
        self._buf = bytearray()
        self.headers.append(header)
        if len(self.headers) == 2:
            self._done = True
        self._skip = skip

    def cards(self) -> dict | None:
        if not self.headers:  # an unreadable extension leaves the primary's cards, as in astro_metadata_translator
            log.warning("%s: no FITS header for the metadata index (%s)", self.name, self.problem or "truncated")
            return None
        primary, *ext = self.headers
        out = _cards(primary)
        if ext:
            out.update(_cards(_image_header(ext[0])))
        return out


def _image_header(header):
    """A tile-compressed image's header as astropy (and so astro_metadata_translator) presents it."""
    if not header.get("ZIMAGE"):
        return header
    from astropy.io.fits.hdu.compressed import _bintable_header_to_image_header

    return _bintable_header_to_image_header(header)


def _sidecar(data: bytes | None) -> dict:
    try:
        content = json.loads(data) if data is not None else {}
    except ValueError:
        return {}
    return content if isinstance(content, dict) else {}


def metadata_index(headers: Mapping[str, dict | None], sidecars: Mapping[str, bytes]) -> bytes:
    """The index of the FITS members ``headers`` (member name -> cards, None when unreadable), each overlaid with
    its sidecar ``<stem>.json`` from ``sidecars`` (member name -> bytes) where present."""
    from astro_metadata_translator.indexing import calculate_index

    per_file = {}
    for name in sorted(headers):
        cards = dict(headers[name] or {})
        cards.update(_sidecar(sidecars.get(name.removesuffix(".fz").removesuffix(".fits") + ".json")))
        if cards:
            per_file[name] = cards
    index = calculate_index(per_file, "metadata") if per_file else {"__CONTENT__": "metadata", "__COMMON__": {}}
    return json.dumps(index, indent=1, sort_keys=True, default=str).encode()
