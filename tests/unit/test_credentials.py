"""Tests of fastinject.credentials: contexts, real TLS handshakes, rotation, auth context.

Handshakes run in memory (``ssl.MemoryBIO`` on both sides), exactly as the server's TLS layer
drives them, with the certificates of ``tls_material``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from fastinject import credentials as cr
from fastinject.credentials import (
    ServerCredentials,
    auth_context,
    check_alpn,
    peer_identities,
    peer_identity_key,
)
from fastinject.errors import HandshakeError, ServerStateError
from tls_material import (
    CLIENT_COMMON_NAME,
    CLIENT_DNS_NAME,
    ROTATED_SERVER_COMMON_NAME,
    SERVER_COMMON_NAME,
    TlsMaterial,
    connect_in_memory,
    issue_certificate,
    tls_material,
)


@pytest.fixture(scope="module")
def material() -> TlsMaterial:
    """The shared test certificates."""
    return tls_material()


def handshake(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    server_name: str | None = "localhost",
    session: ssl.SSLSession | None = None,
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake in memory; return the (server, client) SSL objects."""
    link = connect_in_memory(server_context, client_context, server_name, session)
    return link.server, link.client


def server_common_name(client_side: ssl.SSLObject) -> str:
    """The CN of the certificate the server presented to ``client_side``."""
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value)


# -- insecure ---------------------------------------------------------------------------------


def test_insecure_credentials_have_no_context() -> None:
    """Insecure credentials mean plaintext: no context, no client auth."""
    creds = ServerCredentials.insecure()
    assert not creds.is_secure
    assert not creds.require_client_auth
    assert creds.ssl_context() is None
    creds.release()
    assert creds.ssl_context() is None


def test_insecure_auth_context_is_grpcios() -> None:
    """A plaintext connection's auth context is what grpcio reports for insecure peers."""
    assert auth_context(None) == {
        "transport_security_type": [b"insecure"],
        "security_level": [b"TSI_SECURITY_NONE"],
    }
    assert peer_identities(auth_context(None)) is None
    assert peer_identity_key(auth_context(None)) is None


# -- server TLS -------------------------------------------------------------------------------


def test_tls_handshake_presents_the_server_certificate(material: TlsMaterial) -> None:
    """A client trusting the CA completes a handshake, sees our certificate and ALPN h2."""
    creds = ServerCredentials.ssl([material.server_pair])
    assert creds.is_secure
    assert not creds.require_client_auth
    context = creds.ssl_context()
    assert context is not None
    server, client_side = handshake(context, material.client_context())
    assert server_common_name(client_side) == SERVER_COMMON_NAME
    assert client_side.selected_alpn_protocol() == "h2"
    check_alpn(server)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "foo.test.google.fr"])
def test_server_certificate_names(material: TlsMaterial, host: str) -> None:
    """The test server certificate verifies for localhost, loopback IPs and the interop name."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    handshake(context, material.client_context(), server_name=host)


def test_context_is_cached(material: TlsMaterial) -> None:
    """ssl_context() returns the same context until the credentials are updated."""
    creds = ServerCredentials.ssl([material.server_pair])
    assert creds.ssl_context() is creds.ssl_context()


def test_tls_1_2_is_supported_with_aead_ciphers(material: TlsMaterial) -> None:
    """A TLS 1.2 client can connect, and gets an AEAD cipher as HTTP/2 requires."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    server, _ = handshake(context, material.client_context(max_version=ssl.TLSVersion.TLSv1_2))
    assert server.version() == "TLSv1.2"
    cipher = server.cipher()
    assert cipher is not None
    assert "GCM" in cipher[0] or "CHACHA20" in cipher[0]


