"""ConnectionRouter end to end: real sockets, real TLS, grpcio clients, one listening port."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

import fastinject
from echo_service import Recorder
from fastinject.errors import ServerStateError
from fastinject.injector import ConnectionInjector
from fastinject.router import ConnectionInfo, ConnectionRouter, Rule
from fastinject.sniff import HTTP2_PREFACE, sniff
from serving import TIMEOUT, eventually, method, sleeping
from tls_material import CLIENT_DNS_NAME

TlsChannelFactory = Callable[..., grpc.aio.Channel]  # the tls_channel fixture (conftest.py)
StartRouter = Callable[..., Awaitable[int]]  # the start_router fixture (conftest.py)
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty HTTP/2 SETTINGS frame
PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"router!!"  # an HTTP/2 PING frame


# Each channel gets its own connections (grpcio shares them between channels by default), so
# tests can count the connections each injector serves.
OWN_CONNECTIONS = ("grpc.use_local_subchannel_pool", 1)


def insecure_channel(target: str) -> grpc.aio.Channel:
    """A cleartext grpcio channel with connections of its own."""
    return grpc.aio.insecure_channel(target, options=[OWN_CONNECTIONS])


async def unary(channel: grpc.aio.Channel, payload: bytes) -> bytes:
    """The answer of test.Echo/Unary to ``payload`` (bounded by TIMEOUT)."""
    answer: bytes = await method(channel, "Unary")(payload, timeout=TIMEOUT)
    return answer


async def assert_unavailable(channel: grpc.aio.Channel) -> None:
    """A call on ``channel`` fails UNAVAILABLE: its connection was never served."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await unary(channel, b"x")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def received_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Every byte the peer sends before it closes (a reset counts as a close)."""
    received = b""
    async def read() -> None:
        nonlocal received
        while chunk := await reader.read(65536):
            received += chunk
    with contextlib.suppress(ConnectionResetError):
        await asyncio.wait_for(read(), TIMEOUT)
    return received


