"""HTTP/2 flow control end to end: the server obeys the client's windows and paces the client.

RFC 9113 section 5.2: a sender never sends more DATA than the receiver's stream and connection
windows allow.  The server returns credit for request bytes only when the handler consumes
them, so a handler that does not read holds its client back instead of growing buffers.
"""

from __future__ import annotations

import asyncio

from h2.settings import SettingCodes

from fastinject import StatusCode
from protocol.probe_service import Probe, StartServer
from protocol.wire import WINDOW_UPDATE, OpenWire, Response, Wire, eventually, grpc_frame


async def credit_until_done(wire: Wire, stream_ids: list[int], window: int) -> None:
    """Return credit for what arrived, one batch at a time, until every stream is done.

    Checks on the way that no stream ever had more than ``window`` unacknowledged bytes.
    """
    credited = dict.fromkeys(stream_ids, 0)
    responses = [wire.client.response(s) for s in stream_ids]

    def progress() -> bool:
        return all(r.done for r in responses) or any(
            wire.client.data_received(s) > credited[s] for s in stream_ids
        )

    while not all(r.done for r in responses):
        await wire.wait_for(progress, "more DATA or the end of the calls")
        for stream_id in stream_ids:
            outstanding = wire.client.data_received(stream_id) - credited[stream_id]
            assert outstanding <= window
            if outstanding:
                wire.client.credit(stream_id, outstanding)
                credited[stream_id] += outstanding


async def test_server_never_sends_beyond_the_client_stream_window(
    start_server: StartServer, open_wire: OpenWire, probe: Probe
) -> None:
    """The server stops at the client's stream window and resumes on each WINDOW_UPDATE.

    With a 1000-byte window exactly 1000 bytes arrive while the handler waits in its write.
    """
    served = await start_server()
    wire = await open_wire(served.port, initial_window_size=1000, auto_credit=False)
    stream_id = wire.client.start_call(b"/test.Probe/Produce", [b"50:100"])  # 50 x 105 bytes
    await wire.wait_for(
        lambda: wire.client.data_received(stream_id) >= 1000, "a full window of DATA"
    )
    await wire.round_trip()  # whatever else the server had sent has arrived by now
    assert wire.client.data_received(stream_id) == 1000
    assert not wire.client.response(stream_id).done
    # The handler is blocked in its write: at most one message beyond what the window took.
    assert probe.produced <= 1000 // 105 + 1

    await credit_until_done(wire, [stream_id], 1000)
    response = wire.client.response(stream_id)
    assert response.status == StatusCode.OK.number
    assert response.messages == [(False, bytes([i]) * 100) for i in range(50)]
    assert probe.produced == 50


async def call_then_new_initial_window(
    start_server: StartServer, open_wire: OpenWire, window: int
) -> tuple[Wire, int]:
    """A call that filled its 1,000-byte window, then a new SETTINGS_INITIAL_WINDOW_SIZE.

    The call answers 50 x 105 bytes; the client's initial window becomes ``window``.
    Returns the wire and the call's stream.
    """
    served = await start_server()
    wire = await open_wire(served.port, initial_window_size=1000, auto_credit=False)
    stream_id = wire.client.start_call(b"/test.Probe/Produce", [b"50:100"])
    await wire.wait_for(
        lambda: wire.client.data_received(stream_id) >= 1000, "a full window of DATA"
    )
    wire.client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
    await wire.flush()
    return wire, stream_id