def test_cbc_only_tls_1_2_client_is_refused(material: TlsMaterial) -> None:
    """A TLS 1.2 client offering only CBC suites (blocked by RFC 9113) cannot connect."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    client_context = material.client_context(max_version=ssl.TLSVersion.TLSv1_2)
    client_context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384")
    with pytest.raises(ssl.SSLError):
        handshake(context, client_context)


def test_tls_below_1_2_is_disabled(material: TlsMaterial) -> None:
    """Server contexts never negotiate below TLS 1.2."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("alpn", [[], ["http/1.1"]])
def test_check_alpn_rejects_clients_without_h2(material: TlsMaterial, alpn: list[str]) -> None:
    """A client that did not negotiate ALPN h2 fails check_alpn with HandshakeError."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    server, _ = handshake(context, material.client_context(alpn=alpn))
    with pytest.raises(HandshakeError, match="h2"):
        check_alpn(server)


# -- client authentication --------------------------------------------------------------------


def test_mtls_accepts_a_trusted_client(material: TlsMaterial) -> None:
    """With client auth required, a client certificate from the CA is accepted and reported."""
    creds = ServerCredentials.ssl([material.server_pair], material.ca_pem, True)
    assert creds.require_client_auth
    context = creds.ssl_context()
    assert context is not None
    server, _ = handshake(context, material.client_context(material.client_pair))
    auth = auth_context(server)
    assert auth["x509_common_name"] == [CLIENT_COMMON_NAME.encode()]
    assert auth["x509_subject_alternative_name"] == [CLIENT_DNS_NAME.encode()]
    assert auth["x509_pem_cert"] == [material.client_cert_pem]
    assert peer_identity_key(auth) == "x509_subject_alternative_name"
    assert peer_identities(auth) == [CLIENT_DNS_NAME.encode()]


def test_mtls_refuses_a_client_without_certificate(material: TlsMaterial) -> None:
    """With client auth required, a client presenting no certificate cannot connect."""
    context = ServerCredentials.ssl([material.server_pair], material.ca_pem, True).ssl_context()
    assert context is not None
    with pytest.raises(ssl.SSLError):
        handshake(context, material.client_context())


@pytest.mark.parametrize("required", [True, False])
def test_untrusted_client_certificate_is_refused(material: TlsMaterial, required: bool) -> None:
    """A client certificate from another CA is refused whenever roots are configured."""
    context = ServerCredentials.ssl([material.server_pair], material.ca_pem, required).ssl_context()
    assert context is not None
    stranger = (material.stranger_client_key_pem, material.stranger_client_cert_pem)
    with pytest.raises(ssl.SSLError):
        handshake(context, material.client_context(stranger))


def test_optional_client_auth(material: TlsMaterial) -> None:
    """With roots but no requirement, clients may connect with or without a certificate."""
    context = ServerCredentials.ssl([material.server_pair], material.ca_pem).ssl_context()
    assert context is not None
    anonymous, _ = handshake(context, material.client_context())
    assert "x509_common_name" not in auth_context(anonymous)
    assert peer_identities(auth_context(anonymous)) is None
    known, _ = handshake(context, material.client_context(material.client_pair))
    assert auth_context(known)["x509_common_name"] == [CLIENT_COMMON_NAME.encode()]


def test_without_roots_no_client_certificate_is_requested(material: TlsMaterial) -> None:
    """Without roots the server does not ask for (or report) a client certificate."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    server, _ = handshake(context, material.client_context(material.client_pair))
    assert server.getpeercert(binary_form=True) is None
    assert peer_identities(auth_context(server)) is None


def test_client_auth_requires_roots(material: TlsMaterial) -> None:
    """require_client_auth without root certificates is a ValueError."""
    with pytest.raises(ValueError, match="root_certificates"):
        ServerCredentials.ssl([material.server_pair], require_client_auth=True)


# -- validation of PEM material ---------------------------------------------------------------


