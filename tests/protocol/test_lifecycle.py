"""Connection lifecycle on the wire: graceful close, resets, GOAWAY, pings, keepalive, idle, age.

A real server is driven over TCP by a raw ``h2`` client that sees every GOAWAY and PING.  Timer
settings are small so the tests are quick, but no test asserts how long anything took: waits
are bounded and only the order and content of frames are checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from echo_service import Recorder
from fastinject import StatusCode
from protocol.probe_service import Probe, StartServer
from protocol.wire import (
    ACK,
    CANCEL,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    MAX_STREAM_ID,
    NO_ERROR,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    GoAway,
    OpenWire,
    Wire,
    eventually,
    grpc_frame,
)

WireTo = Callable[..., Awaitable[Wire]]
"""The ``wire_to`` fixture: a :class:`Wire` to a new server with the given settings."""

PINGS_WITHOUT_CALLS: dict[str, Any] = {
    "max_ping_strikes": 2,
    "keepalive_permit_without_calls": True,
}
"""Server settings of the ping-interval tests: pings are allowed without calls, 2 strikes."""


@pytest.fixture
def wire_to(start_server: StartServer, open_wire: OpenWire) -> WireTo:
    """Start a server with the given settings and open a :class:`Wire` to it.

    ``auto_ack_pings`` and ``wait_settings`` configure the wire; every other keyword is a
    server setting.  Both are closed at teardown.
    """
    async def connect(
        *, auto_ack_pings: bool = True, wait_settings: bool = True, **settings: Any
    ) -> Wire:
        served = await start_server(**settings)
        return await open_wire(
            served.port, auto_ack_pings=auto_ack_pings, wait_settings=wait_settings
        )

    return connect


async def start_sleep(wire: Wire, recorder: Recorder) -> int:
    """Open a test.Echo/Sleep call of 30 s; return its stream once the handler runs."""
    stream_id = wire.client.start_call(b"/test.Echo/Sleep", [b"30"])
    await wire.flush()
    async with asyncio.timeout(10):
        await recorder.started.wait()
    return stream_id


async def assert_sleep_cancelled(recorder: Recorder) -> None:
    """The 30 s Sleep handler was cancelled and its done callback ran."""
    await eventually(lambda: recorder.done_callbacks == 1, "the done callback")
    assert recorder.cancelled == ["30"]


def goaway_then_ping(wire: Wire) -> bool:
    """Whether the server's first GOAWAY and a PING have both arrived."""
    return bool(wire.client.goaways) and bool(wire.client.pings)


async def test_stop_sends_two_goaways_around_a_ping(
    start_server: StartServer, open_wire: OpenWire
) -> None:
    """stop() sends GOAWAY(2^31-1) and PING, then after the ack a GOAWAY naming the last stream.

    A stream opened between the two is served; one opened after the second is refused.
    """
    served = await start_server()
    wire = await open_wire(served.port, auto_ack_pings=False)
    held = wire.client.start_call(b"/test.Echo/BidiReadWrite", [b"abc"], end=False)
    await wire.wait_for(
        lambda: wire.client.response(held).messages == [(False, b"cba")], "the bidi echo"
    )
    stopping = asyncio.create_task(served.server.stop(10))

    await wire.wait_for(lambda: goaway_then_ping(wire), "GOAWAY and PING")
    assert wire.client.goaways == [GoAway(MAX_STREAM_ID, NO_ERROR, b"")]
    kinds = [f.type for f in wire.client.frames if f.type in (GOAWAY, PING) and not f.flags & ACK]
    assert kinds[:2] == [GOAWAY, PING]

    # A client that opened a stream before reading the GOAWAY, then acknowledged the PING.
    between = wire.client.start_call(b"/test.Echo/Unary", [b"in between"])
    wire.client.ack_ping(wire.client.pings[0])
    await wire.wait_for(lambda: len(wire.client.goaways) == 2, "the final GOAWAY")
    assert wire.client.goaways[1] == GoAway(between, NO_ERROR, b"")
    response = await wire.finish(between)
    assert response.status == StatusCode.OK.number
    assert response.messages == [(False, b"in between")]

    refused = await wire.finish(wire.client.start_call(b"/test.Echo/Unary", [b"too late"]))
    assert refused.reset == REFUSED_STREAM
    assert refused.headers is None

    wire.client.end(held)
    held_response = await wire.finish(held)
    assert held_response.status == StatusCode.OK.number
    await wire.wait_closed()
    async with asyncio.timeout(10):
        await stopping


