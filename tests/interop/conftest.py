"""Fixtures of the interop tests: the servers under test and grpcio channels to them.

Every case runs against four targets:

* ``grpcio``: the interop servicer hosted in-process by a ``grpc.aio`` server.  This is the
  reference: it proves the servicer itself is right, independently of fastinject's server.
* ``plaintext``, ``tls``, ``mtls``: ``python -m fastinject.interop.server`` in a subprocess
  (one per mode, shared by the session), reached over a real socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from fastinject.interop import test_pb2_grpc
from fastinject.interop.servicer import TestServiceServicer, add_test_service
from interop.targets import (
    ALL_TARGETS,
    ServerProcess,
    StartServer,
    Target,
    TlsFiles,
    server_args,
)
from tls_material import tls_material


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """The shared test CA and server certificate, written to PEM files."""
    paths = tls_material().write(tmp_path_factory.mktemp("interop-tls"))
    return TlsFiles(
        ca_cert=paths["ca_pem"],
        server_cert=paths["server_cert_pem"],
        server_key=paths["server_key_pem"],
    )


@pytest.fixture
def start_server(tls_files: TlsFiles, tmp_path: Path) -> Iterator[StartServer]:
    """A function ``start_server(mode)`` that starts a private server subprocess."""
    started: list[ServerProcess] = []

    def start(mode: str) -> ServerProcess:
        process = ServerProcess(server_args(mode, tls_files), tmp_path / f"{mode}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="session")
def shared_servers(
    tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """Server subprocesses shared by the session, started on first use, keyed by mode."""
    servers: dict[str, ServerProcess] = {}
    yield servers
    for process in servers.values():
        process.kill()


def _shared_server(
    mode: str,
    servers: dict[str, ServerProcess],
    files: TlsFiles,
    factory: pytest.TempPathFactory,
) -> ServerProcess:
    process = servers.get(mode)
    if process is None or process.process.poll() is not None:
        log = factory.mktemp(f"interop-{mode}") / "server.log"
        process = servers[mode] = ServerProcess(server_args(mode, files), log)
    return process


@pytest.fixture(params=ALL_TARGETS)
async def target(
    request: pytest.FixtureRequest,
    shared_servers: dict[str, ServerProcess],
    tls_files: TlsFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Target]:
    """The server under test: the in-process grpcio reference or a fastinject subprocess."""
    name: str = request.param
    if name == "grpcio":
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])
        add_test_service(TestServiceServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        yield Target(name, port)
        await server.stop(None)
        return
    process = _shared_server(name, shared_servers, tls_files, tmp_path_factory)
    material = tls_material()
    yield Target(
        name,
        process.port,
        ca_cert=None if name.startswith("plaintext") else material.ca_pem,
        client=material.client_pair if name.startswith("mtls") else None,
    )


@pytest.fixture
async def channel(target: Target) -> AsyncIterator[grpc.aio.Channel]:
    """A grpcio channel to ``target``."""
    async with target.channel() as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> test_pb2_grpc.TestServiceStub:
    """A ``TestService`` stub on ``channel``."""
    return test_pb2_grpc.TestServiceStub(channel)