def encrypted_key(material: TlsMaterial) -> bytes:
    """The server key, encrypted with a password."""
    key = serialization.load_pem_private_key(material.server_key_pem, None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("make_pairs", "message"),
    [
        (lambda m: [], "at least one"),
        (lambda m: [(b"garbage", m.server_cert_pem)], "private key of pair 0 is not PEM"),
        (lambda m: [(m.server_key_pem, b"garbage")], "certificate chain of pair 0 is not PEM"),
        (lambda m: [(m.client_key_pem, m.server_cert_pem)], "pair 0 does not match"),
        (lambda m: [m.server_pair, (m.client_key_pem, m.server_cert_pem)], "pair 1 does not"),
        (lambda m: [(m.server_cert_pem, m.server_key_pem)], "pair 0 could not be loaded"),
        (
            lambda m: [(m.server_key_pem, b"-----BEGIN CERTIFICATE-----\nAAAA\n")],
            "pair 0 could not be loaded",
        ),
        (lambda m: [(encrypted_key(m), m.server_cert_pem)], "encrypted"),
    ],
)
def test_bad_key_material_is_a_value_error(material: TlsMaterial, make_pairs, message) -> None:  # type: ignore[no-untyped-def]
    """Malformed, mismatched or encrypted key material raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        ServerCredentials.ssl(make_pairs(material))


@pytest.mark.parametrize(
    "roots", [b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_bad_roots_are_a_value_error(material: TlsMaterial, roots: bytes) -> None:
    """Root certificates that are not PEM certificates raise ValueError."""
    with pytest.raises(ValueError, match="root_certificates"):
        ServerCredentials.ssl([material.server_pair], roots)


@pytest.mark.parametrize(
    "pairs",
    [
        "not pairs",
        b"not pairs",
        [("key", "cert")],
        [(b"key",)],
        [None],
    ],
)
def test_wrong_types_are_type_errors(pairs: object) -> None:
    """Pairs that are not sequences of (bytes, bytes) raise TypeError."""
    with pytest.raises(TypeError):
        ServerCredentials.ssl(pairs)  # type: ignore[arg-type]


def test_key_material_accepts_bytearrays(material: TlsMaterial) -> None:
    """PEM data given as bytearray works like bytes."""
    creds = ServerCredentials.ssl(
        [(bytearray(material.server_key_pem), bytearray(material.server_cert_pem))],  # type: ignore[list-item]
        bytearray(material.ca_pem),  # type: ignore[arg-type]
    )
    context = creds.ssl_context()
    assert context is not None
    handshake(context, material.client_context())


def test_key_material_leaves_no_files(
    material: TlsMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading key material writes nothing to the temporary directory (in-memory files)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ServerCredentials.ssl([material.server_pair], material.ca_pem)
    assert list(tmp_path.iterdir()) == []


def test_key_material_loads_without_memfd(
    material: TlsMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without memfd_create, key files exist only in a temporary directory while loading."""
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    creds = ServerCredentials.ssl([material.server_pair])
    assert list(tmp_path.iterdir()) == []
    context = creds.ssl_context()
    assert context is not None
    _, client_side = handshake(context, material.client_context())
    assert server_common_name(client_side) == SERVER_COMMON_NAME


# -- several certificates: SNI ----------------------------------------------------------------


@pytest.fixture(scope="module")
def other_server_pair(material: TlsMaterial) -> tuple[bytes, bytes]:
    """A server certificate for other.example and *.wild.example."""
    return issue_certificate(
        material,
        "other server",
        [x509.DNSName("other.example"), x509.DNSName("*.wild.example")],
        server=True,
    )


@pytest.mark.parametrize(
    ("server_name", "common_name"),
    [
        ("localhost", SERVER_COMMON_NAME),
        ("other.example", "other server"),
        ("OTHER.Example", "other server"),
        ("a.wild.example", "other server"),
        ("unknown.example", SERVER_COMMON_NAME),
        ("a.b.wild.example", SERVER_COMMON_NAME),
        (None, SERVER_COMMON_NAME),
    ],
)
def test_several_pairs_are_chosen_by_sni(
    material: TlsMaterial,
    other_server_pair: tuple[bytes, bytes],
    server_name: str | None,
    common_name: str,
) -> None:
    """With several pairs the certificate matching the SNI is used, else the first one."""
    context = ServerCredentials.ssl([material.server_pair, other_server_pair]).ssl_context()
    assert context is not None
    client_context = material.client_context()
    client_context.check_hostname = False
    server, client_side = handshake(context, client_context, server_name=server_name)
    assert server_common_name(client_side) == common_name
    check_alpn(server)


