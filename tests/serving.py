"""Helpers for tests that serve test.Echo and call it with grpcio."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
from echo_service import SERVICE, Recorder, handlers

import fastinject


@dataclasses.dataclass
class Served:
    """A started server with the test.Echo service and the port it listens on."""

    server: fastinject.Server
    port: int
    recorder: Recorder

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def echo_server(recorder: Recorder, **settings: Any) -> fastinject.Server:
    """A server (not started, no port) serving test.Echo."""
    server = fastinject.Server(**settings)
    server.add_registered_method_handlers(SERVICE, handlers(recorder))
    return server


def method(channel: grpc.aio.Channel, name: str, kind: str = "unary_unary") -> Any:
    """A raw-bytes multi-callable for ``/test.Echo/<name>``."""
    return getattr(channel, kind)(f"/{SERVICE}/{name}")
