"""Tests of fastinject.compression: algorithms, bounded decompression, negotiation."""

from __future__ import annotations

import gzip
import random
import sys
import tracemalloc
import zlib

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastinject import compression as c
from fastinject.errors import DecompressionError, MessageTooLargeError, ProtocolError
from fastinject.status import StatusCode

ENCODINGS = ["deflate", "gzip"]


# -- the enum and its coercion ---------------------------------------------------------------


def test_compression_values_match_grpcio() -> None:
    """Our Compression members have the names and values of grpc.Compression."""
    assert {m.name: m.value for m in c.Compression} == {m.name: m.value for m in grpc.Compression}


@pytest.mark.parametrize("member", list(grpc.Compression))
def test_coerce_accepts_grpc_compression(member: grpc.Compression) -> None:
    """A grpc.Compression member coerces to our member of the same name."""
    assert c.coerce_compression(member) is c.Compression[member.name]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, c.Compression.NoCompression),
        (0, c.Compression.NoCompression),
        (1, c.Compression.Deflate),
        (2, c.Compression.Gzip),
        (c.Compression.Gzip, c.Compression.Gzip),
        ("gzip", c.Compression.Gzip),
        ("Deflate", c.Compression.Deflate),
        ("identity", c.Compression.NoCompression),
    ],
)
def test_coerce_accepts_ints_names_and_none(value: object, expected: c.Compression) -> None:
    """Ints, encoding names and None (no compression) are accepted."""
    assert c.coerce_compression(value) is expected


@pytest.mark.parametrize("value", [3, -1, True, 1.0, "br", "", object(), b"gzip"])
def test_coerce_rejects_anything_else(value: object) -> None:
    """Values that name no algorithm raise ValueError."""
    with pytest.raises(ValueError, match="not a compression algorithm"):
        c.coerce_compression(value)


# -- names --------------------------------------------------------------------------------------


def test_advertised_encodings() -> None:
    """We advertise exactly the encodings we can decompress, in grpc-accept-encoding form."""
    assert c.SUPPORTED_ENCODINGS == ("identity", "deflate", "gzip")
    assert c.ACCEPT_ENCODING_HEADER == b"identity,deflate,gzip"
    assert set(c.ENCODING_NAMES.values()) == set(c.SUPPORTED_ENCODINGS)
    assert all(c.is_supported(name) for name in c.SUPPORTED_ENCODINGS)


@pytest.mark.parametrize("name", ["snappy", "br", "GZIP", "", "zstd"])
def test_unknown_encodings_are_not_supported(name: str) -> None:
    """Encodings we cannot decompress are reported unsupported (names are case-sensitive)."""
    assert not c.is_supported(name)


# -- wire formats ------------------------------------------------------------------------------


def test_deflate_is_the_zlib_container() -> None:
    """The deflate output is a zlib stream (RFC 1950), as grpc core sends and expects."""
    data = b"hello " * 50
    compressed = c.compress("deflate", data)
    assert compressed[0] & 0x0F == 8  # CM = deflate in the zlib header
    assert int.from_bytes(compressed[:2], "big") % 31 == 0  # zlib header checksum
    assert zlib.decompress(compressed) == data


def test_gzip_is_the_gzip_container() -> None:
    """The gzip output is a gzip member (RFC 1952) any gzip reader accepts."""
    data = b"hello " * 50
    compressed = c.compress("gzip", data)
    assert compressed[:2] == b"\x1f\x8b"
    assert gzip.decompress(compressed) == data


def test_identity_compress_is_a_no_op() -> None:
    """The identity "compression" returns the data unchanged."""
    assert c.compress("identity", b"abc") == b"abc"


def test_compress_rejects_unknown_encodings() -> None:
    """Compressing with an unknown encoding raises ValueError naming it."""
    with pytest.raises(ValueError, match="snappy"):
        c.compress("snappy", b"x")


