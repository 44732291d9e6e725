"""A call's trailers never overtake its DATA, even when the client shrinks its window.

RFC 9113 6.9.2 lets a client lower SETTINGS_INITIAL_WINDOW_SIZE at any time (grpc core does,
probing the bandwidth-delay product), which can leave response DATA queued behind a window
that is now shut.  If the handler ends meanwhile, its trailers must wait for that DATA: sent
at once, they would end the stream with ``grpc-status: 0`` and the message cut off.  A graceful
close waits for them too, within its grace: the connection is not closed while a call's DATA
or trailers wait for the client's window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable
from typing import Any

import h2.settings

import fastinject
from fastinject import StatusCode
from fastinject.connection import Connection
from fastinject.framing import frame_message
from fastinject.handlers import HandlerRegistry
from fastinject.protocol import CallStarted, ServerProtocol
from protocol.test_batching import RecordingTransport, connection, pool
from protocol.wire import H2Client, connected, exchange

__all__ = ["pool"]  # a fixture

BODY = frame_message(b"y" * 1000, False)


def call_with_data_held_back() -> tuple[H2Client, ServerProtocol, int]:
    """A call whose response message is queued, then held back by a window shrunk to 0."""
    client, server = connected()
    stream_id = client.start_call(messages=[b"x"])
    assert any(isinstance(e, CallStarted) for e in exchange(client, server))
    server.send_headers(stream_id, [], None)
    server.send_data(stream_id, BODY)  # fits the window: queued for the next flush
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    server.receive(client.data_to_send())
    server.send_trailers(stream_id, StatusCode.OK, None, [])
    client.receive(server.data_to_send())
    return client, server, stream_id


def test_trailers_wait_for_data_held_back_by_a_shrunk_window() -> None:
    """Nothing ends the stream while its message waits; window given, message then status."""
    client, server, stream_id = call_with_data_held_back()
    response = client.response(stream_id)
    assert not response.done
    assert client.data_received(stream_id) == 0

    client.h2.increment_flow_control_window(len(BODY), stream_id)
    exchange(client, server)
    assert client.data_received(stream_id) == len(BODY)
    assert response.done
    assert response.status_map[b"grpc-status"] == b"0"


def test_a_reset_drops_the_waiting_trailers() -> None:
    """A client that resets the stream while its trailers wait gets nothing more on it."""
    client, server, stream_id = call_with_data_held_back()
    client.h2.reset_stream(stream_id)
    exchange(client, server)
    frames_before = len(client.frames_on(stream_id))

    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    exchange(client, server)
    assert len(client.frames_on(stream_id)) == frames_before
    assert not server._final_headers


def shrink_window(client: H2Client, size: int) -> None:
    """The client sets SETTINGS_INITIAL_WINDOW_SIZE to ``size``."""
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size})


async def reply_held_back(
    pool: concurrent.futures.Executor,
) -> tuple[Connection, RecordingTransport, H2Client, Callable[[], None], int]:
    """A connection whose one call ended while its reply waits behind a window shrunk to 0.

    Returns it, its transport, the client, the client's delivery and the call's stream.

    The handler writes its reply and, before the write leaves, the connection reads the
    client's SETTINGS shrinking the window (as in one loop turn); then the handler returns.
    """
    client = H2Client()
    done = asyncio.Event()
    # The connection, for the handler to feed (emptied then: rpc.py remembers the handler).
    serving: list[Connection] = []

    async def reply(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"reply"
        shrink_window(client, 0)
        serving.pop().data_received(client.data_to_send())
        done.set()

    registry = HandlerRegistry()
    registry.add_registered(
        "test.Held", {"Reply": fastinject.unary_stream_rpc_method_handler(reply)}
    )
    conn, transport = connection(pool, registry)
    serving.append(conn)
    deliver = delivery(transport, client)
    deliver()
    conn.data_received(client.data_to_send())  # preface, SETTINGS
    stream_id = client.start_call(b"/test.Held/Reply", [b"x"])
    conn.data_received(client.data_to_send())
    async with asyncio.timeout(10):
        await done.wait()
        while conn.active_calls:
            await asyncio.sleep(0)
    deliver()
    assert client.data_received(stream_id) == 0
    assert not client.response(stream_id).done
    return conn, transport, client, deliver, stream_id


def delivery(transport: RecordingTransport, client: H2Client) -> Callable[[], None]:
    """A function that gives the client what the transport got since it was last called."""
    seen = 0

    def deliver() -> None:
        nonlocal seen
        for data in transport.writes[seen:]:
            client.receive(data)
        seen = len(transport.writes)

    return deliver


async def test_a_graceful_close_waits_for_trailers_held_back_by_the_window(
    pool: concurrent.futures.Executor,
) -> None:
    """Both GOAWAYs sent, the connection stays open until the held reply and status have left.

    The client reopens its window after the final GOAWAY: the reply, then the status, arrive;
    only then does the connection close (half-close, as after any graceful close).
    """
    conn, transport, client, deliver, stream_id = await reply_held_back(pool)
    conn.close_gracefully()
    deliver()  # GOAWAY and PING; the client acknowledges the PING
    conn.data_received(client.data_to_send())
    deliver()
    assert len(client.goaways) == 2
    assert not transport.eof

    shrink_window(client, 65535)
    conn.data_received(client.data_to_send())
    deliver()
    response = client.response(stream_id)
    assert response.messages == [(False, b"reply")]
    assert response.status == StatusCode.OK.number
    assert transport.eof
    conn.connection_lost(None)


async def test_a_graceful_close_drops_held_trailers_when_the_grace_ends(
    pool: concurrent.futures.Executor,
) -> None:
    """A client that never reopens its window does not hold the close past the grace."""
    conn, transport, client, deliver, stream_id = await reply_held_back(pool)
    conn.close_gracefully()
    deliver()
    conn.data_received(client.data_to_send())
    assert not transport.eof
    conn.cancel_calls()  # the grace ran out
    assert transport.eof
    deliver()
    assert not client.response(stream_id).done
    conn.connection_lost(None)
