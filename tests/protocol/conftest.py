"""Fixtures for protocol tests: servers with test.Echo and test.Probe, raw h2 connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from echo_service import Recorder
from protocol import probe_service
from protocol.probe_service import StartServer
from protocol.wire import OpenWire, Wire
from serving import Served, echo_server


@pytest.fixture
def probe() -> probe_service.Probe:
    """The state of this test's test.Probe handlers."""
    return probe_service.Probe()


@pytest.fixture
async def start_server(
    recorder: Recorder, probe: probe_service.Probe
) -> AsyncIterator[StartServer]:
    """Start a server on a loopback port with the given settings; stopped at teardown."""
    servers: list[Served] = []

    async def start(**settings: Any) -> Served:
        server = echo_server(recorder, **settings)
        server.add_registered_method_handlers(probe_service.SERVICE, probe_service.handlers(probe))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        served = Served(server, port, recorder)
        servers.append(served)
        return served

    yield start
    for served in servers:
        await served.server.stop(None)


@pytest.fixture
async def open_wire() -> AsyncIterator[OpenWire]:
    """Open raw h2 connections to a port; all are dropped at teardown."""
    wires: list[Wire] = []

    async def connect(port: int, **options: Any) -> Wire:
        wire = await Wire.open(port, **options)
        wires.append(wire)
        return wire

    yield connect
    for wire in wires:
        wire.close()


@pytest.fixture
async def wire(start_server: StartServer, open_wire: OpenWire) -> Wire:
    """A raw h2 connection to a server with default settings."""
    served = await start_server()
    return await open_wire(served.port)