async def answer_to(port: int, start: bytes) -> bytes:
    """Everything the router's port sends to a raw client that sends ``start``, until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(start)
    received = await received_until_closed(reader)
    writer.close()
    return received


async def sniffed_connection(
    router: ConnectionRouter,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to ``router`` that sends nothing, once the router is sniffing it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    await eventually(lambda: router.pending == 1)
    return reader, writer


async def peer_of_call(channel: grpc.aio.Channel) -> dict[str, Any]:
    """What the server saw of the caller (test.Echo/Peer)."""
    result: dict[str, Any] = json.loads(await method(channel, "Peer")(b"", timeout=TIMEOUT))
    return result


async def test_plaintext_and_tls_clients_share_one_port(
    start_router: StartRouter, plaintext: ConnectionInjector,
    tls_localhost: ConnectionInjector, tls_channel: TlsChannelFactory,
) -> None:
    """Cleartext clients go to the plaintext injector and TLS clients to the TLS one, same port."""
    router = ConnectionRouter([Rule(plaintext, transport="plaintext"),
                               Rule(tls_localhost, transport="tls")])
    port = await start_router(router)
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await unary(channel, b"clear") == b"clear"
        assert (plaintext.connections, tls_localhost.connections) == (1, 0)
    async with tls_channel(f"localhost:{port}") as channel:
        assert await unary(channel, b"secret") == b"secret"
        seen = await peer_of_call(channel)
        assert seen["auth"]["transport_security_type"] == ["ssl"]
        assert tls_localhost.connections == 1


async def test_mtls_rule_requires_client_certificate(
    start_router: StartRouter, plaintext: ConnectionInjector, mtls: ConnectionInjector,
    tls_channel: TlsChannelFactory,
) -> None:
    """TLS connections routed to an mTLS injector are served only with a client certificate."""
    router = ConnectionRouter([Rule(plaintext, source="127.0.0.0/8", transport="plaintext"),
                               Rule(mtls, transport="tls")])
    port = await start_router(router)
    async with tls_channel(f"localhost:{port}", client_cert=True) as channel:
        seen = await peer_of_call(channel)
        assert seen["identities"] == [CLIENT_DNS_NAME]
    async with tls_channel(f"localhost:{port}") as channel:
        await assert_unavailable(channel)


async def test_sni_chooses_the_certificate(
    start_router: StartRouter, tls_localhost: ConnectionInjector,
    tls_example: ConnectionInjector, tls_channel: TlsChannelFactory,
) -> None:
    """The SNI name picks the injector, so each client gets the certificate for its name."""
    router = ConnectionRouter([Rule(tls_localhost, server_name="localhost"),
                               Rule(tls_example, server_name="*.example.test")])
    port = await start_router(router)
    target = f"127.0.0.1:{port}"
    # Each client checks the certificate against its SNI name: success proves the right one.
    async with tls_channel(target, server_name="api.example.test") as channel:
        assert await unary(channel, b"e") == b"e"
        assert (tls_localhost.connections, tls_example.connections) == (0, 1)
    async with tls_channel(target, server_name="localhost") as channel:
        assert await unary(channel, b"l") == b"l"
        assert tls_localhost.connections == 1
    async with tls_channel(target, server_name="other.invalid") as channel:
        await assert_unavailable(channel)


async def test_source_cidr_rules(
    server: fastinject.Server, start_router: StartRouter, plaintext: ConnectionInjector,
) -> None:
    """Source CIDR rules route IPv4 and IPv6 loopback clients of one port to different injectors."""
    v6 = server.create_connection_injector(fastinject.ServerCredentials.insecure())
    router = ConnectionRouter([Rule(plaintext, source="127.0.0.0/8"), Rule(v6, source="::1/128")])
    port = await start_router(router, "[::]:0")  # dual-stack: both families, one port
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        assert "127.0.0.1" in (await peer_of_call(channel))["peer"]
        assert (plaintext.connections, v6.connections) == (1, 0)
    async with insecure_channel(f"[::1]:{port}") as channel:
        assert (await peer_of_call(channel))["peer"].startswith("ipv6:%5B::1%5D:")
        assert v6.connections == 1


async def test_destination_cidr_rule(
    start_router: StartRouter, plaintext: ConnectionInjector,
) -> None:
    """A destination rule matches the local address the client connected to."""
    router = ConnectionRouter([Rule(plaintext, destination="::1/128")])
    port = await start_router(router, "[::]:0")  # dual-stack: both families, one port
    async with insecure_channel(f"[::1]:{port}") as channel:
        assert await unary(channel, b"v6") == b"v6"
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        await assert_unavailable(channel)


async def test_unmatched_connection_is_closed_without_a_byte(
    start_router: StartRouter, tls_localhost: ConnectionInjector,
) -> None:
    """With no matching rule the client fails UNAVAILABLE and the server sends nothing at all."""
    router = ConnectionRouter([Rule(tls_localhost, transport="tls")])
    port = await start_router(router)
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        await assert_unavailable(channel)
    assert await answer_to(port, HTTP2_PREFACE + SETTINGS) == b""
    assert tls_localhost.connections == 0


async def test_choose_function_sees_connection_info(
    start_router: StartRouter, plaintext: ConnectionInjector,
    tls_localhost: ConnectionInjector, tls_channel: TlsChannelFactory,
) -> None:
    """With no rule matching, choose() gets addresses, kind, SNI and ALPN and its pick serves."""
    infos: list[ConnectionInfo] = []

    def choose(info: ConnectionInfo) -> ConnectionInjector | None:
        infos.append(info)
        return tls_localhost if info.kind == "tls" else plaintext

    router = ConnectionRouter(choose=choose)
    port = await start_router(router, "[::]:0")  # dual-stack: IPv4 peers come mapped
    async with tls_channel(f"127.0.0.1:{port}", server_name="localhost") as channel:
        assert await unary(channel, b"t") == b"t"
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await unary(channel, b"p") == b"p"
    loopback = ipaddress.ip_address("127.0.0.1")
    assert [(i.kind, i.server_name, i.source, i.destination, i.destination_port)
            for i in infos] == [("tls", "localhost", loopback, loopback, port),
                                ("http2", None, loopback, loopback, port)]
    assert "h2" in infos[0].alpn
    assert infos[0].source_port > 0


@pytest.mark.parametrize("outcome", ["raises", "returns a string"])
async def test_faulty_choose_closes_the_connection(
    start_router: StartRouter, plaintext: ConnectionInjector, outcome: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A choose() that raises or returns a non-injector closes the connection and is logged."""
    def choose(info: ConnectionInfo) -> Any:
        if outcome == "raises":
            raise RuntimeError("bad chooser")
        return "not an injector"

    router = ConnectionRouter(choose=choose, default=plaintext)
    port = await start_router(router)
    assert await answer_to(port, HTTP2_PREFACE + SETTINGS) == b""
    assert any(record.name == "fastinject.router" and record.levelname == "ERROR"
               for record in caplog.records)