async def test_a_wider_initial_window_mid_call_lets_blocked_data_go(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """A client's SETTINGS_INITIAL_WINDOW_SIZE raised during a call widens that call's window.

    RFC 9113 section 6.9.2: the change applies to open streams at once, without WINDOW_UPDATE.
    The server checks writes against mirrors of h2's windows, so the SETTINGS change must
    reach them too; and it still sends no byte beyond the new window.
    """
    wire, stream_id = await call_then_new_initial_window(start_server, open_wire, 3000)
    await wire.wait_for(
        lambda: wire.client.data_received(stream_id) >= 3000, "the widened window of DATA"
    )
    await wire.round_trip()
    assert wire.client.data_received(stream_id) == 3000

    await credit_until_done(wire, [stream_id], 3000)
    response = wire.client.response(stream_id)
    assert response.status == StatusCode.OK.number
    assert len(response.messages) == 50


async def test_a_narrower_initial_window_mid_call_pauses_the_call(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE lowered below what a call has in flight only pauses it.

    RFC 9113 section 6.9.2: the stream window may go negative; the sender waits until
    WINDOW_UPDATE brings it above zero again, and the call completes.
    """
    wire, stream_id = await call_then_new_initial_window(start_server, open_wire, 500)
    await wire.round_trip()  # the server's window is now 500 - 1000 = -500
    wire.client.credit(stream_id, 1000)  # back to 500
    await wire.flush()
    await wire.wait_for(
        lambda: wire.client.data_received(stream_id) >= 1500, "DATA up to the new window"
    )
    await wire.round_trip()
    assert wire.client.data_received(stream_id) == 1500

    wire.client.auto_credit = True
    wire.client.credit(stream_id, 500)
    await wire.flush()
    response = await wire.finish(stream_id)
    assert response.status == StatusCode.OK.number
    assert len(response.messages) == 50


async def test_server_never_sends_beyond_the_client_connection_window(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """Streams together stop at the connection window and resume when its credit returns."""
    served = await start_server()
    wire = await open_wire(served.port, initial_window_size=1 << 20, auto_credit=False)
    streams = [
        wire.client.start_call(b"/test.Probe/Produce", [b"100:495"]) for _ in range(2)
    ]  # 2 x 50000 bytes
    await wire.wait_for(
        lambda: sum(wire.client.data_received(s) for s in streams) >= 65535,
        "a full connection window of DATA",
    )
    await wire.round_trip()
    assert sum(wire.client.data_received(s) for s in streams) == 65535

    await credit_until_done(wire, streams, 65535)
    for stream_id in streams:
        response = wire.client.response(stream_id)
        assert response.status == StatusCode.OK.number
        assert len(response.messages) == 100


async def test_credit_returns_only_as_the_handler_reads(
    start_server: StartServer, open_wire: OpenWire, probe: Probe
) -> None:
    """A request's window is replenished only as the handler reads, so the client waits for it."""
    served = await start_server(initial_stream_window_size=4096)
    wire = await open_wire(served.port)
    stream_id = wire.client.start_call(b"/test.Probe/Hold", end=False)
    await wire.flush()
    async with asyncio.timeout(10):
        await probe.started.wait()
    batch = b"".join(grpc_frame(b"m" * 95) for _ in range(30))  # 3000 bytes
    wire.client.send(stream_id, batch)
    await wire.round_trip()
    assert [u for u in wire.client.window_updates if u[0] == stream_id] == []
    assert wire.client.window(stream_id) == 4096 - 3000
    assert probe.read == []

    probe.gate.set()
    await wire.wait_for(
        lambda: wire.client.window(stream_id) >= len(batch), "credit for the messages read"
    )
    assert len(probe.read) == 30
    wire.client.send(stream_id, batch, end=True)
    response = await wire.finish(stream_id)
    assert response.messages == [(False, b"60")]


async def test_small_messages_get_credit_when_the_client_waits_for_it(
    start_server: StartServer, open_wire: OpenWire, probe: Probe
) -> None:
    """Credit of small messages taken waits for a flush made anyway, never for a stopped client.

    One message per DATA frame, sent only as the stream window allows, 25 windows' worth in
    all, reaches the handler whole.
    """
    served = await start_server(initial_stream_window_size=4096)
    wire = await open_wire(served.port)
    probe.gate.set()
    stream_id = wire.client.start_call(b"/test.Probe/Hold", end=False)
    message = grpc_frame(b"s" * 95)  # 100 bytes: a fortieth of the window
    for index in range(1000):
        await wire.wait_for(
            lambda: wire.client.window(stream_id) >= len(message), "credit for the next message"
        )
        wire.client.send(stream_id, message, end=index == 999)
        await wire.flush()
    response = await wire.finish(stream_id)
    assert response.messages == [(False, b"1000")]
    updates = [u for u in wire.client.window_updates if u[0] == stream_id]
    assert 0 < len(updates) < 1000 // 8  # in batches of half a window, not per message


async def test_request_larger_than_the_window_completes(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """A single request message five times the stream window is received and answered."""
    served = await start_server(initial_stream_window_size=4096)
    wire = await open_wire(served.port)
    payload = bytes(range(256)) * 80  # 20480 bytes
    stream_id = wire.client.start_call(b"/test.Echo/Unary", end=False)
    pending = grpc_frame(payload)
    response: Response = wire.client.response(stream_id)
    while pending:
        await wire.wait_for(
            lambda: wire.client.window(stream_id) > 0 or response.done, "send window"
        )
        assert not response.done, "the call ended before the request was sent"
        allowed = min(wire.client.window(stream_id), len(pending))
        wire.client.send(stream_id, pending[:allowed], end=allowed == len(pending))
        pending = pending[allowed:]
    await wire.finish(stream_id)
    assert response.status == StatusCode.OK.number
    assert response.messages == [(False, payload)]
    assert any(f.type == WINDOW_UPDATE and f.stream_id == stream_id for f in wire.client.frames)


async def test_data_sent_before_our_settings_arrive_is_accepted(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """A client may use the default 65535-byte window until it has seen our smaller one.

    RFC 9113 section 6.9.3: a receiver that advertises less than the default must be prepared
    for data exceeding it, sent before the peer processed the SETTINGS frame.
    """
    served = await start_server(initial_stream_window_size=4096)
    wire = await open_wire(served.port, wait_settings=False)
    payload = b"e" * 20000
    assert not wire.client.has_settings()  # so h2 lets the request use 65535 bytes of window
    response = await wire.call(b"/test.Echo/Unary", payload)
    assert response.status == StatusCode.OK.number
    assert response.messages == [(False, payload)]


async def test_reset_while_blocked_on_flow_control_cancels_the_handler(
    start_server: StartServer, open_wire: OpenWire, probe: Probe
) -> None:
    """A handler blocked on flow control is cancelled when the client resets its stream."""
    served = await start_server()
    wire = await open_wire(served.port, initial_window_size=1000, auto_credit=False)
    stream_id = wire.client.start_call(b"/test.Probe/Produce", [b"50:100"])
    await wire.wait_for(
        lambda: wire.client.data_received(stream_id) >= 1000, "a full window of DATA"
    )
    wire.client.reset(stream_id)
    await wire.flush()
    await eventually(lambda: probe.done_callbacks == 1, "the handler's done callback")
    assert probe.produced < 50
    wire.client.credit(stream_id, 1000)  # connection-level credit for the abandoned bytes
    response = await wire.call(b"/test.Echo/Unary", b"next")
    assert response.messages == [(False, b"next")]
