"""Tests of fastinject.metadata: header <-> metadata, grpc-timeout and grpc-message."""

from __future__ import annotations

import base64
import math
import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastinject import metadata as md
from fastinject.errors import InvalidMetadataError, InvalidTimeoutError, RpcError
from fastinject.status import StatusCode

KEY_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz_-."
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))

keys = st.text(KEY_ALPHABET, min_size=1, max_size=20).filter(
    lambda k: k.encode() not in md.RESERVED_HEADERS
)
text_items = st.tuples(keys.filter(lambda k: not k.endswith("-bin")), st.text(PRINTABLE))
binary_items = st.tuples(keys.map(lambda k: k + "-bin"), st.binary(max_size=64))
metadata_lists = st.lists(st.one_of(text_items, binary_items), max_size=10)


# -- decode_metadata --------------------------------------------------------------------------


def test_decode_drops_reserved_and_pseudo_headers_and_keeps_order() -> None:
    """Pseudo-headers and protocol headers are dropped; the rest keep their order."""
    headers = [
        (b":method", b"POST"),
        (b":path", b"/pkg.Svc/M"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"b", b"2"),
        (b"grpc-timeout", b"1S"),
        (b"a", b"1"),
        (b"grpc-accept-encoding", b"gzip"),
        (b"b", b"3"),
    ]
    assert md.decode_metadata(headers) == (("b", "2"), ("a", "1"), ("b", "3"))


@pytest.mark.parametrize("name", sorted(md.RESERVED_HEADERS))
def test_decode_never_surfaces_a_reserved_header(name: bytes) -> None:
    """Every reserved header is dropped from the application's metadata."""
    assert md.decode_metadata([(name, b"x"), (b"kept", b"y")]) == (("kept", "y"),)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"user-agent", "grpc-python/1.0"),
        (b"host", "example.com"),
        (b"grpc-foo", "bar"),
        (b"grpc-previous-rpc-attempts", "1"),
    ],
)
def test_decode_passes_headers_grpcio_passes(name: bytes, value: str) -> None:
    """user-agent, host and unknown grpc-* headers reach the application, as in grpcio."""
    assert md.decode_metadata([(name, value.encode())]) == ((name.decode(), value),)


def test_decode_passes_status_details_as_bytes() -> None:
    """grpc-status-details-bin reaches the application, base64-decoded."""
    value = base64.b64encode(b"\x08\x03").rstrip(b"=")
    assert md.decode_metadata([(b"grpc-status-details-bin", value)]) == (
        ("grpc-status-details-bin", b"\x08\x03"),
    )


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x01", b"\x00\x01\x02", bytes(range(256))])
def test_decode_binary_accepts_padded_and_unpadded_base64(payload: bytes) -> None:
    """A -bin value decodes to the same bytes whether or not its base64 is padded."""
    padded = base64.b64encode(payload)
    unpadded = padded.rstrip(b"=")
    assert md.decode_metadata([(b"x-bin", padded)]) == (("x-bin", payload),)
    assert md.decode_metadata([(b"x-bin", unpadded)]) == (("x-bin", payload),)


def test_decoded_entries_have_key_and_value_like_grpcs() -> None:
    """Every entry is a (key, value) tuple with .key/.value, text and binary alike (as grpc)."""
    entries = md.decode_metadata([(b"tenant", b"blue"), (b"blob-bin", b"AAE,/w")])
    assert [(entry.key, entry.value) for entry in entries] == [
        ("tenant", "blue"), ("blob-bin", b"\x00\x01"), ("blob-bin", b"\xff"),
    ]
    assert entries[0] == ("tenant", "blue")
    key, value = entries[0]
    assert (key, value) == ("tenant", "blue")


def test_decode_binary_splits_comma_joined_values() -> None:
    """A -bin header holding comma-joined values yields one entry per value."""
    value = b"AAEC,AQ==,Ag"
    assert md.decode_metadata([(b"x-bin", value)]) == (
        ("x-bin", b"\x00\x01\x02"),
        ("x-bin", b"\x01"),
        ("x-bin", b"\x02"),
    )


@pytest.mark.parametrize("value", [b"A", b"AAE-", b"AA AA", b"====", b"AA==AA", b"\xff\xfe"])
def test_decode_rejects_invalid_base64_naming_the_key(value: bytes) -> None:
    """A -bin value that is not base64 raises InvalidMetadataError naming the key."""
    with pytest.raises(InvalidMetadataError, match="trace-ctx-bin"):
        md.decode_metadata([(b"trace-ctx-bin", value)])


