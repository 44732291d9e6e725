"""Fixtures for tests with ecosystem packages: serve a handful of methods, call them with grpcio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest

import fastinject

SERVICE = "compat.Service"

ServeMethods = Callable[..., Awaitable[str]]
"""The ``serve_methods`` fixture: serve ``{name: handler}`` under ``/compat.Service/``."""


@pytest.fixture
async def serve_methods() -> AsyncIterator[ServeMethods]:
    """Start servers for the given method handlers and interceptors; returns their target."""
    servers: list[fastinject.Server] = []

    async def start(
        methods: Mapping[str, fastinject.RpcMethodHandler],
        interceptors: Sequence[Any] = (),
    ) -> str:
        server = fastinject.Server(interceptors=list(interceptors))
        server.add_registered_method_handlers(SERVICE, methods)
        port = server.add_insecure_port("127.0.0.1:0")
        servers.append(server)
        await server.start()
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(None)
