"""Inflating a compressed request, bounded: never more than the body limit, whatever it claims.

kombu senders compress a body when asked (``compression="bzip2"``, a normal kombu and
Commissaire option) and name the codec in the message's ``compression`` header, by the
content type kombu registers for it (:mod:`kombu.compression`). busapp inflates those
it knows from the standard library, through an incremental decompressor asked for at
most the room left under the limit each time: a 785-byte bzip2 "bomb" that would
inflate to 1 GiB stops after ``limit`` bytes and is refused with the limit in the error.

No I/O, no kombu: the names below are kombu's, checked against it by a test.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Any

from busapp.errors import ParseError

#: Bytes asked of a decompressor at a time (so a bomb costs at most the limit plus this).
CHUNK = 1 << 20


def _zlib() -> Any:
    return zlib.decompressobj(wbits=47)  # 32 + 15: a zlib or a gzip stream, told by its header


#: kombu's content type of each codec busapp inflates, and what makes its decompressor.
#: (kombu's ``application/x-gzip`` is zlib's format, as ``zlib.compress`` makes it.)
DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    "application/x-gzip": _zlib,
    "application/x-bz2": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor,
}

#: kombu's other names of those codecs (``Producer.publish(compression="bzip2")``).
ALIASES = {"gzip": "application/x-gzip", "zlib": "application/x-gzip",
           "bzip2": "application/x-bz2", "bzip": "application/x-bz2",
           "lzma": "application/x-lzma", "xz": "application/x-lzma"}


def codec_of(name: str) -> str | None:
    """kombu's content type for the compression ``name`` (a content type or an alias), or
    None if busapp cannot inflate it."""
    codec = ALIASES.get(name, name)
    return codec if codec in DECOMPRESSORS else None


def inflate(body: bytes, compression: str, limit: int) -> bytes:
    """``body`` decompressed with ``compression``, or ParseError past ``limit`` bytes.

    Raises:
        ParseError: an unknown codec, a corrupt stream, or more than ``limit`` bytes.
    """
    codec = codec_of(str(compression))
    if codec is None:
        known = ", ".join([*DECOMPRESSORS, *ALIASES])
        raise ParseError(f"compression {compression!r} is not accepted; use one of {known}, "
                         f"or send plain application/json", data={"compression": str(compression)})
    try:
        return _bounded(DECOMPRESSORS[codec], body, limit, codec)
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as exc:
        raise ParseError(f"compressed body ({codec}) is corrupt: {exc}",
                         data={"compression": codec}) from None


def _bounded(make: Callable[[], Any], data: bytes, limit: int, codec: str) -> bytes:
    """Inflate ``data`` with decompressors ``make()`` makes, one stream after another (as
    ``bzip2 -c a b`` writes them), stopping as soon as the output passes ``limit``."""
    decompressor = make()
    out: list[bytes] = []
    size, compressed = 0, len(data)
    while True:
        chunk = decompressor.decompress(data, min(CHUNK, limit - size + 1))
        size += len(chunk)
        if size > limit:
            raise ParseError(
                f"compressed body ({codec}, {compressed} bytes) inflates to more than the limit "
                f"of {limit} bytes (the service's max_body); it was not inflated further",
                data={"compression": codec, "limit": limit})
        out.append(chunk)
        data = getattr(decompressor, "unconsumed_tail", b"")  # zlib's; the others keep theirs
        if decompressor.eof:
            if not decompressor.unused_data:
                return b"".join(out)
            decompressor, data = make(), decompressor.unused_data
        elif not chunk and not data and getattr(decompressor, "needs_input", True):
            raise EOFError("the stream ends before its end marker")
