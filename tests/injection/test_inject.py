"""Connection injection (gRFC L114) through real sockets, real TLS and a grpcio client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

import fastinject
from echo_service import Recorder
from fastinject.duplex import StreamPairDuplex
from serving import TIMEOUT, Serve, echo_server, eventually, method, sleeping
from tls_material import TlsMaterial

Inject = Callable[[fastinject.ConnectionInjector], Awaitable[str]]


class SocketDuplex(StreamPairDuplex):
    """A Duplex that is not one of the kinds inject_connection knows (a user's own class)."""

    peer = "tunnel:test"


class Acceptor:
    """A listener of the test's own whose accepted connections are injected."""

    def __init__(self, kind: str, injector: fastinject.ConnectionInjector) -> None:
        self.kind = kind
        self.injector = injector
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen on a loopback port and start injecting what it accepts; return the port."""
        if self.kind == "socket":
            self._listener = socket.create_server(("127.0.0.1", 0))
            self._listener.setblocking(False)
            self._accept_task = asyncio.ensure_future(self._accept_sockets())
            return int(self._listener.getsockname()[1])
        self._server = await asyncio.start_server(self._on_pair, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept_sockets(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            self.injector.inject_connection(sock)

    async def _on_pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.kind == "pair":
            self.injector.inject_connection((reader, writer))
        else:
            self.injector.inject_connection(SocketDuplex(reader, writer))

    async def close(self) -> None:
        """Stop listening; connections already injected are the injector's to close."""
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            self._server.close()


@contextlib.asynccontextmanager
async def accepting(
    injector: fastinject.ConnectionInjector, kind: str = "socket"
) -> AsyncIterator[int]:
    """Inject every connection accepted on a port of the test's own while the block runs."""
    acceptor = Acceptor(kind, injector)
    port = await acceptor.start()
    try:
        yield port
    finally:
        await acceptor.close()


@contextlib.asynccontextmanager
async def injected_channel(
    injector: fastinject.ConnectionInjector, kind: str = "socket"
) -> AsyncIterator[grpc.aio.Channel]:
    """A cleartext grpcio channel whose connections are accepted and given to ``injector``."""
    async with accepting(injector, kind) as port, \
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel


def credentials(mode: str, tls: TlsMaterial) -> fastinject.ServerCredentials:
    """Server credentials for ``mode``: ``insecure``, ``tls`` or ``mtls`` (client certificate)."""
    if mode == "insecure":
        return fastinject.ServerCredentials.insecure()
    return fastinject.ServerCredentials.ssl(
        [(tls.server_key_pem, tls.server_cert_pem)],
        root_certificates=tls.ca_pem if mode == "mtls" else None,
        require_client_auth=mode == "mtls",
    )


def channel_for(mode: str, port: int, tls: TlsMaterial, *, client_cert: bool = True) -> Any:
    """A grpcio channel to ``localhost:port`` for ``mode``, trusting the test CA.

    In ``mtls`` mode it presents the test client certificate unless ``client_cert`` is false.
    """
    target = f"localhost:{port}"
    if mode == "insecure":
        return grpc.aio.insecure_channel(target)
    if mode == "mtls" and client_cert:
        creds = grpc.ssl_channel_credentials(
            tls.ca_pem, tls.client_key_pem, tls.client_cert_pem
        )
    else:
        creds = grpc.ssl_channel_credentials(tls.ca_pem)
    return grpc.aio.secure_channel(target, creds)


@pytest.fixture
async def server(recorder: Recorder) -> AsyncIterator[fastinject.Server]:
    """A started test.Echo server with no ports (the default handshake timeout, 120 s).

    A short one would make every injection of a test race it: 1,000 of them on a loaded host
    met a 0.5 s deadline stalled between injection and preface (BrokenPipe, once, on uvloop).
    """
    server = echo_server(recorder)
    await server.start()
    yield server
    await server.stop(None)


@pytest.fixture
def injector(server: fastinject.Server) -> fastinject.ConnectionInjector:
    """A cleartext injector of :func:`server`."""
    return server.create_connection_injector(fastinject.ServerCredentials.insecure())


@pytest.mark.parametrize("mode", ["insecure", "tls", "mtls"])
@pytest.mark.parametrize("kind", ["socket", "pair", "duplex"])
async def test_each_connection_kind_and_security(
    server: fastinject.Server, tls: TlsMaterial, kind: str, mode: str
) -> None:
    """Every kind of stream is served like a port connection, under the injector's TLS mode."""
    injector = server.create_connection_injector(credentials(mode, tls))
    async with accepting(injector, kind) as port, channel_for(mode, port, tls) as channel:
        assert await method(channel, "Unary")(b"injected") == b"injected"
        info = json.loads(await method(channel, "Peer")(b""))
        assert injector.connections == 1
    if kind == "duplex":
        assert info["peer"] == "tunnel:test"
    else:
        assert info["peer"].startswith("ipv4:127.0.0.1:")
    if mode == "mtls":
        assert info["auth"]["x509_common_name"] == ["client"]
        assert info["identities"]
    elif mode == "tls":
        assert info["auth"]["transport_security_type"] == ["ssl"]


async def test_an_injected_socket_stays_what_it_was(
    server: fastinject.Server, injector: fastinject.ConnectionInjector
) -> None:
    """An injected socket keeps its class, and reads its family and type as enums, once served.

    (While the loop attaches it, a plain socket reads them as ints: the loop reads each
    several times, and each enum costs thousands of instructions.)
    """
    ours, theirs = socket.socketpair()
    with theirs:
        await injector.inject_connection(ours)
        assert type(ours) is socket.socket
        assert ours.family is socket.AF_UNIX
        assert ours.type is socket.SOCK_STREAM
        theirs.sendall(CLIENT_PREFACE)
        await eventually(lambda: len(server._connections) == 1)


async def test_initial_data_is_served_first(injector: fastinject.ConnectionInjector) -> None:
    """Bytes the caller already read (sniffing) are processed before the rest of the stream."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    loop = asyncio.get_running_loop()

    async def accept_and_sniff() -> None:
        sock, _ = await loop.sock_accept(listener)
        preface = b""
        while len(preface) < 24:
            preface += await loop.sock_recv(sock, 24 - len(preface))
        assert preface.startswith(b"PRI * HTTP/2.0")
        injector.inject_connection(sock, initial_data=preface)

    accepting = asyncio.ensure_future(accept_and_sniff())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await method(channel, "Unary")(b"after sniff") == b"after sniff"
    await accepting
    listener.close()


async def test_mtls_without_client_certificate_is_refused(
    server: fastinject.Server, tls: TlsMaterial
) -> None:
    """An mTLS injector refuses a client that presents no certificate."""
    injector = server.create_connection_injector(credentials("mtls", tls))
    async with accepting(injector) as port, \
            channel_for("mtls", port, tls, client_cert=False) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(channel, "Unary")(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_silent_connection_closed_at_handshake_timeout(
    recorder: Recorder, tls: TlsMaterial
) -> None:
    """A peer that never starts its TLS handshake is disconnected at the handshake timeout."""
    server = echo_server(recorder, handshake_timeout=0.5)
    await server.start()
    injector = server.create_connection_injector(credentials("tls", tls))
    ours, theirs = socket.socketpair()
    injector.inject_connection(ours)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        assert await asyncio.wait_for(loop.sock_recv(theirs, 100), 10) == b""
        assert injector.connections == 0
    finally:
        theirs.close()
        await server.stop(None)


async def test_garbage_does_not_raise_into_caller(
    injector: fastinject.ConnectionInjector,
) -> None:
    """Garbage instead of HTTP/2 closes that connection; the caller sees no exception."""
    ours, theirs = socket.socketpair()
    await injector.inject_connection(ours)
    theirs.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    received = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(theirs, 65536), 10):
        received += chunk
    theirs.close()
    assert received  # the server said something (SETTINGS, GOAWAY) before closing


async def test_drain_finishes_short_cancels_long_and_spares_later(
    injector: fastinject.ConnectionInjector, recorder: Recorder
) -> None:
    """drain(grace) lets short calls finish, cancels long ones, and leaves later injections be."""
    async with accepting(injector) as port, \
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as old:
        short = await sleeping(old, recorder, b"0.2")
        long = method(old, "Sleep")(b"30")
        await asyncio.sleep(0.05)
        drained = injector.drain(1000)
        # A connection injected after the drain call is not part of it.
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as later:
            later_call = method(later, "Sleep")(b"1.5")
            assert await short == b"slept 0.2"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await long
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            await drained
            assert await later_call == b"slept 1.5"
            assert await method(later, "Unary")(b"still") == b"still"


async def test_drain_rejects_negative_grace(injector: fastinject.ConnectionInjector) -> None:
    """A negative grace time is a ValueError."""
    with pytest.raises(ValueError, match="grace"):
        injector.drain(-1)


async def test_destroy_is_idempotent_and_refuses_injections(
    injector: fastinject.ConnectionInjector,
) -> None:
    """destroy() twice is fine; injecting afterwards closes the stream and raises."""
    await injector.destroy()
    await injector.destroy()
    ours, theirs = socket.socketpair()
    with pytest.raises(fastinject.InjectorDestroyedError):
        injector.inject_connection(ours)
    assert ours.fileno() == -1
    theirs.close()


async def test_destroy_closes_connections_gracefully(
    injector: fastinject.ConnectionInjector, recorder: Recorder
) -> None:
    """destroy() lets running calls finish and then closes the injector's connections."""
    async with injected_channel(injector) as channel:
        call = await sleeping(channel, recorder, b"0.3")
        done = injector.destroy()
        assert await call == b"slept 0.3"
        await asyncio.wait_for(done, 10)
        assert injector.connections == 0


async def test_stop_covers_injected_connections(
    server: fastinject.Server, injector: fastinject.ConnectionInjector, recorder: Recorder
) -> None:
    """stop() cancels calls on injected connections, drained or not, and then refuses more."""
    async with injected_channel(injector) as channel:
        call = await sleeping(channel, recorder, b"30")
        injector.drain(60_000)
        await asyncio.wait_for(server.stop(0.2), 10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert injector.connections == 0
    ours, theirs = socket.socketpair()
    with pytest.raises(fastinject.ServerStoppedError):
        injector.inject_connection(ours)
    theirs.close()
    with pytest.raises(fastinject.ServerStoppedError):
        server.create_connection_injector(fastinject.ServerCredentials.insecure())


async def test_caller_errors(server: fastinject.Server) -> None:
    """Non-streams and non-credentials are TypeErrors naming what was expected."""
    with pytest.raises(TypeError, match="ServerCredentials"):
        server.create_connection_injector("insecure")  # type: ignore[arg-type]
    injector = server.create_connection_injector(fastinject.ServerCredentials.insecure())
    with pytest.raises(TypeError, match="Duplex"):
        injector.inject_connection(b"bytes")  # type: ignore[arg-type]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(TypeError, match="stream"):
        injector.inject_connection(udp)
    udp.close()


async def test_injector_created_before_start(recorder: Recorder) -> None:
    """An injector made before start() serves once the server runs."""
    server = echo_server(recorder)
    injector = server.create_connection_injector(fastinject.ServerCredentials.insecure())
    await server.start()
    async with injected_channel(injector, "pair") as channel:
        assert await method(channel, "Unary")(b"x") == b"x"
    await server.stop(None)


async def test_per_injector_interceptors(
    server: fastinject.Server, injector: fastinject.ConnectionInjector
) -> None:
    """Interceptors given to one injector apply to its connections only."""
    seen: list[str] = []

    class Record:
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            seen.append(details.method)
            return await continuation(details)

    recording = server.create_connection_injector(
        fastinject.ServerCredentials.insecure(), interceptors=[Record()]
    )
    async with injected_channel(recording) as c1, injected_channel(injector) as c2:
        await method(c1, "Unary")(b"a")
        await method(c2, "Unary")(b"b")
    assert seen == ["/test.Echo/Unary"]


async def test_certificate_rotation(server: fastinject.Server, tls: TlsMaterial) -> None:
    """After update(), new handshakes get the new certificate; open connections keep working."""
    creds = credentials("tls", tls)
    injector = server.create_connection_injector(creds)

    def served_common_name(port: int) -> str:
        context = ssl.create_default_context(cadata=tls.ca_pem.decode())
        context.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as conn:
            cert = conn.getpeercert()
        return dict(x[0] for x in cert["subject"])["commonName"]  # type: ignore[index,arg-type]

    loop = asyncio.get_running_loop()
    async with accepting(injector) as port, channel_for("tls", port, tls) as channel:
        assert await method(channel, "Unary")(b"before") == b"before"
        assert await loop.run_in_executor(None, served_common_name, port) == "localhost"
        creds.update([(tls.rotated_server_key_pem, tls.rotated_server_cert_pem)])
        assert await loop.run_in_executor(None, served_common_name, port) == "rotated.localhost"
        assert await method(channel, "Unary")(b"after") == b"after"


async def test_unbind_frees_address_and_keeps_other_ports(recorder: Recorder) -> None:
    """unbind(port) stops that port at once (rebindable); other ports and injectors go on."""
    server = echo_server(recorder)
    gone = server.add_insecure_port("127.0.0.1:0")
    kept = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gone}") as channel:
            assert await method(channel, "Unary")(b"x") == b"x"
            await asyncio.wait_for(server.unbind(gone), 10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await method(channel, "Unary")(b"x", timeout=2)
            assert info.value.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
            )
        rebound = socket.create_server(("127.0.0.1", gone))
        rebound.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{kept}") as channel:
            assert await method(channel, "Unary")(b"y") == b"y"
        await asyncio.wait_for(server.unbind(gone), 1)  # unbound already: nothing to do (L109)
        with pytest.raises(ValueError, match="port 0"):
            server.drain(0, 100)
    finally:
        await server.stop(None)


async def test_server_drain_port_keeps_listening(serve: Serve, recorder: Recorder) -> None:
    """Server.drain(port) closes that port's connections gracefully and keeps accepting."""
    served = await serve()
    async with grpc.aio.insecure_channel(served.target) as channel:
        call = await sleeping(channel, recorder, b"0.2")
        await asyncio.wait_for(served.server.drain(served.port, 5000), 10)
        assert await call == b"slept 0.2"
        # The channel reconnects to the still-listening port.
        assert await method(channel, "Unary")(b"again") == b"again"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# An HTTP/2 client connection preface: the magic string, then an empty SETTINGS frame.
CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def test_no_leaks_after_many_inject_close_cycles(
    injector: fastinject.ConnectionInjector,
) -> None:
    """1,000 inject/close cycles leave no file descriptors, connections or tasks behind."""
    loop = asyncio.get_running_loop()

    async def cycle() -> None:
        ours, theirs = socket.socketpair()
        await injector.inject_connection(ours)
        theirs.setblocking(False)
        # The server's SETTINGS go out with its answer to a client preface, so send one.
        await loop.sock_sendall(theirs, CLIENT_PREFACE)
        await loop.sock_recv(theirs, 100)  # the server's SETTINGS: it is being served
        theirs.close()

    await cycle()
    await asyncio.sleep(0.05)
    fds, tasks = _open_fds(), len(asyncio.all_tasks())
    for _ in range(1000):
        await cycle()
    await eventually(lambda: injector.connections == 0)
    await asyncio.sleep(0.05)
    assert injector.connections == 0
    assert _open_fds() <= fds
    assert len(asyncio.all_tasks()) <= tasks


async def test_injected_tcp_sockets_send_without_delay(
    server: fastinject.Server, injector: fastinject.ConnectionInjector
) -> None:
    """Nagle's algorithm is off on injected TCP sockets, as on a port's accepted ones.

    The test's listener is made with socket.create_server (proto 0), for which asyncio leaves
    it on: a response written in two parts then waited for the client's delayed ACK (~40 ms).
    """
    async with injected_channel(injector, "socket") as channel:
        assert await method(channel, "Unary")(b"x", timeout=10) == b"x"
        (connection,) = server._connections
        sock = connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("failure", ["cancelled", "error"])
async def test_a_socket_the_loop_fails_to_attach_is_closed_and_its_injection_completes(
    injector: fastinject.ConnectionInjector, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """However attaching a socket fails, it is closed and the returned awaitable completes.

    The loop's ``connect_accepted_socket`` waits for its transport; here that wait is
    cancelled, or fails with an exception other than OSError.  Nothing reaches the loop's
    exception handler.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.BaseEventLoop):
        pytest.skip("uvloop's connect_accepted_socket cannot be replaced")
    waiter: asyncio.Future[None] = loop.create_future()

    async def connect_accepted_socket(*_: object) -> None:
        await waiter

    monkeypatch.setattr(loop, "connect_accepted_socket", connect_accepted_socket)
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    ours, theirs = socket.socketpair()
    try:
        attached = injector.inject_connection(ours)
        if failure == "cancelled":
            waiter.cancel()
        else:
            waiter.set_exception(RuntimeError("the transport failed"))
        await asyncio.wait_for(attached, TIMEOUT)
        assert ours.fileno() == -1
        assert theirs.recv(1) == b""
        assert errors == []
    finally:
        loop.set_exception_handler(None)
        theirs.close()
