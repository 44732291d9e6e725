"""Our support modules against grpcio itself: same metadata, statuses, auth context, wire bytes.

Each test asks a real ``grpc.aio`` server what it does (through a raw h2 client when the test
needs to control the exact headers or read the exact bytes) and checks that our function
gives the same answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from fastinject import compression as c
from fastinject import metadata as md
from fastinject.credentials import (
    ServerCredentials,
    auth_context,
    peer_identities,
    peer_identity_key,
)
from fastinject.errors import InvalidMetadataError, InvalidTimeoutError
from tls_material import TlsMaterial, connect_in_memory, issue_certificate, tls_material

# Python's ssl module cannot report this one before 3.14 or so.
UNAVAILABLE_KEYS = {"ssl_negotiated_key_exchange_group"}


@dataclass
class Probe:
    """A grpc.aio server whose handlers report what grpcio gave them."""

    server: grpc.aio.Server
    port: int
    seen: dict[str, Any] = field(default_factory=dict)


def probe_handlers(seen: dict[str, Any]) -> grpc.GenericRpcHandler:
    """``/ref.Probe/Report`` records the call's context; ``/ref.Probe/Echo`` echoes."""

    async def report(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen["metadata"] = tuple(tuple(item) for item in context.invocation_metadata() or ())
        seen["auth"] = context.auth_context()
        seen["identities"] = context.peer_identities()
        seen["identity_key"] = context.peer_identity_key()
        return b"ok"

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    return grpc.method_handlers_generic_handler(
        "ref.Probe",
        {
            "Report": grpc.unary_unary_rpc_method_handler(report),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        },
    )


async def start_probe(
    credentials: grpc.ServerCredentials | None = None,
    compression: grpc.Compression | None = None,
) -> Probe:
    """Start a probe server on a loopback port."""
    seen: dict[str, Any] = {}
    server = grpc.aio.server(compression=compression)
    server.add_generic_rpc_handlers((probe_handlers(seen),))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return Probe(server, port, seen)


@pytest.fixture
async def probe() -> AsyncIterator[Probe]:
    """A plaintext probe server."""
    server = await start_probe()
    yield server
    await server.server.stop(None)


@dataclass
class RawResponse:
    """What a raw h2 client received for one call."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        """The value of ``name`` in the trailers or, failing that, the headers."""
        for key, value in [*self.trailers, *self.headers]:
            if key == name:
                return value
        return None


def base_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The headers of a well-formed gRPC request for ``path``."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"localhost"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
    ]


def raw_call(port: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> RawResponse:
    """One call with exactly ``headers`` (no validation or normalisation) and ``body``."""
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    response = RawResponse()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn.initiate_connection()
        conn.send_headers(1, list(headers))
        conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            chunk = sock.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = list(event.headers or [])
                elif isinstance(event, h2.events.TrailersReceived):
                    response.trailers = list(event.headers or [])
                elif isinstance(event, h2.events.DataReceived):
                    response.data += event.data or b""
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, 1)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(conn.data_to_send())
    return response


def frame(payload: bytes, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message."""
    return struct.pack(">BI", int(compressed), len(payload)) + payload


# -- metadata ---------------------------------------------------------------------------------


async def test_application_metadata_matches_grpcio(probe: Probe) -> None:
    """decode_metadata keeps and drops exactly the headers grpcio's invocation_metadata does."""
    headers = [
        *base_headers("/ref.Probe/Report"),
        (b"grpc-timeout", b"100S"),
        (b"grpc-encoding", b"identity"),
        (b"grpc-accept-encoding", b"identity,gzip"),
        (b"grpc-status", b"0"),
        (b"grpc-message", b"x"),
        (b"grpc-trace-bin", b"AAEC"),
        (b"grpc-tags-bin", b"AAEC"),
        (b"grpc-server-stats-bin", b"AA"),
        (b"grpc-internal-encoding-request", b"identity"),
        (b"endpoint-load-metrics-bin", b"AA"),
        (b"lb-cost-bin", b"AAAAAAAA+D9ubQ"),
        (b"user-agent", b"raw-h2/1.0"),
        (b"host", b"example.com"),
        (b"grpc-status-details-bin", b"CAMSBGJhZA"),
        (b"grpc-foo", b"bar"),
        (b"grpc-previous-rpc-attempts", b"1"),
        (b"lb-token", b"t"),
        (b"traceparent", b"00-abc-def-01"),
        (b"x-bin", b"AAEC"),
        (b"x-bin", b"AQ=="),
        (b"a", b"1"),
        (b"a", b"2"),
        (b"tabbed", b"a\tb"),
        (b"accented", "caf\u00e9".encode()),
    ]
    response = await asyncio.to_thread(raw_call, probe.port, headers, frame(b""))
    assert response.header(b"grpc-status") == b"0"
    # grpcio lists the metadata it parses first; the order of other keys is kept by both.
    assert sorted(md.decode_metadata(headers), key=repr) == sorted(probe.seen["metadata"], key=repr)


async def test_malformed_timeout_status_matches_grpcio(probe: Probe) -> None:
    """A malformed grpc-timeout fails the call with the status grpcio uses."""
    headers = [*base_headers("/ref.Probe/Report"), (b"grpc-timeout", b"1x")]
    response = await asyncio.to_thread(raw_call, probe.port, headers, frame(b""))
    with pytest.raises(InvalidTimeoutError) as info:
        md.parse_timeout(b"1x")
    assert response.header(b"grpc-status") == str(info.value.status.number).encode()


@pytest.mark.parametrize(("name", "value"), [(b"Upper", b"x"), (b"sp ace", b"x"), (b"x-bin", b"A")])
async def test_invalid_metadata_status_matches_grpcio(
    probe: Probe, name: bytes, value: bytes
) -> None:
    """An illegal key or bad base64 fails the call with the status grpcio uses."""
    headers = [*base_headers("/ref.Probe/Report"), (name, value)]
    response = await asyncio.to_thread(raw_call, probe.port, headers, frame(b""))
    with pytest.raises(InvalidMetadataError) as info:
        md.decode_metadata(headers)
    assert response.header(b"grpc-status") == str(info.value.status.number).encode()


# -- compression ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [grpc.Compression.Deflate, grpc.Compression.Gzip])
async def test_compression_interoperates_with_grpcio(algorithm: grpc.Compression) -> None:
    """A grpcio server decompresses what we compress, and we decompress its responses."""
    probe = await start_probe(compression=algorithm)
    try:
        encoding = c.ENCODING_NAMES[c.coerce_compression(algorithm)]
        message = b"fastinject " * 300
        headers = [
            *base_headers("/ref.Probe/Echo"),
            (b"grpc-encoding", encoding.encode()),
            (b"grpc-accept-encoding", c.ACCEPT_ENCODING_HEADER),
        ]
        body = frame(c.compress(encoding, message), compressed=True)
        response = await asyncio.to_thread(raw_call, probe.port, headers, body)
    finally:
        await probe.server.stop(None)
    assert response.header(b"grpc-status") == b"0"
    assert response.header(b"grpc-encoding") == encoding.encode()
    flag, length = struct.unpack(">BI", response.data[:5])
    assert flag == 1
    assert len(response.data) == 5 + length
    assert c.decompress(encoding, response.data[5:], len(message)) == message


# -- auth context -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def material() -> TlsMaterial:
    """The shared test certificates."""
    return tls_material()


async def grpcio_auth(
    material: TlsMaterial, client_pair: tuple[bytes, bytes] | None, require_client_auth: bool
) -> dict[str, Any]:
    """What a grpcio server reports for a grpcio client presenting ``client_pair``."""
    credentials = grpc.ssl_server_credentials(
        [material.server_pair],
        root_certificates=material.ca_pem if require_client_auth else None,
        require_client_auth=require_client_auth,
    )
    probe = await start_probe(credentials)
    try:
        channel_credentials = grpc.ssl_channel_credentials(
            material.ca_pem, *(client_pair or (None, None))
        )
        async with grpc.aio.secure_channel(f"localhost:{probe.port}", channel_credentials) as ch:
            assert await ch.unary_unary("/ref.Probe/Report")(b"", timeout=10) == b"ok"
    finally:
        await probe.server.stop(None)
    return probe.seen


def our_auth(
    material: TlsMaterial, client_pair: tuple[bytes, bytes] | None, require_client_auth: bool
) -> dict[str, list[bytes]]:
    """What we report for the same client, after a real handshake in memory."""
    credentials = ServerCredentials.ssl(
        [material.server_pair],
        material.ca_pem if require_client_auth else None,
        require_client_auth,
    )
    context = credentials.ssl_context()
    assert context is not None
    link = connect_in_memory(context, material.client_context(client_pair), "localhost")
    return auth_context(link.server)


def assert_same_auth(ours: dict[str, list[bytes]], grpcio: dict[str, list[bytes]]) -> None:
    """Equal auth contexts, apart from properties Python cannot observe."""
    missing = set(grpcio) - set(ours)
    assert missing <= UNAVAILABLE_KEYS
    assert ours == {key: value for key, value in grpcio.items() if key not in missing}


async def test_insecure_auth_context_matches_grpcio(probe: Probe) -> None:
    """auth_context(None) is what grpcio reports on a plaintext connection."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{probe.port}") as channel:
        await channel.unary_unary("/ref.Probe/Report")(b"", timeout=10)
    assert auth_context(None) == probe.seen["auth"]
    assert peer_identities(auth_context(None)) == probe.seen["identities"]
    assert peer_identity_key(auth_context(None)) == probe.seen["identity_key"]


async def test_tls_auth_context_matches_grpcio(material: TlsMaterial) -> None:
    """Without a client certificate our TLS auth context equals grpcio's."""
    seen = await grpcio_auth(material, None, False)
    ours = our_auth(material, None, False)
    assert_same_auth(ours, seen["auth"])
    assert peer_identities(ours) == seen["identities"] is None


def rdn(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.RelativeDistinguishedName:
    """One relative distinguished name of ``(oid, value)`` attributes."""
    return x509.RelativeDistinguishedName(
        [x509.NameAttribute(oid, value) for oid, value in attributes]
    )


@pytest.mark.parametrize(
    ("subject", "sans"),
    [
        pytest.param("client", [x509.DNSName("client.example")], id="dns-san"),
        pytest.param("only cn", None, id="cn-only"),
        pytest.param(
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no cn")]), None, id="no-cn"
        ),
        pytest.param(
            x509.Name(
                [
                    rdn((NameOID.COMMON_NAME, "multi"), (NameOID.USER_ID, "u1")),
                    rdn((NameOID.COUNTRY_NAME, "US")),
                    rdn((NameOID.ORGANIZATION_NAME, 'Org, "Inc" <x>;+=\\')),
                    rdn((NameOID.ORGANIZATIONAL_UNIT_NAME, "\u00dcnit \u00e9")),
                    rdn((NameOID.DOMAIN_COMPONENT, "example")),
                    rdn((NameOID.EMAIL_ADDRESS, "a@b.c")),
                    rdn((NameOID.COMMON_NAME, "#lead trail ")),
                    rdn((x509.ObjectIdentifier("1.2.3.4"), "odd")),
                ]
            ),
            [
                x509.DNSName("a.example"),
                x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                x509.UniformResourceIdentifier("spiffe://td/ns/x"),
                x509.RFC822Name("me@example.com"),
                x509.DNSName("b.example"),
            ],
            id="everything",
        ),
    ],
)
async def test_mtls_auth_context_matches_grpcio(
    material: TlsMaterial, subject: x509.Name | str, sans: list[x509.GeneralName] | None
) -> None:
    """With a client certificate our auth context and peer identity equal grpcio's."""
    pair = issue_certificate(material, subject, sans)
    seen = await grpcio_auth(material, pair, True)
    ours = our_auth(material, pair, True)
    assert_same_auth(ours, seen["auth"])
    assert peer_identities(ours) == seen["identities"]
    assert peer_identity_key(ours) == seen["identity_key"]
