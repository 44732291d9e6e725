"""Helpers for tests that serve test.Echo and call it with grpcio."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

import fastinject
from echo_service import SERVICE, Recorder, handlers

TIMEOUT = 10.0
"""Bounds every wait of these helpers, so a broken server fails a test instead of hanging it."""


@dataclasses.dataclass
class Served:
    """A started server with the test.Echo service and the port it listens on."""

    server: fastinject.Server
    port: int
    recorder: Recorder

    @property
    def target(self) -> str:
        """The server's loopback address as a grpcio channel target."""
        return f"127.0.0.1:{self.port}"


Serve = Callable[..., Awaitable[Served]]
"""The ``serve`` fixture: start a test.Echo server on a loopback port with the given settings."""


def echo_server(recorder: Recorder, **settings: Any) -> fastinject.Server:
    """A server (not started, no port) serving test.Echo."""
    server = fastinject.Server(**settings)
    server.add_registered_method_handlers(SERVICE, handlers(recorder))
    return server


def method(channel: grpc.aio.Channel, name: str, kind: str = "unary_unary") -> Any:
    """A raw-bytes multi-callable for ``/test.Echo/<name>``."""
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


async def sleeping(
    channel: grpc.aio.Channel, recorder: Recorder, seconds: bytes, **call_options: Any
) -> Any:
    """Start a test.Echo/Sleep call of ``seconds``; return the running call once its handler runs.

    ``recorder.started`` is set by the first Sleep handler of a test, so a second call returns
    at once, not when its own handler starts.
    """
    call = method(channel, "Sleep")(seconds, **call_options)
    await asyncio.wait_for(recorder.started.wait(), TIMEOUT)
    return call


async def eventually(predicate: Callable[[], bool]) -> None:
    """Let the loop run until ``predicate()`` holds; TimeoutError after ``TIMEOUT``."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), TIMEOUT)