async def test_default_serves_what_no_rule_or_choose_claims(
    start_router: StartRouter, plaintext: ConnectionInjector,
    tls_localhost: ConnectionInjector,
) -> None:
    """choose() returning None falls through to the default injector."""
    router = ConnectionRouter([Rule(tls_localhost, transport="tls")],
                              choose=lambda info: None, default=plaintext)
    port = await start_router(router)
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await unary(channel, b"d") == b"d"
    assert router.default is plaintext


async def test_set_rules_routes_new_connections_and_drains_old_injector(
    plaintext_router: ConnectionRouter, plaintext: ConnectionInjector,
    replacement: ConnectionInjector, recorder: Recorder,
) -> None:
    """After set_rules new connections use the new table; old calls finish, then it is destroyed."""
    target = f"127.0.0.1:{plaintext_router.port}"
    async with insecure_channel(target) as old, insecure_channel(target) as new:
        in_flight = await sleeping(old, recorder, b"1.0", timeout=TIMEOUT)
        plaintext_router.set_rules([Rule(replacement)], retire_grace=TIMEOUT)
        assert plaintext_router.rules == (Rule(replacement),)
        assert await unary(new, b"new") == b"new"
        assert (plaintext.connections, replacement.connections) == (1, 1)
        assert not plaintext.destroyed  # still draining its in-flight call
        assert await in_flight == b"slept 1.0"
        await eventually(lambda: plaintext.destroyed)
        assert plaintext.connections == 0
        assert recorder.cancelled == []
        # The old channel's next call reconnects, through the new table.
        assert await unary(old, b"again") == b"again"
        assert replacement.connections == 2


async def test_retired_injector_calls_are_cancelled_after_the_grace(
    plaintext_router: ConnectionRouter, plaintext: ConnectionInjector,
    replacement: ConnectionInjector, recorder: Recorder,
) -> None:
    """A call still running on a retired injector when the grace ends is cancelled."""
    async with insecure_channel(f"127.0.0.1:{plaintext_router.port}") as channel:
        call = await sleeping(channel, recorder, b"60", timeout=TIMEOUT * 3)
        plaintext_router.set_rules([Rule(replacement)], retire_grace=0.05)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() != grpc.StatusCode.OK
        await eventually(lambda: plaintext.destroyed)
        assert recorder.cancelled == ["60"]


async def test_close_destroys_retiring_injectors_and_calls_still_finish(
    plaintext_router: ConnectionRouter, plaintext: ConnectionInjector,
    replacement: ConnectionInjector, recorder: Recorder,
) -> None:
    """close() destroys injectors being retired at once; their running calls still finish."""
    async with insecure_channel(f"127.0.0.1:{plaintext_router.port}") as channel:
        call = await sleeping(channel, recorder, b"0.5", timeout=TIMEOUT)
        plaintext_router.set_rules([Rule(replacement)], retire_grace=60)
        await plaintext_router.close()
        assert plaintext.destroyed
        assert not replacement.destroyed  # the current table's injectors are the user's
        assert await call == b"slept 0.5"


async def test_injector_back_in_the_table_is_not_destroyed(
    plaintext_router: ConnectionRouter, plaintext: ConnectionInjector,
    replacement: ConnectionInjector,
) -> None:
    """An injector retired and then put back before its drain ends keeps serving."""
    async with insecure_channel(f"127.0.0.1:{plaintext_router.port}") as channel:
        assert await unary(channel, b"1") == b"1"
        plaintext_router.set_rules([], default=replacement, retire_grace=60)
        plaintext_router.set_rules([Rule(plaintext)], retire_grace=60)
        # The first connection drains and closes; the channel reconnects to plaintext again.
        await eventually(lambda: plaintext.connections == 0)
        assert await unary(channel, b"2") == b"2"
        assert not plaintext.destroyed
        assert plaintext.connections == 1
        await eventually(lambda: replacement.destroyed)  # it left the table with no connections


async def test_silent_peer_is_closed_at_the_sniff_timeout(
    start_router: StartRouter, plaintext: ConnectionInjector,
) -> None:
    """A peer that never sends a byte is closed once sniff_timeout passes."""
    router = ConnectionRouter([Rule(plaintext)], sniff_timeout=0.2)
    await start_router(router)
    reader, writer = await sniffed_connection(router)
    assert await received_until_closed(reader) == b""
    assert router.pending == 0
    writer.close()


async def test_peer_closing_early_frees_its_slot(
    start_router: StartRouter, plaintext: ConnectionInjector,
) -> None:
    """A peer that closes before it can be classified is dropped at once, not at the timeout."""
    router = ConnectionRouter([Rule(plaintext)], sniff_timeout=3600)
    await start_router(router)
    _, writer = await sniffed_connection(router)
    writer.close()
    await eventually(lambda: router.pending == 0)