async def test_client_reset_cancels_the_handler(wire: Wire, recorder: Recorder) -> None:
    """A client's RST_STREAM cancels the handler and runs its done callbacks.

    Nothing more is sent on that stream, and the connection keeps serving other calls.
    """
    stream_id = await start_sleep(wire, recorder)
    wire.client.reset(stream_id, CANCEL)
    await wire.flush()
    await assert_sleep_cancelled(recorder)
    assert recorder.finished == []

    after = await wire.call(b"/test.Echo/Unary", b"after")
    assert after.messages == [(False, b"after")]
    assert wire.client.frames_on(stream_id) == []


async def test_the_server_ends_a_call_at_its_deadline_among_ended_ones(
    wire: Wire, recorder: Recorder
) -> None:
    """Past its grpc-timeout a call ends DEADLINE_EXCEEDED and its handler is cancelled.

    This client never resets the stream, so the server's own deadline does it.  Quick calls
    with a 60 s deadline came first: the connection's one deadline timer, set for them, must
    move for the shorter one, and the entries of those ended calls are dropped meanwhile.
    """
    for _ in range(70):
        quick = wire.client.start_call(messages=[b"q"], extra=[(b"grpc-timeout", b"60S")])
        assert (await wire.finish(quick)).status == StatusCode.OK.number
    stream_id = wire.client.start_call(
        b"/test.Echo/Sleep", [b"30"], extra=[(b"grpc-timeout", b"300m")]
    )
    response = await wire.finish(stream_id)
    assert response.status == StatusCode.DEADLINE_EXCEEDED.number
    await assert_sleep_cancelled(recorder)


async def test_client_goaway_lets_running_calls_finish(wire: Wire, probe: Probe) -> None:
    """A client's GOAWAY(NO_ERROR) stops only new streams: the call in flight is answered.

    RFC 9113 section 6.8; grpc core's server likewise keeps serving the client's open streams.
    """
    stream_id = wire.client.start_call(b"/test.Probe/Gate", [b"answer me"])
    wire.client.goaway(NO_ERROR, last_stream_id=0)
    await wire.flush()  # request and GOAWAY in one write: both are read before the handler runs
    async with asyncio.timeout(10):
        await probe.started.wait()
    probe.gate.set()
    response = await wire.finish(stream_id)
    assert response.status == StatusCode.OK.number
    assert response.messages == [(False, b"answer me")]


async def test_client_goaway_is_answered_by_the_final_goaway_at_once(wire: Wire) -> None:
    """A client's GOAWAY(NO_ERROR) gets the GOAWAY naming its last stream, without a PING.

    The two-phase close (GOAWAY, PING, final GOAWAY) is for streams a client opens before it
    reads our GOAWAY; a client that is leaving opens none.  With no call running, the
    connection then closes.
    """
    served = wire.client.start_call(b"/test.Echo/Unary", [b"before"])
    assert (await wire.finish(served)).status == StatusCode.OK.number
    wire.client.goaway(NO_ERROR, last_stream_id=0)
    await wire.flush()
    await wire.wait_closed()
    assert wire.client.goaways == [GoAway(served, NO_ERROR, b"")]
    assert wire.client.pings == []


