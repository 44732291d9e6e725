"""Floods that make the server work without making calls (docs/SECURITY.md).

Each attack comes from a raw HTTP/2 client on its own connection, which must end with GOAWAY
ENHANCE_YOUR_CALM; meanwhile a grpcio client on another connection keeps calling the same
server, and every one of its calls must succeed.  Budgets are set low and refill slowly, so
the attacks are short and their outcome does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any

import grpc
import h2.settings
import hpack
import pytest

from fastinject.connection import Connection
from hostile.conftest import MIN_CALLS, Legitimate
from protocol.probe_service import StartServer
from protocol.wire import (
    CANCEL,
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    HEADERS,
    MAX_STREAM_ID,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2Client,
    OpenWire,
    raw_frame,
    request_headers,
)
from serving import TIMEOUT, method

ATTACK_FRAMES = 1000
"""Frames (or reset streams) each attack sends: ten times its budget."""
BUDGET = {
    "stream_reset_burst": 100,
    "stream_reset_rate": 1.0,
    "useless_frame_burst": 100,
    "useless_frame_rate": 1.0,
}
"""Server settings of these tests: a budget of 100 refilled at 1 per second."""

END_HEADERS = 0x4
RAPID_RESETS = 1200
"""Streams opened and reset in one write: more than the default budget of 1000."""

StartLegitimate = Callable[[str], "asyncio.Future[Legitimate]"]


def target(port: int) -> str:
    """The grpcio target of a loopback port."""
    return f"127.0.0.1:{port}"


async def test_rapid_reset_gets_enhance_your_calm(
    start_server: StartServer, open_wire: OpenWire, legitimate: StartLegitimate
) -> None:
    """HEADERS then RST_STREAM, over and over (CVE-2023-44487): GOAWAY too_many_resets, closed.

    The GOAWAY names a stream well before the last one sent: the server stopped reading the
    attack once the budget ran out.
    """
    served = await start_server(**BUDGET)
    client = await legitimate(target(served.port))
    wire = await open_wire(served.port)
    for _ in range(ATTACK_FRAMES):
        wire.client.reset(wire.client.start_call(end=False))
    await wire.wait_for(lambda: bool(wire.client.goaways), "GOAWAY")
    goaway = wire.client.goaways[-1]
    assert (goaway.error_code, goaway.debug) == (ENHANCE_YOUR_CALM, b"too_many_resets")
    assert goaway.last_stream_id < 2 * ATTACK_FRAMES - 1
    await wire.wait_closed()
    assert await client.finish() >= MIN_CALLS


async def test_streams_reset_in_the_same_read_start_no_call(
    start_server: StartServer,
    legitimate: StartLegitimate,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The whole attack in one write, before the server's SETTINGS: no call for most streams.

    A stream whose RST_STREAM is handled with its HEADERS (the same read and turn) never
    becomes a call (no task is made for it); only pairs that a turn's frame budget splits
    do.  The connection still ends with GOAWAY too_many_resets, and nothing is logged.
    """
    started = 0
    start_call = Connection._start_call

    def counting(self: Connection, stream_id: int, head: Any) -> None:
        nonlocal started
        started += 1
        start_call(self, stream_id, head)

    monkeypatch.setattr(Connection, "_start_call", counting)
    served = await start_server()  # the default budget: 1000 resets at once
    client = await legitimate(target(served.port))
    blocks = hpack.Encoder()
    attack = [H2Client().data_to_send()]
    for stream_id in range(1, 2 * RAPID_RESETS, 2):
        attack.append(raw_frame(HEADERS, END_HEADERS, stream_id, blocks.encode(request_headers())))
        attack.append(raw_frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"".join(attack))
    received = H2Client()
    try:
        async with asyncio.timeout(TIMEOUT):
            while data := await reader.read(65536):
                received.receive(data)
    except ConnectionError:
        pass
    writer.close()
    assert [(g.error_code, g.debug) for g in received.goaways] == [
        (ENHANCE_YOUR_CALM, b"too_many_resets")
    ]
    assert started < RAPID_RESETS // 10
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert await client.finish() >= MIN_CALLS


async def test_rejected_requests_count_as_reset_streams(
    start_server: StartServer, open_wire: OpenWire, legitimate: StartLegitimate
) -> None:
    """Streams opened without a valid request (here: not gRPC) spend the same reset budget."""
    served = await start_server(**BUDGET)
    client = await legitimate(target(served.port))
    wire = await open_wire(served.port)
    not_grpc = [*request_headers()[:4], (b"content-type", b"text/plain")]
    for _ in range(ATTACK_FRAMES):
        wire.client.start_call(headers=not_grpc)
    await wire.wait_for(lambda: bool(wire.client.goaways), "GOAWAY")
    goaway = wire.client.goaways[-1]
    assert (goaway.error_code, goaway.debug) == (ENHANCE_YOUR_CALM, b"too_many_resets")
    await wire.wait_closed()
    assert await client.finish() >= MIN_CALLS


