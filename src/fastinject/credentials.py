"""TLS settings of a port or connection injector, and the auth context of a TLS peer.

:class:`ServerCredentials` mirrors ``grpc.ssl_server_credentials`` (PEM key/certificate pairs,
optional client CA roots, optional mandatory client authentication) and adds two things:
building from a user's own :class:`ssl.SSLContext`, and certificate rotation
(:meth:`ServerCredentials.update`, in the spirit of gRFC A29 certificate providers): new
handshakes use the new certificates, established connections keep theirs.

:func:`auth_context` reports a connection's peer the way grpcio's ``context.auth_context()``
does, with the same property names and value formats (checked against grpcio 1.85).

Python's :mod:`ssl` can load a private key and certificate chain only from files.  On Linux we
hand OpenSSL an anonymous in-memory file (``memfd_create``) so key material never touches a
file system; elsewhere a private temporary directory is used and deleted at once.
"""

from __future__ import annotations

import binascii
import contextlib
import ipaddress
import os
import ssl
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import Any

from .errors import HandshakeError, ServerStateError

_ALPN_PROTOCOLS = ["h2"]
# HTTP/2 over TLS 1.2 forbids non-AEAD and non-ephemeral suites (RFC 9113 section 9.2.2);
# TLS 1.3 suites are all acceptable and are configured separately by OpenSSL.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"

KeyCertPairs = Sequence[tuple[bytes, bytes]]
"""``(private_key_pem, certificate_chain_pem)`` pairs, as ``grpc.ssl_server_credentials``."""