@pytest.mark.parametrize("encoding", ENCODINGS)
@given(data=st.binary(max_size=4096))
def test_round_trip(encoding: str, data: bytes) -> None:
    """decompress(compress(x)) == x for every encoding."""
    assert c.decompress(encoding, c.compress(encoding, data), len(data)) == data


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decompress_reads_other_implementations(encoding: str) -> None:
    """Streams made by other zlib users (other levels, gzip with a file name) are read."""
    data = b"payload " * 100
    if encoding == "gzip":
        made = gzip.compress(data, compresslevel=1, mtime=12345)
    else:
        made = zlib.compress(data, 9)
    assert c.decompress(encoding, made, len(data)) == data


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decompress_accepts_buffers(encoding: str) -> None:
    """Payloads given as bytearray or memoryview (as the deframer may give) are accepted."""
    compressed = c.compress(encoding, b"abc")
    assert c.decompress(encoding, bytearray(compressed), 10) == b"abc"
    assert c.decompress(encoding, memoryview(compressed), 10) == b"abc"


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [*ENCODINGS, "identity"])
def test_message_at_the_limit_is_accepted(encoding: str) -> None:
    """A message exactly max_length long after decompression is accepted."""
    data = b"x" * 1000
    assert c.decompress(encoding, c.compress(encoding, data), 1000) == data


