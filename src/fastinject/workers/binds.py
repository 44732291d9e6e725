"""What the supervisor listens on: addresses and the credentials their connections get."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .messages import CredentialsSpec

__all__ = ["Bind", "TlsFiles", "load_credentials"]


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS port: the server's certificate chain and key, optionally a client CA.

    With ``client_ca`` the port is mutual TLS: a client without a certificate that CA signed
    is refused.
    """

    certfile: str | Path
    keyfile: str | Path
    client_ca: str | Path | None = None

    def load(self) -> CredentialsSpec:
        """Read the files now (each reload reads them again: a way to rotate certificates).

        Raises :class:`OSError` naming the file that cannot be read.
        """
        return CredentialsSpec(
            key_pem=_read(self.keyfile),
            cert_pem=_read(self.certfile),
            client_ca_pem=None if self.client_ca is None else _read(self.client_ca),
        )


@dataclasses.dataclass(frozen=True)
class Bind:
    """One address to listen on (``host:port``, ``[v6]:port``, ``unix:path``) and its TLS.

    ``tls=None`` serves plaintext HTTP/2.
    """

    address: str
    tls: TlsFiles | None = None


def load_credentials(tls: TlsFiles | None) -> CredentialsSpec:
    """The credentials a worker builds from ``tls`` (plaintext for ``None``), files read now."""
    return CredentialsSpec() if tls is None else tls.load()


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read {str(path)!r}: {exc.strerror}") from None