async def test_client_goaway_with_an_error_cancels_calls_and_closes(
    wire: Wire, recorder: Recorder
) -> None:
    """A client's GOAWAY with an error code ends the connection: running handlers are cancelled."""
    await start_sleep(wire, recorder)
    wire.client.goaway(PROTOCOL_ERROR)
    await wire.wait_closed()
    await assert_sleep_cancelled(recorder)


async def test_too_many_pings_without_calls_get_enhance_your_calm(wire_to: WireTo) -> None:
    """With max_ping_strikes=2, the 3rd strike gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings".

    Without calls and without keepalive_permit_without_calls every ping after the first is a
    strike, so the 4th ping ends the connection.
    """
    wire = await wire_to(max_ping_strikes=2, keepalive_permit_without_calls=False)
    for index in range(3):
        await wire.round_trip(b"ping-%03d" % index)
    assert wire.client.goaways == []
    wire.client.ping(b"ping-003")
    await wire.wait_closed()
    assert len(wire.client.goaways) == 1
    goaway = wire.client.goaways[0]
    assert goaway.error_code == ENHANCE_YOUR_CALM
    assert goaway.debug == b"too_many_pings"


async def test_pings_between_response_messages_are_not_strikes(
    wire_to: WireTo, recorder: Recorder
) -> None:
    """Each DATA the server sends forgives earlier pings, as grpc core does (BDP probing).

    Six pings, each after a response message, with grpc core's defaults (2 strikes, 5 min):
    no GOAWAY; the call ends OK.
    """
    wire = await wire_to()
    stream_id = wire.client.start_call(b"/test.Echo/Bidi", end=False)
    response = wire.client.response(stream_id)
    for index in range(6):
        wire.client.send(stream_id, grpc_frame(b"message-%d" % index))
        await wire.wait_for(
            lambda answered=index + 1: len(response.messages) >= answered,
            f"the answer to message {index}",
        )
        await wire.round_trip(b"ping-%03d" % index)
    assert wire.client.goaways == []
    wire.client.end(stream_id)
    finished = await wire.finish(stream_id)
    assert finished.status == StatusCode.OK.number
    assert len(finished.messages) == 6


async def test_pings_while_a_call_sends_nothing_are_strikes(
    wire_to: WireTo, recorder: Recorder
) -> None:
    """A running call whose server sends nothing does not shield pings: the 3rd strike ends it."""
    wire = await wire_to()
    await start_sleep(wire, recorder)
    for index in range(3):
        await wire.round_trip(b"ping-%03d" % index)
    assert wire.client.goaways == []
    wire.client.ping(b"ping-003")
    await wire.wait_closed()
    assert [(g.error_code, g.debug) for g in wire.client.goaways] == [
        (ENHANCE_YOUR_CALM, b"too_many_pings")
    ]
    await assert_sleep_cancelled(recorder)


async def test_permit_without_calls_still_polices_the_ping_interval(wire_to: WireTo) -> None:
    """keepalive_permit_without_calls still polices min_ping_interval_without_data."""
    wire = await wire_to(**PINGS_WITHOUT_CALLS, min_ping_interval_without_data=300.0)
    for index in range(4):
        wire.client.ping(b"ping-%03d" % index)
    await wire.wait_closed()
    assert [(g.error_code, g.debug) for g in wire.client.goaways] == [
        (ENHANCE_YOUR_CALM, b"too_many_pings")
    ]


async def test_pings_spaced_by_the_minimum_interval_are_fine(wire_to: WireTo) -> None:
    """Pings spaced wider than min_ping_interval_without_data never count as strikes."""
    wire = await wire_to(**PINGS_WITHOUT_CALLS, min_ping_interval_without_data=0.05)
    for index in range(5):
        if index:
            await asyncio.sleep(0.25)  # spacing only; nothing is asserted about durations
        await wire.round_trip(b"ping-%03d" % index)
    assert wire.client.goaways == []
    response = await wire.call(b"/test.Echo/Unary", b"still welcome")
    assert response.status == StatusCode.OK.number