@pytest.mark.parametrize("name", [b"Upper", b"sp ace", b"", b"semi;colon", b"caf\xc3\xa9", b"a/b"])
def test_decode_rejects_illegal_keys(name: bytes) -> None:
    """A header name outside 0-9 a-z _ - . raises InvalidMetadataError naming it."""
    with pytest.raises(InvalidMetadataError) as info:
        md.decode_metadata([(name, b"v")])
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("value", [b"a\x00b", b"a\x01b", b"line\nbreak", b"cr\r", b"del\x7f"])
def test_decode_rejects_control_characters(value: bytes) -> None:
    """A text value with a control character (other than tab) raises, naming the key."""
    with pytest.raises(InvalidMetadataError, match="my-key"):
        md.decode_metadata([(b"my-key", value)])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b"a\tb", "a\tb"),
        ("caf\u00e9 \u263a".encode(), "caf\u00e9 \u263a"),
        (b"latin \xe9", "latin \u00e9"),
    ],
)
def test_decode_accepts_valid_http_field_values(value: bytes, text: str) -> None:
    """Tab and non-ASCII bytes (valid HTTP field values) are accepted, UTF-8 then Latin-1."""
    assert md.decode_metadata([(b"k", value)]) == (("k", text),)


def test_decode_returns_immutable_metadata() -> None:
    """decode_metadata returns a tuple of (str, str | bytes) tuples, like grpc.aio."""
    result = md.decode_metadata([(b"a", b"1"), (b"b-bin", b"AA")])
    assert isinstance(result, tuple)
    assert all(isinstance(item, tuple) and isinstance(item[0], str) for item in result)


def test_decode_key_cache_is_bounded() -> None:
    """A peer sending endless distinct header names cannot grow the key cache without bound."""
    for index in range(md._KEY_CACHE_LIMIT + 500):
        md.decode_metadata([(b"k%d" % index, b"v")])
    assert len(md._decoded_keys) <= md._KEY_CACHE_LIMIT


# -- encode_metadata --------------------------------------------------------------------------


def test_encode_text_and_binary_values() -> None:
    """Text values go out as ASCII, -bin values as unpadded base64."""
    assert md.encode_metadata(
        [("a", "1"), ("b", b"raw"), ("x-bin", b"\x00\x01\x02\x03"), ("s-bin", "\u00e9")]
    ) == [
        (b"a", b"1"),
        (b"b", b"raw"),
        (b"x-bin", b"AAECAw"),
        (b"s-bin", base64.b64encode("\u00e9".encode()).rstrip(b"=")),
    ]


@pytest.mark.parametrize("metadata", [None, (), []])
def test_encode_nothing(metadata: md.MetadataLike | None) -> None:
    """No metadata encodes to no headers."""
    assert md.encode_metadata(metadata) == []


def test_encode_accepts_buffer_values() -> None:
    """Values given as bytearray or memoryview are accepted like bytes."""
    items = [("a", bytearray(b"x")), ("b-bin", memoryview(b"\x01"))]
    assert md.encode_metadata(items) == [  # type: ignore[arg-type]
        (b"a", b"x"),
        (b"b-bin", b"AQ"),
    ]


@pytest.mark.parametrize("key", ["grpc-status-details-bin", "user-agent", "grpc-foo", "host"])
def test_encode_allows_what_grpcio_allows(key: str) -> None:
    """Applications may send grpc-status-details-bin, user-agent and other grpc-* keys."""
    value: str | bytes = b"\x08\x05" if key.endswith("-bin") else "v"
    assert md.encode_metadata([(key, value)])[0][0] == key.encode()


@pytest.mark.parametrize("name", sorted(md.RESERVED_HEADERS))
def test_encode_rejects_reserved_keys(name: bytes) -> None:
    """Sending a reserved header as metadata raises InvalidMetadataError naming it."""
    key = name.decode()
    with pytest.raises(InvalidMetadataError, match=re.escape(repr(key))):
        md.encode_metadata([(key, b"AA" if key.endswith("-bin") else "v")])


@pytest.mark.parametrize("key", ["Upper", "", "sp ace", "caf\u00e9", ":custom", "a/b"])
def test_encode_rejects_illegal_keys(key: str) -> None:
    """Keys outside lowercase 0-9 a-z _ - . raise InvalidMetadataError naming them."""
    with pytest.raises(InvalidMetadataError, match=re.escape(repr(key))):
        md.encode_metadata([(key, "v")])


@pytest.mark.parametrize("value", ["caf\u00e9", "a\tb", "new\nline", b"\x00", b"\xff", "\x7f"])
def test_encode_rejects_non_printable_text_values(value: str | bytes) -> None:
    """A text value that is not printable ASCII raises InvalidMetadataError naming the key."""
    with pytest.raises(InvalidMetadataError, match="my-key"):
        md.encode_metadata([("my-key", value)])


@pytest.mark.parametrize(
    "item", [("k", 1), ("k", None), ("k-bin", 1.5), ("k",), "kvx", (1, "v"), ("a", "b", "c")]
)
def test_encode_rejects_malformed_items(item: object) -> None:
    """Items that are not (str key, str/bytes value) pairs raise InvalidMetadataError."""
    with pytest.raises(InvalidMetadataError):
        md.encode_metadata([item])  # type: ignore[list-item]


def test_invalid_metadata_error_is_a_value_error() -> None:
    """Callers catching ValueError (as with grpcio) catch metadata errors."""
    with pytest.raises(ValueError, match="Upper"):
        md.encode_metadata([("Upper", "v")])


