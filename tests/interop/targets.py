"""The servers the interop tests run against, and how to start and reach them."""

from __future__ import annotations

import os
import select
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

import fastinject.interop
from tls_material import tls_material

FASTINJECT_TARGETS = (
    "plaintext", "tls", "mtls", "plaintext-inject", "tls-inject", "mtls-inject",
    # uvloop (in the test extra) exists everywhere but Windows.
    *(() if sys.platform == "win32" else ("plaintext-uvloop", "mtls-inject-uvloop")),
)
"""The subprocess targets, served by fastinject: on its own port, or (``-inject``) through a
ConnectionInjector fed by the interop server's own listener (``--transport inject``); on the
asyncio event loop, or (``-uvloop``) on uvloop."""

ALL_TARGETS = ("grpcio", *FASTINJECT_TARGETS)
"""Every target: the grpcio reference and the fastinject subprocesses."""

STARTUP_TIMEOUT_SECONDS = 60.0
"""How long a server subprocess may take to print ``listening on PORT`` before we give up."""

_SRC_DIR = Path(fastinject.interop.__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    """A running interop server and how to reach it."""

    name: str
    port: int
    ca_cert: bytes | None = None
    client: tuple[bytes, bytes] | None = None
    """``(key_pem, cert_pem)`` the client presents on mTLS targets."""

    def channel(self, *, with_client_cert: bool = True) -> grpc.aio.Channel:
        """A new grpcio asyncio channel to the server (with the client certificate on mTLS)."""
        address = f"127.0.0.1:{self.port}"
        if self.ca_cert is None:
            return grpc.aio.insecure_channel(address)
        client = self.client if with_client_cert else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert,
            private_key=client[0] if client else None,
            certificate_chain=client[1] if client else None,
        )
        return grpc.aio.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context for raw connections (``None`` for plaintext)."""
        if self.ca_cert is None:
            return None
        return tls_material().client_context(self.client, cadata=self.ca_cert)


def subprocess_env() -> dict[str, str]:
    """The environment for a server subprocess: ours, with fastinject's sources importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SRC_DIR), env.get("PYTHONPATH")) if p)
    return env


class ServerProcess:
    """``python -m fastinject.interop.server`` running in a subprocess."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fastinject.interop.server", *args],
                stdout=subprocess.PIPE,
                stderr=log,
                env=subprocess_env(),
            )
        try:
            self.port = self._wait_until_listening()
        except BaseException:
            self.kill()
            raise

    def _wait_until_listening(self) -> int:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"interop server did not start: {self.stderr()}")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if not readable:
                continue
            line = stdout.readline().decode("utf-8", "replace").strip()
            if not line:
                code = self.process.wait()
                raise RuntimeError(f"interop server exited with {code}: {self.stderr()}")
            if line.startswith("listening on "):
                return int(line.removeprefix("listening on "))
            raise RuntimeError(f"unexpected interop server output {line!r}: {self.stderr()}")

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        return self.log_path.read_text("utf-8", "replace")

    def signal(self, signum: int) -> int:
        """Send ``signum`` and return the exit status once the process has ended."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STARTUP_TIMEOUT_SECONDS)
        finally:
            self.kill()

    def kill(self) -> None:
        """Kill the process if it still runs, and release its pipes."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files handed to the server on its command line."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def server_args(mode: str, files: TlsFiles) -> list[str]:
    """Command line arguments of the interop server for ``mode`` (a FASTINJECT_TARGETS name)."""
    mode, *variants = mode.split("-")
    args = ["--port", "0", "--loop", "uvloop" if "uvloop" in variants else "asyncio"]
    if "inject" in variants:
        args += ["--transport", "inject"]
    if mode in ("tls", "mtls"):
        # Both spellings interop runners use: "--use_tls=true" and a bare "--use_tls".
        use_tls = "--use_tls=true" if mode == "tls" else "--use_tls"
        args += [use_tls, "--cert", str(files.server_cert), "--key", str(files.server_key)]
    if mode == "mtls":
        args += ["--client_ca", str(files.ca_cert)]
    return args


StartServer = Callable[[str], ServerProcess]
"""The ``start_server`` fixture: starts a private server subprocess in the given mode."""