def test_sni_choice_keeps_client_authentication(
    material: TlsMaterial, other_server_pair: tuple[bytes, bytes]
) -> None:
    """A certificate chosen by SNI still requires and verifies client certificates."""
    creds = ServerCredentials.ssl([material.server_pair, other_server_pair], material.ca_pem, True)
    context = creds.ssl_context()
    assert context is not None
    server, client_side = handshake(
        context, material.client_context(material.client_pair), "other.example"
    )
    assert server_common_name(client_side) == "other server"
    assert auth_context(server)["x509_common_name"] == [CLIENT_COMMON_NAME.encode()]
    with pytest.raises(ssl.SSLError):
        handshake(context, material.client_context(), "other.example")


# -- rotation -------------------------------------------------------------------------------


def test_update_rotates_certificates_for_new_handshakes(material: TlsMaterial) -> None:
    """After update(), new handshakes present the new certificate; old connections keep working."""
    creds = ServerCredentials.ssl([material.server_pair])
    old_context = creds.ssl_context()
    assert old_context is not None
    old = connect_in_memory(old_context, material.client_context())

    creds.update([material.rotated_server_pair])
    new_context = creds.ssl_context()
    assert new_context is not None
    assert new_context is not old_context
    _, new_client = handshake(new_context, material.client_context())
    assert server_common_name(new_client) == ROTATED_SERVER_COMMON_NAME

    # The connection made before the rotation still carries data with its old certificate.
    assert server_common_name(old.client) == SERVER_COMMON_NAME
    old.round_trip(b"still here")


def test_update_keeps_roots_unless_given(material: TlsMaterial) -> None:
    """update() without roots keeps the current ones; with roots it replaces them."""
    creds = ServerCredentials.ssl([material.server_pair], material.ca_pem, True)
    creds.update([material.rotated_server_pair])
    context = creds.ssl_context()
    assert context is not None
    handshake(context, material.client_context(material.client_pair))

    creds.update([material.rotated_server_pair], material.other_ca_pem)
    context = creds.ssl_context()
    assert context is not None
    stranger = (material.stranger_client_key_pem, material.stranger_client_cert_pem)
    handshake(context, material.client_context(stranger))
    with pytest.raises(ssl.SSLError):
        handshake(context, material.client_context(material.client_pair))


def test_failed_update_changes_nothing(material: TlsMaterial) -> None:
    """An update with bad material raises ValueError and the old certificate stays in use."""
    creds = ServerCredentials.ssl([material.server_pair])
    before = creds.ssl_context()
    with pytest.raises(ValueError, match="does not match"):
        creds.update([(material.client_key_pem, material.rotated_server_cert_pem)])
    assert creds.ssl_context() is before
    assert before is not None
    _, client_side = handshake(before, material.client_context())
    assert server_common_name(client_side) == SERVER_COMMON_NAME


def test_update_only_for_ssl_credentials(material: TlsMaterial) -> None:
    """Insecure and user-context credentials cannot be updated (TypeError)."""
    with pytest.raises(TypeError):
        ServerCredentials.insecure().update([material.server_pair])
    with pytest.raises(TypeError):
        ServerCredentials.from_ssl_context(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)).update(
            [material.server_pair]
        )


def test_release_drops_the_context(material: TlsMaterial) -> None:
    """After release() the credentials refuse to give out a context or be updated."""
    creds = ServerCredentials.ssl([material.server_pair])
    creds.release()
    with pytest.raises(ServerStateError):
        creds.ssl_context()
    with pytest.raises(ServerStateError):
        creds.update([material.server_pair])