class ServerCredentials:
    """TLS (or no TLS) settings for a port or a connection injector."""

    __slots__ = ("__weakref__", "_context", "_kind", "_released", "_require_client_auth", "_roots")

    def __init__(
        self,
        *,
        _kind: str,
        _context: SSLContext | None = None,
        _roots: bytes | None = None,
        _require_client_auth: bool = False,
    ) -> None:
        # Private: use insecure(), ssl() or from_ssl_context().
        self._kind = _kind
        self._context = _context
        self._roots = _roots
        self._require_client_auth = _require_client_auth
        self._released = False

    @classmethod
    def insecure(cls) -> ServerCredentials:
        """Plaintext HTTP/2 (h2c), no TLS."""
        return cls(_kind="insecure")

    @classmethod
    def ssl(
        cls,
        private_key_certificate_chain_pairs: KeyCertPairs,
        root_certificates: bytes | None = None,
        require_client_auth: bool = False,
    ) -> ServerCredentials:
        """TLS with the given PEM key/certificate pairs, like ``grpc.ssl_server_credentials``.

        With several pairs, the one whose certificate names match the client's SNI is used
        (the first one when none matches), as grpc core does.  ``root_certificates`` (PEM CA
        certificates) makes the server ask clients for a certificate and verify any
        certificate presented against these roots; ``require_client_auth=True`` also refuses
        clients that present none (mutual TLS).  Note that grpcio does not ask for a client
        certificate at all unless ``require_client_auth`` is set.

        Everything is checked now: malformed PEM, a key that does not match its certificate,
        or ``require_client_auth`` without roots raise :class:`ValueError`.
        """
        pairs = _check_pairs(private_key_certificate_chain_pairs)
        roots = _check_pem("root_certificates", root_certificates, optional=True)
        if require_client_auth and roots is None:
            raise ValueError("require_client_auth=True needs root_certificates to verify clients")
        context = _build_context(pairs, roots, bool(require_client_auth))
        return cls(
            _kind="ssl",
            _context=context,
            _roots=roots,
            _require_client_auth=bool(require_client_auth),
        )

    @classmethod
    def from_ssl_context(cls, context: SSLContext) -> ServerCredentials:
        """TLS with a server-side :class:`ssl.SSLContext` the caller built.

        The context must already hold the server's certificate.  We set ALPN to ``h2``, raise
        its minimum version to TLS 1.2 if lower (HTTP/2 requires it) and wrap its SNI
        callback (to record the requested server name for :func:`auth_context`); everything
        else, including client verification, is the caller's.
        """
        if not isinstance(context, ssl.SSLContext):
            raise TypeError(f"context must be an ssl.SSLContext, not {type(context).__name__}")
        if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
            raise ValueError(
                "context is a client context (PROTOCOL_TLS_CLIENT); use ssl.PROTOCOL_TLS_SERVER"
            )
        context.set_alpn_protocols(_ALPN_PROTOCOLS)
        if context.minimum_version < ssl.TLSVersion.TLSv1_2:
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        _install_sni_callback(context, [])
        return cls(
            _kind="context",
            _context=context,
            _require_client_auth=context.verify_mode == ssl.CERT_REQUIRED,
        )

    @property
    def is_secure(self) -> bool:
        """Whether connections use TLS."""
        return self._kind != "insecure"

    @property
    def require_client_auth(self) -> bool:
        """Whether clients must present a certificate the server trusts."""
        return self._require_client_auth

    def ssl_context(self) -> SSLContext | None:
        """The server-side context for a new handshake (None for insecure credentials).

        Cheap: the context is built once and rebuilt only by :meth:`update`.  Raises
        :class:`~fastinject.errors.ServerStateError` after :meth:`release`.
        """
        if self._released:
            raise ServerStateError("these server credentials were released")
        return self._context

    def update(
        self,
        private_key_certificate_chain_pairs: KeyCertPairs,
        root_certificates: bytes | None = None,
    ) -> None:
        """Rotate certificates: handshakes from now on use the new pairs (and roots).

        Established connections are untouched.  ``root_certificates=None`` keeps the current
        roots.  Everything is validated before anything changes, so a bad update raises
        :class:`ValueError` and leaves the credentials as they were.  Only credentials made by
        :meth:`ssl` can be updated (:class:`TypeError` otherwise).
        """
        if self._kind != "ssl":
            raise TypeError("only credentials made by ServerCredentials.ssl() can be updated")
        if self._released:
            raise ServerStateError("these server credentials were released")
        pairs = _check_pairs(private_key_certificate_chain_pairs)
        roots = _check_pem("root_certificates", root_certificates, optional=True)
        if roots is None:
            roots = self._roots
        context = _build_context(pairs, roots, self._require_client_auth)
        self._roots = roots
        self._context = context  # one reference assignment: a handshake sees old or new

    def release(self) -> None:
        """Drop every reference to key material; the credentials cannot be used afterwards."""
        self._context = None
        self._roots = None
        self._released = self._kind != "insecure"

    def __repr__(self) -> str:
        if self._kind == "insecure":
            return "ServerCredentials.insecure()"
        state = ", released" if self._released else ""
        return (
            f"<ServerCredentials {self._kind} "
            f"require_client_auth={self._require_client_auth}{state}>"
        )


# -- building contexts ------------------------------------------------------------------------


def require_server_credentials(value: object, argument: str) -> ServerCredentials:
    """``value``, if it is :class:`ServerCredentials`; otherwise a :class:`TypeError`.

    ``grpc.ssl_server_credentials(...)`` returns an opaque handle whose keys live inside grpc
    core, so it cannot be converted: the error names the call that takes the same arguments.
    """
    if isinstance(value, ServerCredentials):
        return value
    kind = type(value)
    if kind.__module__.partition(".")[0] == "grpc" and kind.__name__ == "ServerCredentials":
        raise TypeError(
            f"{argument} is a grpc.ServerCredentials, which fastinject cannot read (its keys "
            "are inside grpc core): replace grpc.ssl_server_credentials(...) with "
            "fastinject.ServerCredentials.ssl(private_key_certificate_chain_pairs, "
            "root_certificates=None, require_client_auth=False), called with the same "
            "arguments (fastinject.ServerCredentials.insecure() for plaintext)"
        )
    raise TypeError(f"{argument} must be fastinject.ServerCredentials, not {kind.__name__}")


