"""Sync (thread-pool) handlers: a request iterator blocked in a pool thread wakes at call end.

A sync client-streaming handler waits for messages in a worker thread.  When the call ends
without them (the client cancels, the deadline passes, the server stops), the iterator must
raise in that thread, or the worker is lost for good and a few such calls stop every sync
handler.  The pool here is tiny, so a leak shows as a call that never runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

import fastinject
from serving import TIMEOUT, eventually

POOL = 2
"""Worker threads of the server's pool; twice as many calls are blocked, to fill its queue too."""


class Readers:
    """How many blocked readers started, and how each one's iterator ended."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = 0
        self.ended: list[str] = []

    def read_all(self, requests: Iterator[bytes], context: Any) -> bytes:
        """A sync stream-unary handler reading until the client half-closes."""
        with self.lock:
            self.started += 1
        try:
            count = sum(1 for _ in requests)
        except Exception as exc:
            with self.lock:
                self.ended.append(type(exc).__name__)
            raise
        with self.lock:
            self.ended.append("half-close")
        return str(count).encode()


def sync_unary(request: bytes, context: Any) -> bytes:
    """A sync unary handler: it needs a free pool thread to answer."""
    return b"sync:" + request


@pytest.fixture
async def pooled() -> AsyncIterator[tuple[fastinject.Server, str, Readers]]:
    """A started server whose sync handlers share a pool of :data:`POOL` threads."""
    readers = Readers()
    pool = concurrent.futures.ThreadPoolExecutor(POOL, thread_name_prefix="test-pool")
    server = fastinject.Server(migration_thread_pool=pool)
    server.add_registered_method_handlers("test.Pool", {
        "ReadAll": fastinject.stream_unary_rpc_method_handler(readers.read_all),
        "SyncUnary": fastinject.unary_unary_rpc_method_handler(sync_unary),
    })
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield server, f"127.0.0.1:{port}", readers
    await server.stop(None)
    pool.shutdown(wait=False)


async def blocked_calls(channel: grpc.aio.Channel, readers: Readers, **options: Any) -> list[Any]:
    """Start ``2 * POOL`` ReadAll calls that send one message and never half-close.

    Returns them once :data:`POOL` handlers are blocked reading (the rest wait in the queue).
    """
    calls = [channel.stream_unary("/test.Pool/ReadAll")(**options) for _ in range(2 * POOL)]
    for call in calls:
        await call.write(b"one")
    await eventually(lambda: readers.started == POOL)
    return calls


async def outcome(call: Any) -> grpc.StatusCode:
    """The status the client saw for ``call`` (``code()`` also covers a cancelled call)."""
    return await call.code()  # type: ignore[no-any-return]


async def assert_readers_woken(readers: Readers) -> None:
    """Every handler that started reading had its request iterator raise (threads are free).

    A queued call may still reach a thread freed a moment before its own deadline passes;
    it must then be woken too.
    """
    await eventually(lambda: len(readers.ended) == readers.started >= POOL)
    assert readers.ended == ["RpcError"] * readers.started


async def assert_pool_still_serves(target: str) -> None:
    """A sync unary call still gets a pool thread."""
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await channel.unary_unary("/test.Pool/SyncUnary")(b"hi", timeout=TIMEOUT)
    assert answer == b"sync:hi"


async def test_client_cancel_wakes_blocked_sync_readers(
    pooled: tuple[fastinject.Server, str, Readers],
) -> None:
    """Cancelled client-streaming calls free their threads: a later sync call still runs."""
    _server, target, readers = pooled
    async with grpc.aio.insecure_channel(target) as channel:
        calls = await blocked_calls(channel, readers)
        for call in calls:
            call.cancel()
        assert {await outcome(call) for call in calls} == {grpc.StatusCode.CANCELLED}
    await assert_readers_woken(readers)
    await assert_pool_still_serves(target)
    assert readers.started == POOL  # the queued calls were dropped, never run


async def test_deadline_wakes_blocked_sync_readers(
    pooled: tuple[fastinject.Server, str, Readers],
) -> None:
    """Calls past their deadline free their threads: a later sync call still runs."""
    _server, target, readers = pooled
    async with grpc.aio.insecure_channel(target) as channel:
        calls = await blocked_calls(channel, readers, timeout=3)
        outcomes = await asyncio.gather(*(outcome(call) for call in calls))
    assert set(outcomes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    await assert_readers_woken(readers)
    await assert_pool_still_serves(target)


async def test_stop_wakes_blocked_sync_readers(
    pooled: tuple[fastinject.Server, str, Readers],
) -> None:
    """stop() ends blocked sync readers (clients see UNAVAILABLE) instead of leaking them."""
    server, target, readers = pooled
    async with grpc.aio.insecure_channel(target) as channel:
        calls = await blocked_calls(channel, readers)
        await asyncio.wait_for(server.stop(0), TIMEOUT)
        outcomes = await asyncio.gather(*(outcome(call) for call in calls))
    assert set(outcomes) == {grpc.StatusCode.UNAVAILABLE}
    await assert_readers_woken(readers)
