"""The interop server's command line behaviour: TLS modes, shutdown, and argument errors."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from fastinject.interop import test_pb2_grpc
from fastinject.interop.empty_pb2 import Empty
from interop.targets import StartServer, Target, TlsFiles, subprocess_env


@pytest.mark.parametrize("target", ["mtls", "mtls-inject"], indirect=True)
async def test_mtls_refuses_client_without_certificate(target: Target) -> None:
    """With --client_ca, a client presenting no certificate cannot make calls."""
    async with target.channel(with_client_cert=False) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await test_pb2_grpc.TestServiceStub(channel).EmptyCall(Empty())
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("mode", ["plaintext", "plaintext-inject"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_server_with_status_0(
    start_server: StartServer, signum: int, mode: str
) -> None:
    """SIGTERM or SIGINT stops a server that has served calls; it exits 0 having logged nothing."""
    server = start_server(mode)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = test_pb2_grpc.TestServiceStub(channel)
        for _ in range(3):
            assert isinstance(await stub.EmptyCall(Empty()), Empty)
    assert server.signal(signum) == 0
    assert server.stderr() == ""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the interop server with ``args``, expecting it to exit at once."""
    return subprocess.run(
        [sys.executable, "-m", "fastinject.interop.server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=subprocess_env(),
    )


def test_unknown_transport_is_rejected() -> None:
    """A --transport other than listen or inject is a usage error naming the choices."""
    result = run_cli("--port", "0", "--transport", "carrier-pigeon")
    assert result.returncode == 2
    assert "listen" in result.stderr
    assert "inject" in result.stderr


def test_tls_needs_certificate_and_key(tls_files: TlsFiles) -> None:
    """--use_tls without --key is a usage error naming the missing options."""
    result = run_cli("--port", "0", "--use_tls", "--cert", str(tls_files.server_cert))
    assert result.returncode == 2
    assert "--use_tls needs --cert and --key" in result.stderr


def test_certificate_options_need_tls(tls_files: TlsFiles) -> None:
    """--cert/--key without --use_tls (or with --use_tls=false) is a usage error."""
    cert, key = str(tls_files.server_cert), str(tls_files.server_key)
    for extra in ([], ["--use_tls=false"]):
        result = run_cli("--port", "0", "--cert", cert, "--key", key, *extra)
        assert result.returncode == 2
        assert "need --use_tls" in result.stderr


def test_unreadable_certificate_file_is_reported(tmp_path: Path) -> None:
    """A certificate path that cannot be read is a usage error naming the path."""
    missing = tmp_path / "missing.pem"
    result = run_cli("--port", "0", "--use_tls", "--cert", str(missing), "--key", str(missing))
    assert result.returncode == 2
    assert f"cannot read {str(missing)!r}" in result.stderr


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_bad_port_is_reported(port: str) -> None:
    """A port outside 0..65535, or not a number, is a usage error."""
    result = run_cli("--port", port)
    assert result.returncode == 2
    assert "--port" in result.stderr