def _check_pem(what: str, value: object, *, optional: bool = False) -> bytes | None:
    if value is None and optional:
        return None
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be PEM bytes, not {type(value).__name__}")
    if b"-----BEGIN " not in value:
        raise ValueError(f"{what} is not PEM data (no '-----BEGIN' line)")
    return value


def _check_pairs(pairs: object) -> list[tuple[bytes, bytes]]:
    if isinstance(pairs, bytes | str) or not isinstance(pairs, Sequence):
        raise TypeError(
            "private_key_certificate_chain_pairs must be a sequence of "
            "(private_key, certificate_chain) PEM bytes pairs"
        )
    if not pairs:
        raise ValueError("at least one (private_key, certificate_chain) pair is required")
    checked = []
    for index, pair in enumerate(pairs):
        if not (isinstance(pair, Sequence) and len(pair) == 2):
            raise TypeError(f"pair {index} must be (private_key, certificate_chain), not {pair!r}")
        key = _check_pem(f"private key of pair {index}", pair[0])
        chain = _check_pem(f"certificate chain of pair {index}", pair[1])
        assert key is not None
        assert chain is not None
        checked.append((key, chain))
    return checked


def _build_context(
    pairs: list[tuple[bytes, bytes]], roots: bytes | None, require_client_auth: bool
) -> ssl.SSLContext:
    contexts = []
    for index, (key, chain) in enumerate(pairs):
        context = _base_context(roots, require_client_auth)
        _load_pair(context, index, key, chain)
        contexts.append(context)
    candidates = (
        [
            (_certificate_names(chain), context)
            for (_, chain), context in zip(pairs, contexts, strict=True)
        ]
        if len(pairs) > 1
        else []
    )
    _install_sni_callback(contexts[0], candidates)
    return contexts[0]


