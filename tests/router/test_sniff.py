"""sniff(): real ClientHellos from Python's ssl, hand-built malformed ones, and random bytes."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinject.sniff import HTTP2_PREFACE, MAX_CLIENT_HELLO, MAX_SNIFF_BYTES, Sniffed, sniff

_LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
def _is_ip(name: str) -> bool:
    """Whether a TLS client may take ``name`` for an address (and send no SNI for it).

    OpenSSL reads forms ``ipaddress`` refuses, such as a leading zero ("0.0.0.00").
    """
    try:
        ipaddress.ip_address(name)
    except ValueError:
        try:
            socket.inet_aton(name)
        except OSError:
            return False
    return True


# Names that are not IP literals: TLS clients never send SNI for an address (RFC 6066 3).
_HOSTNAME = (
    st.lists(_LABEL, min_size=2, max_size=4).map(".".join).filter(lambda name: not _is_ip(name))
)
_ALPN = st.lists(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30),
    max_size=4,
)
_VERSION = st.sampled_from([ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])


def client_hello(
    server_hostname: str | None = None,
    alpn: list[str] | None = None,
    maximum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> bytes:
    """The first flight of a real Python ``ssl`` client (its ClientHello records)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum_version
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def records(handshake: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    """``handshake`` split into handshake records of the given fragment sizes (then the rest)."""
    out = bytearray()
    pos = 0
    for size in [*sizes, len(handshake)]:
        fragment = handshake[pos:pos + size]
        if not fragment:
            break
        out += b"\x16" + version + struct.pack(">H", len(fragment)) + fragment
        pos += len(fragment)
    return bytes(out)


def hello_body(
    extensions: bytes | None,
    *,
    session_id: bytes = b"\x07" * 32,
    cipher_suites: bytes = b"\x13\x01\xc0\x2f",
    compression: bytes = b"\x00",
) -> bytes:
    """A ClientHello body built field by field (``None`` omits the extensions block)."""
    body = b"\x03\x03" + b"\x5a" * 32
    body += bytes([len(session_id)]) + session_id
    body += struct.pack(">H", len(cipher_suites)) + cipher_suites
    body += bytes([len(compression)]) + compression
    if extensions is not None:
        body += struct.pack(">H", len(extensions)) + extensions
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    """A handshake message: type, 24-bit length, body."""
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def extension(kind: int, content: bytes) -> bytes:
    """One TLS extension."""
    return struct.pack(">HH", kind, len(content)) + content


def sni(*names: tuple[int, bytes]) -> bytes:
    """A server_name extension listing ``(name_type, name)`` entries."""
    entries = b"".join(bytes([t]) + struct.pack(">H", len(n)) + n for t, n in names)
    return extension(0, struct.pack(">H", len(entries)) + entries)


def alpn_ext(*protocols: bytes) -> bytes:
    """An ALPN extension offering ``protocols``."""
    names = b"".join(bytes([len(p)]) + p for p in protocols)
    return extension(16, struct.pack(">H", len(names)) + names)


def hello(extensions: bytes | None, **fields: bytes) -> bytes:
    """A hand-built ClientHello in one record."""
    return records(handshake(hello_body(extensions, **fields)), [])


@settings(max_examples=60, deadline=None)
@given(server_hostname=st.none() | _HOSTNAME, alpn=_ALPN, version=_VERSION)
def test_real_client_hello_at_every_cut_point(
    server_hostname: str | None, alpn: list[str], version: ssl.TLSVersion
) -> None:
    """Every proper prefix of a real ClientHello needs more bytes; the whole gives SNI and ALPN."""
    data = client_hello(server_hostname, alpn, version)
    for cut in range(len(data)):
        assert sniff(data[:cut]) is None, cut
    expected_name = server_hostname.lower() if server_hostname else None
    assert sniff(data) == Sniffed("tls", expected_name, tuple(alpn))


def test_ip_address_hostname_sends_no_sni() -> None:
    """A client connecting by IP address sends no SNI, so server_name is None."""
    assert sniff(client_hello("127.0.0.1", ["h2"])) == Sniffed("tls", None, ("h2",))


@settings(max_examples=60, deadline=None)
@given(
    server_hostname=st.none() | _HOSTNAME,
    alpn=_ALPN,
    sizes=st.lists(st.integers(1, 600), min_size=1, max_size=8),
)
def test_client_hello_fragmented_over_records(
    server_hostname: str | None, alpn: list[str], sizes: list[int]
) -> None:
    """A ClientHello split over several handshake records is reassembled and parsed the same."""
    whole = client_hello(server_hostname, alpn)
    message = whole[5:]  # Python's client sends its ClientHello in a single record
    data = records(message, sizes)
    assert all(sniff(data[:cut]) is None for cut in range(len(data)))
    assert sniff(data) == sniff(whole)
    verdict = sniff(data)
    assert verdict is not None
    assert verdict.kind == "tls"


def test_bytes_after_the_client_hello_do_not_change_the_verdict() -> None:
    """Records that follow a complete ClientHello (early data, say) are not looked at."""
    data = client_hello("a.example", ["h2"])
    assert sniff(data + b"\x17\x03\x03\x00\x05hello") == Sniffed("tls", "a.example", ("h2",))


def test_buffer_types_are_accepted() -> None:
    """bytes, bytearray and memoryview of the same data get the same verdict."""
    data = client_hello("b.example", ["grpc-exp", "h2"])
    assert sniff(bytearray(data)) == sniff(memoryview(data)) == sniff(data)


def test_hand_built_hello_without_extensions() -> None:
    """A TLS 1.2 ClientHello may end after the compression methods: TLS, no SNI, no ALPN."""
    assert sniff(hello(None)) == Sniffed("tls", None, ())


def test_hand_built_hello_with_sni_and_alpn() -> None:
    """A hand-built hello with other extensions around SNI and ALPN yields both, name lowered."""
    extensions = (
        extension(0x0A0A, b"")  # a GREASE extension, ignored
        + sni((0, b"API.Example.COM"))
        + extension(43, b"\x02\x03\x04")
        + alpn_ext(b"h2", b"http/1.1")
    )
    assert sniff(hello(extensions)) == Sniffed("tls", "api.example.com", ("h2", "http/1.1"))


def test_unknown_sni_name_types_are_skipped() -> None:
    """A server_name entry of another name type does not hide the host_name entry."""
    assert sniff(hello(sni((7, b"opaque"), (0, b"host.test")))) == Sniffed("tls", "host.test")


@pytest.mark.parametrize(
    ("description", "data"),
    [
        ("duplicate extension", hello(alpn_ext(b"h2") + alpn_ext(b"h2"))),
        ("two host names", hello(sni((0, b"a.test"), (0, b"b.test")))),
        ("non-ASCII host name", hello(sni((0, "bücher.test".encode())))),
        ("host name with a space", hello(sni((0, b"a b.test")))),
        ("empty host name", hello(sni((0, b"")))),
        ("empty server_name list", hello(extension(0, b"\x00\x00"))),
        ("server_name list longer than extension", hello(extension(0, b"\x00\x09\x00\x00\x01a"))),
        ("empty ALPN protocol name", hello(alpn_ext(b"h2", b""))),
        ("empty ALPN list", hello(extension(16, b"\x00\x00"))),
        ("extension longer than block", hello(struct.pack(">HH", 16, 40) + b"\x00\x02")),
        ("odd cipher suites length", hello(b"", cipher_suites=b"\x13\x01\x00")),
        ("no cipher suites", hello(b"", cipher_suites=b"")),
        ("no compression methods", hello(b"", compression=b"")),
        ("session id over 32 bytes", hello(b"", session_id=b"\x01" * 33)),
        ("bytes after the extensions", records(handshake(hello_body(b"") + b"\x00"), [])),
        ("truncated body", records(handshake(hello_body(b"")[:20]), [])),
        ("handshake is not a ClientHello", records(handshake(hello_body(b""), 2), [])),
        ("bytes after the ClientHello", records(handshake(hello_body(b"")) + b"\x01", [])),
        ("second record is not handshake", b"\x16\x03\x01\x00\x02\x01\x00\x17\x03\x03\x00\x01x"),
        ("record version not 3.x", b"\x16\x02\x01\x00\x10" + b"\x01" * 16),
        ("record minor version above TLS 1.3", b"\x16\x03\x09\x00\x10" + b"\x01" * 16),
        ("empty record", b"\x16\x03\x01\x00\x00"),
        ("record longer than 2^14", b"\x16\x03\x01\x40\x01\x01"),
        ("ClientHello over the cap", b"\x16\x03\x01\x40\x00\x01\x00\x40\x00"),
        ("HTTP/1.1 request", b"GET / HTTP/1.1\r\n"),
        ("SSLv2-style hello", b"\x80\x2e\x01\x00\x02"),
    ],
)
def test_malformed_or_foreign_starts_are_unknown(description: str, data: bytes) -> None:
    """Anything that breaks the ClientHello grammar, or is not TLS or HTTP/2, is "unknown"."""
    assert sniff(data) == Sniffed("unknown"), description


def test_oversized_hello_is_refused_from_its_header() -> None:
    """A ClientHello declaring more than the cap is refused before its body arrives."""
    declared = MAX_CLIENT_HELLO - 4 + 1
    assert sniff(b"\x16\x03\x01\x40\x00\x01" + declared.to_bytes(3, "big")) == Sniffed("unknown")
    at_cap = MAX_CLIENT_HELLO - 4
    assert sniff(b"\x16\x03\x01\x40\x00\x01" + at_cap.to_bytes(3, "big")) is None


def test_hello_fragmented_past_the_byte_cap_is_unknown() -> None:
    """A ClientHello whose records run past MAX_SNIFF_BYTES is "unknown", not waited for."""
    message = handshake(hello_body(extension(0xFFFF, b"\x00" * 8000)))
    data = records(message, [1] * 2000)  # 6 bytes of record per byte of handshake
    assert len(data) > MAX_SNIFF_BYTES
    assert sniff(data) == Sniffed("unknown")
    assert sniff(data[:MAX_SNIFF_BYTES]) == Sniffed("unknown")


def test_http2_preface() -> None:
    """Every proper prefix of the HTTP/2 preface needs more bytes; the full preface is "http2"."""
    for cut in range(len(HTTP2_PREFACE)):
        assert sniff(HTTP2_PREFACE[:cut]) is None
    assert sniff(HTTP2_PREFACE) == Sniffed("http2")
    assert sniff(HTTP2_PREFACE + b"\x00\x00\x00\x04\x00") == Sniffed("http2")
    assert sniff(b"PRI * HTTP/1.1") == Sniffed("unknown")


@settings(max_examples=300)
@given(
    data=st.binary(max_size=600)
    | st.binary(max_size=600).map(lambda b: b"\x16\x03\x01" + b)
    | st.binary(max_size=600).map(lambda b: b"\x16\x03\x03\x02\x00\x01\x00\x01\xfc" + b),
)
def test_random_bytes_never_raise_and_verdicts_are_stable(data: bytes) -> None:
    """For any bytes sniff never raises, and a verdict given for a prefix holds for the whole."""
    final = sniff(data)
    for cut in range(len(data)):
        partial = sniff(data[:cut])
        assert partial is None or partial == final


@settings(max_examples=200, deadline=None)
@given(
    position=st.integers(0, 10_000),
    value=st.integers(0, 255),
    base=st.sampled_from([("x.example", ["h2"]), (None, []), ("longer.name.example", ["a", "b"])]),
)
def test_corrupted_real_hello_never_raises(
    position: int, value: int, base: tuple[str | None, list[str]]
) -> None:
    """A real ClientHello with any one byte changed gets a verdict or None, never an exception."""
    data = bytearray(client_hello(*base))
    data[position % len(data)] = value
    final = sniff(bytes(data))
    assert final is None or final.kind in ("tls", "unknown")
    for cut in range(0, len(data), 7):
        partial = sniff(bytes(data[:cut]))
        assert partial is None or partial == final