async def test_streams_refused_past_the_limit_count_as_reset_streams(
    start_server: StartServer, open_wire: OpenWire, legitimate: StartLegitimate
) -> None:
    """New streams past max_concurrent_streams, refused one by one, spend the reset budget."""
    served = await start_server(max_concurrent_streams=2, **BUDGET)
    client = await legitimate(target(served.port))
    wire = await open_wire(served.port)
    # Our h2 client would respect the limit: make it forget it.
    remote = wire.client.h2.remote_settings
    remote[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAM_ID
    remote.acknowledge()
    for _ in range(ATTACK_FRAMES):  # the first two stay open, the rest are refused
        wire.client.start_call(end=False)
    await wire.wait_for(lambda: bool(wire.client.goaways), "GOAWAY")
    goaway = wire.client.goaways[-1]
    assert (goaway.error_code, goaway.debug) == (ENHANCE_YOUR_CALM, b"too_many_resets")
    await wire.wait_closed()
    assert await client.finish() >= MIN_CALLS


def _open_stream(client: H2Client) -> int:
    return client.start_call(end=False)


def _settings(client: H2Client) -> bytes:
    return raw_frame(SETTINGS, 0, 0, b"")


def _priority(client: H2Client) -> bytes:
    return raw_frame(PRIORITY, 0, _open_stream(client), struct.pack(">IB", 0, 15))


def _unknown_type(client: H2Client) -> bytes:
    return raw_frame(0xBB, 0, 0, b"extension")


def _window_update(client: H2Client) -> bytes:
    return raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))


def _empty_data(client: H2Client) -> bytes:
    return raw_frame(DATA, 0, _open_stream(client), b"")


USELESS_FRAMES = {
    "SETTINGS": _settings,
    "PRIORITY": _priority,
    "unknown frame type": _unknown_type,
    "WINDOW_UPDATE without DATA sent": _window_update,
    "empty DATA": _empty_data,
}


@pytest.mark.parametrize("make_frame", USELESS_FRAMES.values(), ids=USELESS_FRAMES.keys())
async def test_flood_of_useless_frames_gets_enhance_your_calm(
    start_server: StartServer,
    open_wire: OpenWire,
    legitimate: StartLegitimate,
    make_frame: Callable[[H2Client], bytes],
) -> None:
    """Frames that carry no call, over and over: GOAWAY too_many_useless_frames, closed."""
    served = await start_server(**BUDGET)
    client = await legitimate(target(served.port))
    wire = await open_wire(served.port)
    frame = make_frame(wire.client)  # a stream it opens is opened once, then flooded
    for _ in range(ATTACK_FRAMES):
        wire.client.send_raw(frame)
    await wire.wait_for(lambda: bool(wire.client.goaways), "GOAWAY")
    goaway = wire.client.goaways[-1]
    assert (goaway.error_code, goaway.debug) == (ENHANCE_YOUR_CALM, b"too_many_useless_frames")
    await wire.wait_closed()
    assert await client.finish() >= MIN_CALLS


async def test_header_block_without_end_gets_enhance_your_calm(
    start_server: StartServer, open_wire: OpenWire, legitimate: StartLegitimate
) -> None:
    """HEADERS followed by empty CONTINUATION frames that never end the block."""
    served = await start_server(useless_frame_burst=10, useless_frame_rate=1.0)
    client = await legitimate(target(served.port))
    wire = await open_wire(served.port)
    block = hpack.Encoder().encode(request_headers())
    wire.client.send_raw(raw_frame(HEADERS, 0, 1, block))  # no END_HEADERS
    for _ in range(40):  # fewer than h2's own limit of 64 CONTINUATION frames
        wire.client.send_raw(raw_frame(CONTINUATION, 0, 1, b""))
    await wire.wait_for(lambda: bool(wire.client.goaways), "GOAWAY")
    goaway = wire.client.goaways[-1]
    assert (goaway.error_code, goaway.debug) == (ENHANCE_YOUR_CALM, b"too_many_useless_frames")
    await wire.wait_closed()
    assert await client.finish() >= MIN_CALLS


async def test_header_block_growing_without_end_gets_enhance_your_calm(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """CONTINUATION frames adding bytes to a block past 4 x max_header_list_size: closed."""
    served = await start_server(max_header_list_size=1024)
    wire = await open_wire(served.port)
    block = hpack.Encoder().encode(request_headers())
    wire.client.send_raw(raw_frame(HEADERS, 0, 1, block))
    for _ in range(10):
        wire.client.send_raw(raw_frame(CONTINUATION, 0, 1, b"\0" * 1000))
    await wire.wait_for(lambda: bool(wire.client.goaways), "GOAWAY")
    goaway = wire.client.goaways[-1]
    assert (goaway.error_code, goaway.debug) == (ENHANCE_YOUR_CALM, b"header_block_too_large")
    await wire.wait_closed()


async def test_grpcio_client_spends_no_budget(start_server: StartServer) -> None:
    """The frames of a grpcio client never come near the budgets, even tiny ones.

    Unary calls many at a time, a long server stream (its DATA makes the client send
    WINDOW_UPDATE frames), a client stream, and calls that end with an error status.
    """
    served = await start_server(
        stream_reset_burst=2, stream_reset_rate=0.001,
        useless_frame_burst=20, useless_frame_rate=0.001,
    )
    async with grpc.aio.insecure_channel(target(served.port)) as channel:
        unary = method(channel, "Unary")
        for round_ in range(5):
            requests = [b"%d-%d" % (round_, index) for index in range(100)]
            answers = await asyncio.gather(*(unary(r, timeout=TIMEOUT) for r in requests))
            assert answers == requests
        stream = method(channel, "ServerStream", "unary_stream")(b"5000", timeout=TIMEOUT)
        assert len([message async for message in stream]) == 5000
        client_stream = method(channel, "ClientStream", "stream_unary")
        assert await client_stream(iter([b"x" * 100_000] * 20), timeout=TIMEOUT)
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError):
                await method(channel, "Fail")(b"", timeout=TIMEOUT)
        assert await unary(b"still here", timeout=TIMEOUT) == b"still here"