@given(metadata_lists)
def test_encode_then_decode_round_trips(metadata: list[tuple[str, str | bytes]]) -> None:
    """Whatever the application may send decodes back to the same metadata."""
    assert md.decode_metadata(md.encode_metadata(metadata)) == tuple(metadata)


@given(metadata_lists)
def test_decoded_metadata_can_be_echoed(metadata: list[tuple[str, str | bytes]]) -> None:
    """Metadata a handler receives can be sent back unchanged (the spec's echo rule)."""
    received = md.decode_metadata(md.encode_metadata(metadata))
    assert md.encode_metadata(received) == md.encode_metadata(metadata)


# -- parse_timeout ----------------------------------------------------------------------------

UNIT_SECONDS = {
    "H": Fraction(3600),
    "M": Fraction(60),
    "S": Fraction(1),
    "m": Fraction(1, 1000),
    "u": Fraction(1, 10**6),
    "n": Fraction(1, 10**9),
}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"10S", 10.0),
        (b"250m", 0.25),
        (b"5u", 5e-6),
        (b"7n", 7e-9),
    ],
)
def test_parse_timeout_units(value: bytes, seconds: float) -> None:
    """Each grpc-timeout unit converts to seconds."""
    assert md.parse_timeout(value) == seconds


@given(st.integers(0, 99_999_999), st.sampled_from(sorted(UNIT_SECONDS)))
def test_parse_timeout_is_exact_to_a_float(amount: int, unit: str) -> None:
    """Any 1-8 digit value in any unit is the nearest float to the exact number of seconds."""
    parsed = md.parse_timeout(f"{amount}{unit}".encode())
    exact = amount * UNIT_SECONDS[unit]
    assert parsed == float(exact)


def test_parse_timeout_accepts_leading_zeros_and_zero() -> None:
    """Leading zeros are allowed; a zero timeout means the deadline has already passed."""
    assert md.parse_timeout(b"00000001S") == 1.0
    assert md.parse_timeout(b"0m") == 0.0


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"S",
        b"1",
        b"123456789S",
        b"1x",
        b"1s",
        b"-1S",
        b"+1S",
        b"1.5S",
        b" 1S",
        b"1S ",
        b"1 S",
        "\uff11S".encode(),
        b"\xd9\xa1S",
    ],
)
def test_parse_timeout_rejects_malformed_values(value: bytes) -> None:
    """A malformed grpc-timeout raises InvalidTimeoutError (INTERNAL) quoting the value."""
    with pytest.raises(InvalidTimeoutError) as info:
        md.parse_timeout(value)
    assert isinstance(info.value, RpcError)
    assert info.value.status is StatusCode.INTERNAL
    assert repr(value) in str(info.value)
    assert info.value.value == value


@given(st.binary(max_size=12))
def test_parse_timeout_accepts_exactly_the_spec_grammar(value: bytes) -> None:
    """parse_timeout accepts exactly 1-8 ASCII digits + unit and raises nothing but its error."""
    if re.fullmatch(rb"[0-9]{1,8}[HMSmun]", value):
        assert math.isfinite(md.parse_timeout(value))
    else:
        with pytest.raises(InvalidTimeoutError):
            md.parse_timeout(value)


# -- grpc-message ----------------------------------------------------------------------------


def test_encode_grpc_message_leaves_plain_ascii_alone() -> None:
    """Printable ASCII other than % is sent as is."""
    text = "Not found: user 42 (see https://example.com/x?y=1)"
    assert md.encode_grpc_message(text) == text.encode()


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("100%", b"100%25"),
        ("caf\u00e9", b"caf%C3%A9"),
        ("a\nb\tc", b"a%0Ab%09c"),
        ("\x7f", b"%7F"),
        ("\U0001f608", b"%F0%9F%98%88"),
    ],
)
def test_encode_grpc_message_percent_encodes(text: str, encoded: bytes) -> None:
    """%, control characters and non-ASCII are percent-encoded as UTF-8 with uppercase hex."""
    assert md.encode_grpc_message(text) == encoded


def test_grpc_message_interop_special_status_message() -> None:
    """The interop suite's special status message survives encoding and decoding."""
    text = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
    encoded = md.encode_grpc_message(text)
    assert all(0x20 <= byte <= 0x7E for byte in encoded)
    assert md.decode_grpc_message(encoded) == text


@given(st.text())
def test_grpc_message_round_trips(text: str) -> None:
    """Any text (without lone surrogates) decodes back to itself; the wire form is printable."""
    encoded = md.encode_grpc_message(text)
    assert all(0x20 <= byte <= 0x7E for byte in encoded)
    if not any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        assert md.decode_grpc_message(encoded) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b"%zz", "%zz"),
        (b"50%", "50%"),
        (b"%4", "%4"),
        (b"%c3%a9", "\u00e9"),
        (b"%C3", "\ufffd"),
        (b"ok%20then", "ok then"),
    ],
)
def test_decode_grpc_message_is_lenient(value: bytes, text: str) -> None:
    """Broken escapes are kept as is and invalid UTF-8 is replaced, never an error."""
    assert md.decode_grpc_message(value) == text
