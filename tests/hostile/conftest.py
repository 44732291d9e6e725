"""Fixtures for hostile-peer tests: a server, raw HTTP/2 attackers, a legitimate grpcio client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from protocol.conftest import open_wire, probe, start_server
from serving import TIMEOUT, method

__all__ = ["Legitimate", "legitimate", "open_wire", "probe", "start_server"]

MIN_CALLS = 20
"""Calls the legitimate client completes in every test, at least one of them during the attack."""
MAX_CALLS = 2000
"""Bounds the legitimate client's loop should an attack never end."""


class Legitimate:
    """A grpcio client calling test.Echo/Unary over one channel, one call after another."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.calls = 0
        self.connected = asyncio.Event()
        self.attack_over = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            unary = method(channel, "Unary")
            while self.calls < MIN_CALLS or (
                not self.attack_over.is_set() and self.calls < MAX_CALLS
            ):
                request = b"legitimate-%d" % self.calls
                assert await unary(request, timeout=TIMEOUT) == request
                self.calls += 1
                self.connected.set()

    async def start(self) -> None:
        """Start calling; return once the first call succeeded."""
        self._task = asyncio.create_task(self._run())
        waiting = asyncio.create_task(self.connected.wait())
        await asyncio.wait([self._task, waiting], timeout=TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if self._task.done():
            self._task.result()  # its failure, if it failed
        assert self.connected.is_set(), "the legitimate client's first call did not complete"

    async def finish(self) -> int:
        """The attack is over: let the client make its remaining calls; how many it made.

        Every call must have succeeded (a failed call raises here).
        """
        self.attack_over.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, TIMEOUT * 3)
        return self.calls


@pytest.fixture
async def legitimate() -> AsyncIterator[Callable[[str], Any]]:
    """Start a :class:`Legitimate` client on a target; its task is stopped at teardown."""
    clients: list[Legitimate] = []

    async def start(target: str) -> Legitimate:
        client = Legitimate(target)
        clients.append(client)
        await client.start()
        return client

    yield start
    for client in clients:
        if client._task is not None and not client._task.done():
            client._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await client._task