async def test_unknown_bytes_are_not_routed_to_plaintext(
    start_router: StartRouter, plaintext: ConnectionInjector,
) -> None:
    """transport="plaintext" wants the HTTP/2 preface: an HTTP/1.1 request is closed silently."""
    router = ConnectionRouter([Rule(plaintext, transport="plaintext")])
    port = await start_router(router)
    assert await answer_to(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""


@pytest.mark.parametrize("family", ["tcp", "unix"])
async def test_dribbled_preface_is_waited_for_without_spinning(
    start_router: StartRouter, plaintext: ConnectionInjector,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, family: str,
) -> None:
    """A start arriving in pieces is routed when complete, with few peeks, and stays responsive."""
    calls = 0

    def counting_sniff(data: bytes) -> Any:
        nonlocal calls
        calls += 1
        return sniff(data)

    monkeypatch.setattr("fastinject.router.sniff", counting_sniff)
    router = ConnectionRouter([Rule(plaintext)])
    if family == "tcp":
        port = await start_router(router)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        path = str(tmp_path / "r.sock")
        await start_router(router, f"unix:{path}")
        reader, writer = await asyncio.open_unix_connection(path)
    for piece in (HTTP2_PREFACE[:5], HTTP2_PREFACE[5:23], HTTP2_PREFACE[23:] + SETTINGS):
        writer.write(piece)
        await asyncio.sleep(0.2)  # long enough for a spinning loop to peek thousands of times
    kind, _, _ = await asyncio.wait_for(read_frame(reader), TIMEOUT)
    assert kind == 0x04  # the server's SETTINGS: the injector got the whole preface
    # Two pauses of 0.2 s: the kernel's low-water mark (TCP) needs 3 peeks; backoff
    # polling (Unix sockets) needs about a dozen; a busy loop would need thousands.
    assert calls <= 30
    # A frame smaller than the last peek (17 < 23 bytes) still wakes the server: the router
    # gave the socket back with its low-water mark reset.
    writer.write(PING)
    assert await asyncio.wait_for(ping_ack(reader), TIMEOUT) == PING[9:]
    writer.close()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """One HTTP/2 frame: its type, flags and payload."""
    header = await reader.readexactly(9)
    payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
    return header[3], header[4], payload


async def ping_ack(reader: asyncio.StreamReader) -> bytes:
    """Skip HTTP/2 frames until a PING ACK; return its payload."""
    while True:
        kind, flags, payload = await read_frame(reader)
        if kind == 0x06 and flags & 0x01:
            return payload


async def test_max_pending_holds_further_connections_in_the_backlog(
    start_router: StartRouter, plaintext: ConnectionInjector,
) -> None:
    """With max_pending connections being sniffed, the next one waits until a slot frees up."""
    router = ConnectionRouter([Rule(plaintext)], max_pending=1, sniff_timeout=3600)
    port = await start_router(router)
    _, silent = await sniffed_connection(router)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HTTP2_PREFACE + SETTINGS)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(9), 0.3)
    silent.close()
    frame = await asyncio.wait_for(reader.readexactly(9), TIMEOUT)
    assert frame[3] == 0x04
    writer.close()


async def test_close_drops_pending_connections_and_leaks_nothing(
    plaintext: ConnectionInjector, tls_localhost: ConnectionInjector,
) -> None:
    """close() ends sniffing connections; afterwards no router task or file descriptor is left."""
    # uvloop (libuv) opens a descriptor of its own the first time a loop listens, kept for the
    # loop's life (a spare on /dev/null to recover from EMFILE): listen once before counting.
    warm_up = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    warm_up.close()
    await warm_up.wait_closed()
    fds_before = set(os.listdir("/dev/fd"))
    tasks_before = asyncio.all_tasks()
    router = ConnectionRouter([Rule(tls_localhost, transport="tls")], sniff_timeout=3600)
    port = await router.start("127.0.0.1:0")
    clients = []
    for start in (b"", HTTP2_PREFACE + SETTINGS, b"junk", HTTP2_PREFACE[:4]):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(start)
        clients.append((reader, writer))
    _, early = await asyncio.open_connection("127.0.0.1", port)
    early.close()
    await eventually(lambda: router.pending == 2)  # the silent one and the prefix-sender
    router.set_rules([Rule(plaintext)])
    await router.close()
    await router.close()  # idempotent
    for reader, writer in clients:
        assert await received_until_closed(reader) == b""
        writer.close()
        with contextlib.suppress(ConnectionResetError):  # closing with unread bytes sends RST
            await writer.wait_closed()
    await early.wait_closed()
    await eventually(lambda: tls_localhost.destroyed)
    assert asyncio.all_tasks() - tasks_before == set()
    assert set(os.listdir("/dev/fd")) == fds_before
    with pytest.raises(ServerStateError):
        await router.start("127.0.0.1:0")
    with pytest.raises(ServerStateError):
        router.set_rules([Rule(plaintext)])