async def test_keepalive_ping_not_acknowledged_closes_the_connection(wire_to: WireTo) -> None:
    """The server pings after keepalive_time; a client that never acknowledges is disconnected."""
    wire = await wire_to(keepalive_time=0.2, keepalive_timeout=0.3, auto_ack_pings=False)
    await wire.wait_for(lambda: bool(wire.client.pings), "a keepalive PING")
    await wire.wait_closed()
    assert len(wire.client.pings) == 1  # no second ping: it gave up on the first


async def test_keepalive_ping_acknowledged_keeps_the_connection(wire_to: WireTo) -> None:
    """A client that acknowledges keepalive pings keeps getting them and stays connected."""
    wire = await wire_to(keepalive_time=0.1, keepalive_timeout=0.3)
    await wire.wait_for(lambda: len(wire.client.pings) >= 4, "several keepalive PINGs")
    assert wire.client.goaways == []
    response = await wire.call(b"/test.Echo/Unary", b"alive")
    assert response.status == StatusCode.OK.number


async def test_idle_connection_gets_a_graceful_goaway(wire_to: WireTo) -> None:
    """A connection without calls for max_connection_idle is closed with the two-phase GOAWAY."""
    wire = await wire_to(max_connection_idle=0.2)
    await wire.wait_closed()
    assert wire.client.goaways == [
        GoAway(MAX_STREAM_ID, NO_ERROR, b""),
        GoAway(0, NO_ERROR, b""),
    ]
    assert len(wire.client.pings) == 1


async def test_max_connection_age_goaway_then_cancel_after_grace(
    wire_to: WireTo, recorder: Recorder
) -> None:
    """At max_connection_age comes a graceful GOAWAY; after the grace, calls are cancelled.

    The cancelled call gets UNAVAILABLE (retryable, as from grpc core), its done callbacks run,
    the connection closes.
    """
    wire = await wire_to(max_connection_age=0.5, max_connection_age_grace=0.3)
    stream_id = wire.client.start_call(b"/test.Echo/Sleep", [b"30"])
    await wire.wait_for(lambda: len(wire.client.goaways) == 2, "both GOAWAYs")
    assert wire.client.goaways == [
        GoAway(MAX_STREAM_ID, NO_ERROR, b""),
        GoAway(stream_id, NO_ERROR, b""),
    ]
    response = await wire.finish(stream_id)
    assert response.trailers_only
    assert response.status == StatusCode.UNAVAILABLE.number
    await wire.wait_closed()
    await assert_sleep_cancelled(recorder)


async def test_streams_beyond_max_concurrent_streams_do_not_kill_the_connection(
    wire_to: WireTo, probe: Probe
) -> None:
    """Exceeding SETTINGS_MAX_CONCURRENT_STREAMS is a stream error, not a connection error.

    RFC 9113 section 5.1.2: the extra stream may be refused with REFUSED_STREAM (or served, if
    the client had not yet seen the limit: grpc core enforces only acknowledged settings), but
    the calls already running are never lost with the connection.
    """
    # The client has not seen our SETTINGS yet, so h2 lets it open a third stream.
    wire = await wire_to(max_concurrent_streams=2, wait_settings=False)
    running = [wire.client.start_call(b"/test.Probe/Gate", [b"%d" % i]) for i in range(2)]
    extra = wire.client.start_call(b"/test.Probe/Gate", [b"extra"])
    await wire.wait_for(
        lambda: wire.client.has_settings() and probe.started.is_set(), "the calls to start"
    )
    await wire.round_trip()
    probe.gate.set()
    for index, stream_id in enumerate(running):
        response = await wire.finish(stream_id)
        assert response.messages == [(False, b"%d" % index)]
    extra_response = await wire.finish(extra)
    if extra_response.reset is not None:
        assert extra_response.reset == REFUSED_STREAM
        assert extra_response.headers is None
    else:
        assert extra_response.messages == [(False, b"extra")]
