"""TLS and mutual TLS through the workers: handshakes run in the worker processes."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from fastinject.workers.supervisor import PLATFORM_SUPPORTED
from tls_material import TlsMaterial
from workers.conftest import Supervise
from workers.supervised import channel, pid_of

pytestmark = pytest.mark.skipif(not PLATFORM_SUPPORTED, reason="the worker pool is Linux-only")


@pytest.fixture
def pem_files(tls: TlsMaterial, tmp_path: Path) -> dict[str, str]:
    """The test CA and server certificate as files."""
    return {name: str(path) for name, path in tls.write(tmp_path).items()}


def test_tls_through_workers(supervise: Supervise, tls: TlsMaterial,
                             pem_files: dict[str, str]) -> None:
    """A TLS client is served by the workers with the port's certificate."""
    supervised = supervise(
        "pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2",
        "--certfile", pem_files["server_cert_pem"], "--keyfile", pem_files["server_key_pem"],
    )
    address, workers = supervised.serving()
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
    channels = [channel(address, credentials) for _ in range(4)]
    try:
        assert {pid_of(chan) for chan in channels} == set(workers)
    finally:
        for chan in channels:
            chan.close()
    with channel(address) as plaintext, pytest.raises(grpc.RpcError) as error:
        pid_of(plaintext)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_through_workers(supervise: Supervise, tls: TlsMaterial,
                              pem_files: dict[str, str]) -> None:
    """--client-ca: clients with a certificate of that CA are served; others are refused."""
    supervised = supervise(
        "pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2",
        "--certfile", pem_files["server_cert_pem"], "--keyfile", pem_files["server_key_pem"],
        "--client-ca", pem_files["ca_pem"],
    )
    address, workers = supervised.serving()
    trusted = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.client_key_pem,
        certificate_chain=tls.client_cert_pem,
    )
    channels = [channel(address, trusted) for _ in range(4)]
    try:
        assert {pid_of(chan) for chan in channels} == set(workers)
    finally:
        for chan in channels:
            chan.close()
    anonymous = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
    stranger = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.stranger_client_key_pem,
        certificate_chain=tls.stranger_client_cert_pem,
    )
    for credentials in (anonymous, stranger):
        with channel(address, credentials) as refused, pytest.raises(grpc.RpcError) as error:
            pid_of(refused)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