def _base_context(roots: bytes | None, require_client_auth: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.set_alpn_protocols(_ALPN_PROTOCOLS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if roots is not None:
        try:
            context.load_verify_locations(cadata=roots.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"root_certificates could not be loaded: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED if require_client_auth else ssl.CERT_OPTIONAL
    return context


class _NoPassword(Exception):
    pass


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _NoPassword


def _load_pair(context: ssl.SSLContext, index: int, key: bytes, chain: bytes) -> None:
    with _pem_file(chain) as chain_path, _pem_file(key) as key_path:
        try:
            context.load_cert_chain(chain_path, key_path, password=_refuse_password)
        except _NoPassword:
            raise ValueError(
                f"private key of pair {index} is encrypted; pass an unencrypted PEM key"
            ) from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(
                    f"private key of pair {index} does not match its certificate"
                ) from None
            raise ValueError(
                f"pair {index} could not be loaded (a malformed PEM private key or "
                f"certificate chain?): {exc}"
            ) from None


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from, valid inside the ``with`` block only."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("fastinject-pem", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="fastinject-") as directory:
        path = Path(directory) / "material.pem"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        yield str(path)


# -- SNI: choosing among several certificates, recording the requested name ------------------

# The server name each TLS connection asked for, for auth_context(); entries go with the
# SSLObject/SSLSocket.
_requested_names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"

_SniCallback = Callable[[Any, str | None, ssl.SSLContext], int | None]


@dataclass
class _SniHandler:
    """The SNI callback we install: records the name, picks a context, chains the caller's."""

    candidates: list[tuple[list[str], ssl.SSLContext]]
    chained: _SniCallback | None = None

    def __call__(
        self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext
    ) -> int | None:
        if server_name:
            _requested_names[ssl_object] = server_name
            for names, candidate in self.candidates:  # the first match wins, as in grpc core
                if any(_name_matches(pattern, server_name) for pattern in names):
                    if candidate is not context:
                        ssl_object.context = candidate
                    break
        if self.chained is not None:
            return self.chained(ssl_object, server_name, context)
        return None


def _install_sni_callback(
    context: ssl.SSLContext, candidates: list[tuple[list[str], ssl.SSLContext]]
) -> None:
    existing: Any = context.sni_callback
    if isinstance(existing, _SniHandler):
        return
    context.sni_callback = _SniHandler(candidates, existing)


def _name_matches(pattern: str, name: str) -> bool:
    """Certificate name ``pattern`` (maybe ``*.example.com``) matches host ``name``."""
    pattern = pattern.lower().rstrip(".")
    name = name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _certificate_names(chain: bytes) -> list[str]:
    """DNS names of the first certificate in ``chain``: SAN dNSNames, else the CN."""
    begin = chain.find(_PEM_BEGIN)
    end = chain.find(_PEM_END, begin)
    try:
        if begin < 0 or end < 0:
            raise ValueError("no PEM certificate")
        info = _parse_certificate(binascii.a2b_base64(chain[begin + len(_PEM_BEGIN) : end]))
    except (ValueError, binascii.Error):
        return []  # OpenSSL loaded it, our small parser cannot: only usable as the default
    dns = [value for kind, value in info.alt_names if kind == "dns"]
    return dns or ([info.common_name] if info.common_name else [])


# -- ALPN and the auth context ----------------------------------------------------------------


def check_alpn(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> None:
    """Raise :class:`~fastinject.errors.HandshakeError` unless ALPN selected ``h2``."""
    selected = ssl_object.selected_alpn_protocol()
    if selected != "h2":
        raise HandshakeError(
            f"the client did not negotiate HTTP/2 with ALPN (selected: {selected!r}); "
            "gRPC over TLS requires ALPN 'h2'"
        )


def auth_context(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, list[bytes]]:
    """What grpcio's ``context.auth_context()`` returns for a connection.

    ``None`` (plaintext) gives ``transport_security_type: insecure`` and security level
    ``TSI_SECURITY_NONE``.  A TLS connection gives ``transport_security_type: ssl``, the
    security level, ``ssl_session_reused``, ``ssl_tls_version`` and (if the client sent SNI)
    ``ssl_requested_server_name``; when the client presented a certificate, also
    ``x509_subject`` (RFC 2253), ``x509_common_name``, ``x509_pem_cert``,
    ``x509_subject_alternative_name`` and ``peer_dns`` / ``peer_ip`` / ``peer_uri`` /
    ``peer_email`` / ``peer_spiffe_id`` as applicable.  (grpcio also reports
    ``ssl_negotiated_key_exchange_group``, which Python's :mod:`ssl` does not expose before
    3.14 or so; it is included where the ``group()`` method exists.)
    """
    if ssl_object is None:
        return {"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]}
    auth: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        _add_certificate(auth, der)
    auth["security_level"] = [b"TSI_PRIVACY_AND_INTEGRITY"]
    auth["ssl_session_reused"] = [b"true" if ssl_object.session_reused else b"false"]
    requested = _requested_names.get(ssl_object)
    if requested:
        auth["ssl_requested_server_name"] = [requested.encode()]
    version = ssl_object.version()
    if version:
        auth["ssl_tls_version"] = [version.encode()]
    group = getattr(ssl_object, "group", None)
    if callable(group):
        name = group()
        if name:
            auth["ssl_negotiated_key_exchange_group"] = [str(name).encode()]
    spiffe = auth.pop("peer_spiffe_id", None)
    if spiffe is not None:  # grpcio lists it last
        auth["peer_spiffe_id"] = spiffe
    return auth


def _add_certificate(auth: dict[str, list[bytes]], der: bytes) -> None:
    try:
        info = _parse_certificate(der)
    except ValueError:
        # OpenSSL accepted the certificate, so this is our parser's limit: report what we can.
        auth["x509_pem_cert"] = [ssl.DER_cert_to_PEM_cert(der).encode()]
        return
    auth["x509_subject"] = [info.subject.encode()]
    auth["x509_common_name"] = [info.common_name.encode()]
    auth["x509_pem_cert"] = [ssl.DER_cert_to_PEM_cert(der).encode()]
    if info.alt_names:
        auth["x509_subject_alternative_name"] = [value.encode() for _, value in info.alt_names]
        for kind in ("dns", "ip", "uri", "email"):
            values = [value.encode() for k, value in info.alt_names if k == kind]
            if values:
                auth[f"peer_{kind}"] = values
        uris = [value for kind, value in info.alt_names if kind == "uri"]
        if len(uris) == 1 and _is_spiffe_id(uris[0]):
            auth["peer_spiffe_id"] = [uris[0].encode()]


def _is_spiffe_id(uri: str) -> bool:
    # grpc core's rule: exactly one URI SAN, "spiffe://<trust domain>/...", bounded lengths.
    if len(uri) > 2048 or not uri.lower().startswith("spiffe://"):
        return False
    trust_domain = uri[len("spiffe://") :].partition("/")[0]
    return 0 < len(trust_domain) <= 255 and uri.isascii()


def peer_identities(auth: dict[str, list[bytes]]) -> list[bytes] | None:
    """The peer's identities (like grpcio): its SANs, else its CN; None without a certificate."""
    key = peer_identity_key(auth)
    return list(auth[key]) if key is not None else None


def peer_identity_key(auth: dict[str, list[bytes]]) -> str | None:
    """The auth-context key holding the peer's identities, or None (like grpcio)."""
    if "x509_subject_alternative_name" in auth:
        return "x509_subject_alternative_name"
    if "x509_common_name" in auth:
        return "x509_common_name"
    return None


# -- a minimal X.509 reader (DER): subject and subject alternative names ----------------------


@dataclass
class _CertificateInfo:
    subject: str  # RFC 2253, as OpenSSL's X509_NAME_print_ex(XN_FLAG_RFC2253) prints it
    common_name: str
    alt_names: list[tuple[str, str]]  # ("dns" | "ip" | "uri" | "email", value), in order


_OID_SAN = bytes.fromhex("551d11")
_OID_CN = bytes.fromhex("550403")
# Attribute types OpenSSL knows, by OID contents, with the short names it prints.
_SHORT_NAMES = {
    bytes.fromhex("5504" + code): name
    for code, name in {
        "03": "CN",
        "04": "SN",
        "05": "serialNumber",
        "06": "C",
        "07": "L",
        "08": "ST",
        "09": "street",
        "0a": "O",
        "0b": "OU",
        "0c": "title",
        "0d": "description",
        "0f": "businessCategory",
        "11": "postalCode",
        "29": "name",
        "2a": "GN",
        "2b": "initials",
        "2c": "generationQualifier",
        "2e": "dnQualifier",
        "41": "pseudonym",
    }.items()
} | {
    bytes.fromhex("2a864886f70d010901"): "emailAddress",
    bytes.fromhex("0992268993f22c640119"): "DC",
    bytes.fromhex("0992268993f22c640101"): "UID",
}
_STRING_CODECS = {
    0x0C: "utf-8",
    0x13: "ascii",
    0x16: "ascii",
    0x12: "ascii",
    0x1A: "ascii",
    0x14: "latin-1",
    0x1E: "utf-16-be",
    0x1C: "utf-32-be",
}
_RFC2253_SPECIAL = frozenset(b',+"\\<>;')


def _element(data: bytes, pos: int) -> tuple[int, int, int]:
    """``(tag, start, end)`` of the DER element at ``pos`` (its contents are data[start:end])."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, length = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not used in certificates")
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER element")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    pos = start
    while pos < end:
        tag, child_start, child_end = _element(data, pos)
        yield tag, child_start, child_end
        pos = child_end


def _parse_certificate(der: bytes) -> _CertificateInfo:
    """Subject and alternative names of a DER certificate; ValueError if it is malformed."""
    try:
        return _parse_certificate_fields(der)
    except (IndexError, StopIteration, UnicodeError) as exc:
        raise ValueError(f"malformed certificate: {exc!r}") from None


def _parse_certificate_fields(der: bytes) -> _CertificateInfo:
    _, cert_start, cert_end = _element(der, 0)
    _, tbs_start, tbs_end = next(_children(der, cert_start, cert_end))
    fields = list(_children(der, tbs_start, tbs_end))
    if fields and fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    if len(fields) < 6:
        raise ValueError("not an X.509 certificate")
    subject_start, subject_end = fields[4][1], fields[4][2]
    subject, common_name = _parse_name(der, subject_start, subject_end)
    alt_names: list[tuple[str, str]] = []
    for tag, start, _ in fields[6:]:
        if tag == 0xA3:  # [3] extensions
            _, seq_start, seq_end = _element(der, start)
            for _, ext_start, ext_end in _children(der, seq_start, seq_end):
                parts = list(_children(der, ext_start, ext_end))
                if der[parts[0][1] : parts[0][2]] == _OID_SAN:
                    _, value_start, value_end = parts[-1]
                    alt_names = _parse_alt_names(der[value_start:value_end])
    return _CertificateInfo(subject, common_name, alt_names)


def _parse_name(der: bytes, start: int, end: int) -> tuple[str, str]:
    """(RFC 2253 text, first CN) of an X.501 Name."""
    entries: list[tuple[int, str]] = []  # (RDN index, "type=value")
    common_name: str | None = None
    for rdn_index, (_, set_start, set_end) in enumerate(_children(der, start, end)):
        for _, ava_start, ava_end in _children(der, set_start, set_end):
            (_, oid_start, oid_end), value = list(_children(der, ava_start, ava_end))[:2]
            oid = der[oid_start:oid_end]
            tag, value_start, value_end = value
            short = _SHORT_NAMES.get(oid)
            codec = _STRING_CODECS.get(tag)
            if short is None or codec is None:
                text = "#" + _raw_element(der, value).hex().upper()
                entries.append((rdn_index, f"{short or _oid_text(oid)}={text}"))
                continue
            decoded = der[value_start:value_end].decode(codec, "replace")
            if oid == _OID_CN and common_name is None:
                common_name = decoded
            entries.append((rdn_index, f"{short}={_escape_rfc2253(decoded)}"))
    parts: list[str] = []
    previous: int | None = None
    for rdn_index, text in reversed(entries):
        if previous is not None:
            parts.append("+" if rdn_index == previous else ",")
        parts.append(text)
        previous = rdn_index
    return "".join(parts), common_name or ""


def _raw_element(der: bytes, element: tuple[int, int, int]) -> bytes:
    """The whole encoding (tag, length and contents) of a parsed element."""
    _, start, end = element
    length = end - start
    header = 2 if length < 0x80 else 2 + (length.bit_length() + 7) // 8
    return der[start - header : end]


def _escape_rfc2253(value: str) -> str:
    out = []
    raw = value.encode("utf-8")
    last = len(raw) - 1
    for index, byte in enumerate(raw):
        if byte < 0x20 or byte >= 0x7F:
            out.append(f"\\{byte:02X}")
        elif (
            byte in _RFC2253_SPECIAL
            or (index == 0 and byte in b"# ")
            or (index == last and byte == 0x20)
        ):
            out.append("\\" + chr(byte))
        else:
            out.append(chr(byte))
    return "".join(out)


def _oid_text(oid: bytes) -> str:
    arcs: list[int] = []
    value = 0
    for byte in oid:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        return "?"
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _parse_alt_names(value: bytes) -> list[tuple[str, str]]:
    _, start, end = _element(value, 0)
    names: list[tuple[str, str]] = []
    for tag, item_start, item_end in _children(value, start, end):
        content = value[item_start:item_end]
        if tag == 0x82:
            names.append(("dns", content.decode("ascii", "replace")))
        elif tag == 0x87 and len(content) in (4, 16):
            names.append(("ip", str(ipaddress.ip_address(content))))
        elif tag == 0x86:
            names.append(("uri", content.decode("ascii", "replace")))
        elif tag == 0x81:
            names.append(("email", content.decode("ascii", "replace")))
    return names


__all__ = [
    "KeyCertPairs",
    "ServerCredentials",
    "auth_context",
    "check_alpn",
    "peer_identities",
    "peer_identity_key",
    "require_server_credentials",
]
