"""busapp.core.compression: kombu's codecs inflated, never past the body limit."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib

import pytest

from busapp.core import compression
from busapp.core.pipeline import decode
from busapp.errors import ParseError
from busapp.transport.base import Delivery

BODY = b'{"jsonrpc": "2.0", "id": 7, "method": "echo", "params": ["' + b"a" * 50_000 + b'"]}'


@pytest.mark.parametrize("name", ["zlib", "gzip", "bzip2", "bzip", "lzma", "xz"])
def test_every_kombu_name_of_a_stdlib_codec_is_inflated(name):
    """A body kombu compressed by any name of zlib, bzip2 or lzma inflates back, whether the
    header carries kombu's content type (what its Producer sends) or the alias."""
    from kombu import compression as kombu_compression

    packed, content_type = kombu_compression.compress(BODY, name)
    assert compression.inflate(packed, content_type, 1 << 20) == BODY
    assert compression.inflate(packed, name, 1 << 20) == BODY


def test_names_are_kombus():
    """Each content type and alias here is one kombu registers, for the same codec."""
    from kombu import compression as kombu_compression

    for alias, content_type in compression.ALIASES.items():
        assert kombu_compression._aliases[alias] == content_type
    assert set(compression.DECOMPRESSORS) <= set(kombu_compression.encoders())


def test_a_gzip_file_stream_is_inflated_too():
    """A gzip stream (header and trailer, as gzip.compress makes) passes as application/x-gzip."""
    assert compression.inflate(gzip.compress(BODY), "application/x-gzip", 1 << 20) == BODY


def test_concatenated_streams_are_inflated_whole():
    """Two bzip2 streams back to back (bzip2 -c a b) inflate to both."""
    assert compression.inflate(bz2.compress(b"ab") + bz2.compress(b"cd"), "bzip2", 10) == b"abcd"


@pytest.mark.parametrize(("codec", "bomb"), [
    ("application/x-bz2", lambda: bz2.compress(bytes(64 << 20), 9)),
    ("application/x-gzip", lambda: zlib.compress(bytes(64 << 20), 9)),
    ("application/x-lzma", lambda: lzma.compress(bytes(64 << 20))),
])
def test_a_bomb_stops_at_the_limit(codec, bomb):
    """64 MiB of zeros in a few KB: refused naming the limit and max_body, after inflating no
    more than the limit (plus one chunk)."""
    packed = bomb()
    with pytest.raises(ParseError, match="limit of 65536 bytes .the service's max_body") as info:
        compression.inflate(packed, codec, 65536)
    assert info.value.code == -32700
    assert info.value.data == {"compression": codec, "limit": 65536}


def test_exactly_the_limit_is_accepted():
    """A body that inflates to exactly the limit is accepted (the limit is inclusive)."""
    assert compression.inflate(zlib.compress(b"x" * 1000), "zlib", 1000) == b"x" * 1000


@pytest.mark.parametrize("packed", [b"junk", bz2.compress(BODY)[:-20]])
def test_corrupt_or_cut_streams_are_parse_errors(packed):
    """Garbage, or a stream cut before its end, is -32700 saying it is corrupt."""
    with pytest.raises(ParseError, match="corrupt"):
        compression.inflate(packed, "bzip2", 1 << 20)


def test_an_unknown_codec_is_refused_naming_the_known_ones():
    """A codec busapp does not inflate (brotli, zstd) is -32700 listing the ones it does."""
    with pytest.raises(ParseError, match="'application/x-brotli' is not accepted; use one of "
                                         "application/x-gzip"):
        compression.inflate(b"...", "application/x-brotli", 1 << 20)


def _delivery(body: bytes, compression_header: str | None) -> Delivery:
    return Delivery(body=body, content_type="application/json", headers={},
                    routing_key="s.echo", compression=compression_header)


def test_decode_inflates_a_compressed_request():
    """The pipeline's decode stage reads a compressed request's JSON (and so its id)."""
    assert decode(_delivery(bz2.compress(BODY), "application/x-bz2"), 1 << 20)["id"] == 7


def test_decode_refuses_a_body_that_inflates_past_max_body():
    """max_body bounds the inflated body, not the compressed one."""
    with pytest.raises(ParseError, match="limit of 1000 bytes"):
        decode(_delivery(zlib.compress(BODY), "zlib"), 1000)