# -- user-built contexts ----------------------------------------------------------------------


def user_context(material: TlsMaterial, directory: Path) -> ssl.SSLContext:
    """A server context built the way a user would, with the test server certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (directory / "server.key").write_bytes(material.server_key_pem)
    (directory / "server.pem").write_bytes(material.server_cert_pem)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return context


def test_from_ssl_context_sets_alpn_and_tls_1_2(material: TlsMaterial, tmp_path: Path) -> None:
    """A user's context gets ALPN h2 and at least TLS 1.2; handshakes negotiate h2."""
    context = user_context(material, tmp_path)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    creds = ServerCredentials.from_ssl_context(context)
    assert creds.is_secure
    assert creds.ssl_context() is context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    server, _ = handshake(context, material.client_context())
    check_alpn(server)
    assert auth_context(server)["ssl_requested_server_name"] == [b"localhost"]


def test_from_ssl_context_keeps_the_users_sni_callback(
    material: TlsMaterial, tmp_path: Path
) -> None:
    """The user's own SNI callback still runs."""
    context = user_context(material, tmp_path)
    seen: list[str | None] = []
    context.sni_callback = lambda obj, name, ctx: seen.append(name)
    ServerCredentials.from_ssl_context(context)
    ServerCredentials.from_ssl_context(context)  # twice: still one wrapper
    handshake(context, material.client_context())
    assert seen == ["localhost"]


