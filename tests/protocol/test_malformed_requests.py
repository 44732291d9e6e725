"""Malformed request messages fail their call quietly; what a peer makes us log is rate-limited.

A request the deserializer rejects is the peer's fault: the call ends with INTERNAL (as grpc
core, grpc-java and grpc-go answer), logged at DEBUG only.  A handler that raises is logged at
ERROR with its traceback, at most once per ``peer_log_interval`` per connection.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from fastinject import StatusCode
from protocol.probe_service import StartServer
from protocol.wire import OpenWire, Wire, eventually

_DETAILS = "Exception deserializing request! UnicodeDecodeError: "


async def test_malformed_request_fails_with_internal_logged_at_debug(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """INTERNAL with grpcio's details text plus the cause; a DEBUG line, nothing above it."""
    served = await start_server()
    caplog.set_level(logging.DEBUG, logger="fastinject")
    async with grpc.aio.insecure_channel(served.target) as channel:
        strict = channel.unary_unary("/test.Probe/Strict")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await strict(b"\xff not utf-8", timeout=10)
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert failure.value.details().startswith(_DETAILS)
        assert await strict("café".encode(), timeout=10) == "café".encode()
    assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("/test.Probe/Strict" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)


async def test_malformed_streamed_request_fails_the_call(start_server: StartServer) -> None:
    """The second message of a stream is malformed: the handler's iteration fails, INTERNAL."""
    served = await start_server()
    async with grpc.aio.insecure_channel(served.target) as channel:
        strict = channel.stream_unary("/test.Probe/StrictStream")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await strict(iter([b"fine", b"\xc3\x28"]), timeout=10)
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert failure.value.details().startswith(_DETAILS)
        assert await strict(iter([b"a", b"b"]), timeout=10) == b"a|b"


async def _calls(wire: Wire, path: bytes, message: bytes, count: int) -> list[int | None]:
    """``count`` calls of ``path`` with ``message``, 500 at a time; their grpc-status."""
    statuses: list[int | None] = []
    for start in range(0, count, 500):
        batch = [wire.client.start_call(path, [message]) for _ in range(min(500, count - start))]
        for stream_id in batch:
            statuses.append((await wire.finish(stream_id)).status)
    return statuses


async def test_ten_thousand_bad_requests_log_a_bounded_amount(
    start_server: StartServer, open_wire: OpenWire, caplog: pytest.LogCaptureFixture
) -> None:
    """5,000 malformed requests and 5,000 failing handlers on one connection log two lines.

    The first handler failure is logged with its traceback; the rest are counted and the
    count is reported when the connection closes.  Another connection gets its own line.
    """
    served = await start_server(peer_log_interval=3600.0)
    caplog.set_level(logging.INFO, logger="fastinject")
    wire = await open_wire(served.port)
    malformed = await _calls(wire, b"/test.Probe/Strict", b"\xff", 5000)
    failing = await _calls(wire, b"/test.Echo/Fail", b"", 5000)
    assert set(malformed) == {StatusCode.INTERNAL.number}
    assert set(failing) == {StatusCode.UNKNOWN.number}
    wire.close()
    await eventually(lambda: len(caplog.records) == 2, "the report of the connection's close")

    first, summary = caplog.records
    assert first.getMessage() == "handler for /test.Echo/Fail raised"
    assert first.levelno == logging.ERROR
    assert first.exc_info is not None
    assert "boom" in str(first.exc_info[1])
    assert "4999 more log lines were suppressed" in summary.getMessage()
    assert len(caplog.text) < 4000  # one traceback and one summary line

    other = await open_wire(served.port)
    assert await _calls(other, b"/test.Echo/Fail", b"", 1) == [StatusCode.UNKNOWN.number]
    assert len(caplog.records) == 3