async def test_start_twice_is_refused(
    start_router: StartRouter, plaintext: ConnectionInjector,
) -> None:
    """A router listens on one address: a second start raises ServerStateError."""
    router = ConnectionRouter([Rule(plaintext)])
    port = await start_router(router)
    assert router.port == port
    with pytest.raises(ServerStateError):
        await router.start("127.0.0.1:0")


def info(kind: str = "tls", server_name: str | None = None, source: str = "10.0.0.1",
         destination: str = "10.0.0.2") -> ConnectionInfo:
    """A ConnectionInfo for matching tests."""
    return ConnectionInfo(ipaddress.ip_address(source), 1234, ipaddress.ip_address(destination),
                          443, kind, server_name, ())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "connection", "matches"),
    [
        ({}, info("unknown"), True),
        ({"server_name": "*.example.com"}, info(server_name="a.example.com"), True),
        ({"server_name": "*.example.com"}, info(server_name="a.b.example.com"), True),
        ({"server_name": "*.example.com"}, info(server_name="example.com"), False),
        ({"server_name": "*.example.com"}, info(server_name="badexample.com"), False),
        ({"server_name": "API.example.com"}, info(server_name="api.example.com"), True),
        ({"server_name": "api.example.com"}, info(server_name=None), False),
        ({"transport": "plaintext"}, info("http2"), True),
        ({"transport": "plaintext"}, info("unknown"), False),
        ({"transport": "tls"}, info("http2"), False),
        ({"source": "10.0.0.0/8"}, info(source="10.9.9.9"), True),
        ({"source": "10.0.0.0/8"}, info(source="11.0.0.1"), False),
        ({"source": "10.0.0.0/8"}, info(source="::ffff:10.0.0.1"), False),
        ({"source": "10.1.2.3/8"}, info(source="10.200.0.1"), True),
        ({"destination": "10.0.0.2"}, info(), True),
        ({"destination": "fd00::/8"}, info(), False),
        ({"source": "10.0.0.0/8", "transport": "tls"}, info("http2"), False),
    ],
)
async def test_rule_matching(
    plaintext: ConnectionInjector, fields: dict[str, Any], connection: ConnectionInfo,
    matches: bool,
) -> None:
    """A rule matches when every field it sets matches; wildcards need at least one label."""
    assert Rule(plaintext, **fields).matches(connection) is matches


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"source": "10.0.0.0/33"}, ValueError),
        ({"destination": "not an address"}, ValueError),
        ({"source": 10}, TypeError),
        ({"server_name": "a.*.com"}, ValueError),
        ({"server_name": "*"}, ValueError),
        ({"server_name": ""}, ValueError),
        ({"server_name": "a b"}, ValueError),
        ({"transport": "quic"}, ValueError),
    ],
)
async def test_rule_rejects_bad_fields(
    plaintext: ConnectionInjector, fields: dict[str, Any], error: type[Exception],
) -> None:
    """A malformed rule field raises a specific error when the rule is made."""
    with pytest.raises(error):
        Rule(plaintext, **fields)


def test_rule_needs_an_injector() -> None:
    """Rule.injector must be a ConnectionInjector."""
    with pytest.raises(TypeError):
        Rule(object())  # type: ignore[arg-type]


async def test_router_rejects_bad_arguments(plaintext: ConnectionInjector) -> None:
    """Bad router arguments and tables with destroyed injectors raise specific errors."""
    with pytest.raises(ValueError, match="sniff_timeout"):
        ConnectionRouter(sniff_timeout=0)
    with pytest.raises(ValueError, match="max_pending"):
        ConnectionRouter(max_pending=0)
    with pytest.raises(TypeError, match="rules"):
        ConnectionRouter(Rule(plaintext))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="default"):
        ConnectionRouter(default="x")  # type: ignore[arg-type]
    router = ConnectionRouter()
    with pytest.raises(ValueError, match="retire_grace"):
        router.set_rules([], retire_grace=-1)
    await plaintext.destroy()
    with pytest.raises(ValueError, match="destroyed"):
        router.set_rules([Rule(plaintext)])
    assert router.rules == ()