@pytest.mark.parametrize("encoding", [*ENCODINGS, "identity"])
def test_message_over_the_limit_is_rejected(encoding: str) -> None:
    """One byte over max_length raises MessageTooLargeError (RESOURCE_EXHAUSTED)."""
    data = b"x" * 1001
    with pytest.raises(MessageTooLargeError) as info:
        c.decompress(encoding, c.compress(encoding, data), 1000)
    assert info.value.limit == 1000
    assert 1000 < info.value.length <= 1001
    assert info.value.status is StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decompression_bomb_is_stopped_early(encoding: str) -> None:
    """A tiny payload inflating to 64 MiB is rejected without inflating it all."""
    limit = 1 << 20
    bomb = c.compress(encoding, bytes(64 << 20))
    assert len(bomb) < limit // 4
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLargeError):
            c.decompress(encoding, bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * limit


def test_unlimited_length_works() -> None:
    """A limit as large as sys.maxsize (grpc's "unlimited") decompresses normally."""
    data = b"y" * 5000
    for encoding in ENCODINGS:
        assert c.decompress(encoding, c.compress(encoding, data), sys.maxsize) == data


# -- corrupt input -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_corrupt_data_raises_decompression_error(encoding: str) -> None:
    """Bytes that are not a stream of the encoding raise DecompressionError (INTERNAL)."""
    with pytest.raises(DecompressionError, match=f"zlib error: not a {encoding} stream") as info:
        c.decompress(encoding, b"this is not compressed", 100)
    assert isinstance(info.value, ProtocolError)
    assert info.value.status is StatusCode.INTERNAL


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_truncated_data_raises_decompression_error(encoding: str) -> None:
    """A stream cut short raises DecompressionError saying it is truncated."""
    compressed = c.compress(encoding, b"some data " * 20)
    with pytest.raises(DecompressionError, match="data error: truncated"):
        c.decompress(encoding, compressed[:-6], 1000)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_compressed_message_is_an_empty_message(encoding: str) -> None:
    """A compressed message with no bytes at all is an empty message, as grpc core reads it."""
    assert c.decompress(encoding, b"", 100) == b""


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("trailer", [b"junk", b"\0\0\0\0", b"\x1f"])
def test_bytes_after_the_stream_are_an_error(encoding: str, trailer: bytes) -> None:
    """Anything after the end of the stream is refused, as grpc core refuses it."""
    with pytest.raises(DecompressionError, match="not all input consumed") as info:
        c.decompress(encoding, c.compress(encoding, b"abc") + trailer, 100)
    assert f"{len(trailer)} bytes after the end" in str(info.value)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_second_member_is_refused(encoding: str) -> None:
    """Concatenated gzip members (or zlib streams) are refused: grpc core inflates only one."""
    payload = c.compress(encoding, b"abc") + c.compress(encoding, b"def")
    with pytest.raises(DecompressionError, match="not all input consumed"):
        c.decompress(encoding, payload, 100)


# -- decompression in slices -----------------------------------------------------------------


def _steps(inflater: c.Inflater) -> list[int]:
    """Run an inflater to the end; the work of each step."""
    work = []
    while not inflater.done:
        work.append(inflater.step())
    return work


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_bomb_is_inflated_in_bounded_slices(encoding: str) -> None:
    """4 KiB inflating to 4 MiB takes steps of at most IN_SLICE in and OUT_SLICE out."""
    data = bytes(4 << 20)
    inflater = c.Inflater(encoding, c.compress(encoding, data), len(data))
    work = _steps(inflater)
    assert inflater.result() == data
    assert len(work) >= len(data) // c.OUT_SLICE
    assert max(work) <= c.IN_SLICE + c.OUT_SLICE


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_large_input_is_fed_in_slices(encoding: str) -> None:
    """Incompressible input is fed IN_SLICE bytes per step."""
    data = random.Random(7).randbytes(1 << 20)
    compressed = c.compress(encoding, data)
    inflater = c.Inflater(encoding, compressed, len(data))
    work = _steps(inflater)
    assert inflater.result() == data
    assert sum(work) == len(compressed) + len(data)
    assert max(work) <= c.IN_SLICE + c.OUT_SLICE


def test_many_gzip_members_are_refused_after_the_first() -> None:
    """4 MiB of tiny gzip members: one step inflates the first, then the rest is refused."""
    member = c.compress("gzip", b"x")
    inflater = c.Inflater("gzip", member * ((4 << 20) // len(member)), 4 << 20)
    with pytest.raises(DecompressionError, match="not all input consumed"):
        inflater.step()


@pytest.mark.parametrize("encoding", ENCODINGS)
@given(size=st.integers(c.OUT_SLICE - 64, c.OUT_SLICE + 64) | st.integers(0, 3 * c.OUT_SLICE),
       seed=st.integers(0, 3))
def test_slices_end_anywhere(encoding: str, size: int, seed: int) -> None:
    """Messages whose size falls on or around a slice boundary come out whole."""
    data = random.Random(seed).choice([bytes(size), b"ab" * (size // 2) + b"a" * (size % 2)])
    assert c.decompress(encoding, c.compress(encoding, data), size) == data
    with pytest.raises(MessageTooLargeError):
        c.decompress(encoding, c.compress(encoding, data + b"!"), size)


def test_wrong_container_is_an_error() -> None:
    """A gzip stream labelled deflate (and vice versa) is rejected, not guessed."""
    with pytest.raises(DecompressionError):
        c.decompress("deflate", c.compress("gzip", b"abc"), 100)
    with pytest.raises(DecompressionError):
        c.decompress("gzip", c.compress("deflate", b"abc"), 100)


def test_decompress_rejects_unknown_encodings() -> None:
    """Decompressing with an unknown encoding raises DecompressionError naming it."""
    with pytest.raises(DecompressionError, match="snappy"):
        c.decompress("snappy", b"x", 100)


# -- negotiation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "requested", "expected"),
    [
        (b"identity,deflate,gzip", c.Compression.Gzip, "gzip"),
        (b"identity, deflate, gzip", c.Compression.Deflate, "deflate"),  # grpc core's format
        (b"GZIP", c.Compression.Gzip, "gzip"),
        (b" gzip ", c.Compression.Gzip, "gzip"),
        (b"identity", c.Compression.Gzip, None),
        (b"deflate", c.Compression.Gzip, None),
        (b"gzip2", c.Compression.Gzip, None),
        (b"", c.Compression.Gzip, None),
        (None, c.Compression.Gzip, None),
        (b"identity,deflate,gzip", c.Compression.NoCompression, None),
    ],
)
def test_choose_response_encoding(
    accept: bytes | None, requested: c.Compression, expected: str | None
) -> None:
    """Responses are compressed only with an algorithm the client listed as accepted."""
    assert c.choose_response_encoding(accept, requested) == expected


def test_choose_response_encoding_takes_grpc_compression() -> None:
    """A grpc.Compression member works as the requested algorithm."""
    accept = b"identity,gzip"
    assert c.choose_response_encoding(accept, grpc.Compression.Gzip) == "gzip"
