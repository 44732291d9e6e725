"""grpc core's ping-abuse policy, as a real grpcio client meets it during long calls.

grpc core forgives a client's ping strikes whenever the server sends HEADERS, DATA or
WINDOW_UPDATE; grpcio's BDP (bandwidth-probe) pings ride on received DATA, so a long server
stream must never earn GOAWAY ``too_many_pings``.  The raw-frame tests of the same policy are in
``tests/protocol/test_lifecycle.py``.
"""

from __future__ import annotations

import grpc

from serving import Serve, method

MESSAGES = 300
SIZE = 2048


async def test_bdp_pings_during_a_long_server_stream_are_not_strikes(serve: Serve) -> None:
    """300 x 2 KiB over about 3 s with grpcio's BDP probing on: every message, then OK.

    The server keeps grpc core's defaults (5 min ``min_ping_interval_without_data``, two
    strikes), under which the client's pings would end the call if they were strikes.
    """
    served = await serve()
    options = [("grpc.http2.bdp_probe", 1)]
    async with grpc.aio.insecure_channel(served.target, options=options) as channel:
        call = method(channel, "Trickle", "unary_stream")(f"{MESSAGES}:{SIZE}:0.01".encode())
        sizes = [len(message) async for message in call]
        assert await call.code() == grpc.StatusCode.OK
    assert sizes == [SIZE] * MESSAGES