def test_from_ssl_context_reports_required_client_auth(
    tmp_path: Path, material: TlsMaterial
) -> None:
    """require_client_auth reflects a user context's CERT_REQUIRED."""
    context = user_context(material, tmp_path)
    context.load_verify_locations(cadata=material.ca_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED
    assert ServerCredentials.from_ssl_context(context).require_client_auth


def test_from_ssl_context_rejects_client_contexts() -> None:
    """A client-side context or a non-context is refused."""
    with pytest.raises(ValueError, match="client context"):
        ServerCredentials.from_ssl_context(ssl.create_default_context())
    with pytest.raises(TypeError):
        ServerCredentials.from_ssl_context("context")  # type: ignore[arg-type]


# -- auth context -----------------------------------------------------------------------------


def test_tls_auth_context_without_client_certificate(material: TlsMaterial) -> None:
    """A TLS peer without certificate: transport ssl, privacy level, SNI, TLS version."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    server, _ = handshake(context, material.client_context())
    assert auth_context(server) == {
        "transport_security_type": [b"ssl"],
        "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"],
        "ssl_session_reused": [b"false"],
        "ssl_requested_server_name": [b"localhost"],
        "ssl_tls_version": [server.version().encode()],  # type: ignore[union-attr]
    }


def test_auth_context_omits_sni_when_none_was_sent(material: TlsMaterial) -> None:
    """No SNI from the client means no ssl_requested_server_name."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    client_context = material.client_context()
    client_context.check_hostname = False
    server, _ = handshake(context, client_context, server_name=None)
    assert "ssl_requested_server_name" not in auth_context(server)


def test_auth_context_reports_session_reuse(material: TlsMaterial) -> None:
    """A resumed TLS session is reported as ssl_session_reused true."""
    context = ServerCredentials.ssl([material.server_pair]).ssl_context()
    assert context is not None
    client_context = material.client_context(max_version=ssl.TLSVersion.TLSv1_2)
    _, first = handshake(context, client_context)
    server, second = handshake(context, client_context, session=first.session)
    assert second.session_reused
    assert auth_context(server)["ssl_session_reused"] == [b"true"]


def mtls_auth(material: TlsMaterial, pair: tuple[bytes, bytes]) -> dict[str, list[bytes]]:
    """The auth context of an mTLS connection whose client presents ``pair``."""
    context = ServerCredentials.ssl([material.server_pair], material.ca_pem, True).ssl_context()
    assert context is not None
    server, _ = handshake(context, material.client_context(pair))
    return auth_context(server)


def test_auth_context_lists_every_san_kind(material: TlsMaterial) -> None:
    """DNS, IP, URI and email SANs are listed in order and by kind; one SPIFFE URI is its id."""
    pair = issue_certificate(
        material,
        "workload",
        [
            x509.DNSName("a.example"),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            x509.UniformResourceIdentifier("spiffe://example.org/ns/default/sa/x"),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            x509.RFC822Name("me@example.com"),
            x509.DNSName("b.example"),
        ],
    )
    auth = mtls_auth(material, pair)
    assert auth["x509_subject_alternative_name"] == [
        b"a.example",
        b"10.0.0.1",
        b"spiffe://example.org/ns/default/sa/x",
        b"2001:db8::1",
        b"me@example.com",
        b"b.example",
    ]
    assert auth["peer_dns"] == [b"a.example", b"b.example"]
    assert auth["peer_ip"] == [b"10.0.0.1", b"2001:db8::1"]
    assert auth["peer_uri"] == [b"spiffe://example.org/ns/default/sa/x"]
    assert auth["peer_email"] == [b"me@example.com"]
    assert auth["peer_spiffe_id"] == [b"spiffe://example.org/ns/default/sa/x"]
    assert peer_identities(auth) == auth["x509_subject_alternative_name"]


def test_two_uri_sans_give_no_spiffe_id(material: TlsMaterial) -> None:
    """A certificate with two URI SANs has no SPIFFE id (grpc core's rule)."""
    pair = issue_certificate(
        material,
        "workload",
        [
            x509.UniformResourceIdentifier("spiffe://a/x"),
            x509.UniformResourceIdentifier("spiffe://b/y"),
        ],
    )
    auth = mtls_auth(material, pair)
    assert "peer_spiffe_id" not in auth
    assert auth["peer_uri"] == [b"spiffe://a/x", b"spiffe://b/y"]


def test_identity_falls_back_to_common_name(material: TlsMaterial) -> None:
    """Without SANs the peer identity is the common name."""
    auth = mtls_auth(material, issue_certificate(material, "only cn"))
    assert "x509_subject_alternative_name" not in auth
    assert peer_identity_key(auth) == "x509_common_name"
    assert peer_identities(auth) == [b"only cn"]
    assert auth["x509_subject"] == [b"CN=only cn"]


def test_certificate_without_common_name(material: TlsMaterial) -> None:
    """A certificate without CN reports an empty common name (as grpcio does)."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")])
    auth = mtls_auth(material, issue_certificate(material, subject))
    assert auth["x509_common_name"] == [b""]
    assert auth["x509_subject"] == [b"O=Org"]


def test_subject_is_rfc_2253(material: TlsMaterial) -> None:
    """x509_subject is RFC 2253: most specific first, special characters escaped."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org, Inc"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "R&D"),
            x509.NameAttribute(NameOID.COMMON_NAME, " padded "),
        ]
    )
    auth = mtls_auth(material, issue_certificate(material, subject))
    assert auth["x509_subject"] == [b"CN=\\ padded\\ ,OU=R&D,O=Org\\, Inc,C=US"]
    assert auth["x509_common_name"] == [b" padded "]


@given(st.binary(max_size=200))
def test_certificate_parser_only_raises_value_error(data: bytes) -> None:
    """Arbitrary bytes never crash the certificate reader with anything but ValueError."""
    with contextlib.suppress(ValueError):
        cr._parse_certificate(data)


def test_certificate_parser_reads_the_test_certificates(material: TlsMaterial) -> None:
    """The reader finds the names of real certificates (the SNI chooser depends on it)."""
    assert cr._certificate_names(material.server_cert_pem) == ["localhost", "*.test.google.fr"]
    assert cr._certificate_names(material.client_cert_pem) == [CLIENT_DNS_NAME]
    assert cr._certificate_names(issue_certificate(material, "cn only")[1]) == ["cn only"]
