"""Reverse tunnel (grpc/grpc-node#2317): the gRPC *server* dials out and serves on that connection.

A server behind NAT or a firewall cannot be reached, but it can connect out.  Here it dials a
"rendezvous" peer and hands the connection it made to a connection injector (gRFC L114), so the
peer on the other end is the gRPC *client* of that connection.  When a tunnel closes, the
server dials again (backing off while the rendezvous is unreachable).

Server side, dialling the rendezvous at HOST:PORT::

    python examples/reverse_tunnel.py --rendezvous HOST:PORT

``--demo`` (needs ``grpcio``) runs both ends on 127.0.0.1: the client side listens for the
server's dial-in and also opens a local port for grpcio; each connection grpcio makes there
is spliced to one tunnel the server dialled, and a call goes through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from typing import Any

import fastinject
from fastinject.injector import ConnectionInjector

SERVICE = "demo.Tunnel"
logger = logging.getLogger("reverse_tunnel")


# -- the server side -------------------------------------------------------------------------


async def hello(request: bytes, context: Any) -> bytes:
    """Greet the caller and say what the server sees at the other end of the tunnel."""
    return f"hello {request.decode()}, from a server that dialled out to {context.peer()}".encode()


def make_server() -> fastinject.Server:
    """A server with the demo service and no listening port at all."""
    server = fastinject.Server()
    server.add_registered_method_handlers(
        SERVICE, {"Hello": fastinject.unary_unary_rpc_method_handler(hello)}
    )
    return server


async def dial_and_serve(injector: ConnectionInjector, host: str, port: int) -> None:
    """Keep one tunnel to ``host:port`` open, serving gRPC on it; re-dial when it closes."""
    backoff = 0.1
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            logger.info("cannot reach the rendezvous %s:%d (%s); retrying", host, port, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            continue
        backoff = 0.1
        # A (reader, writer) pair rather than the raw socket: the injector closes the writer
        # when the connection ends, which tells this loop when to dial again.
        injector.inject_connection((reader, writer))
        # Shielded: cancelling this loop must not cancel the stream's own "closed" future,
        # which the injector awaits when it closes the connection.
        await asyncio.shield(until_closed(writer))


async def until_closed(writer: asyncio.StreamWriter) -> None:
    """Return once the stream of ``writer`` has closed, however it ended."""
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# -- the client side (demo) ------------------------------------------------------------------


async def splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until end of stream, then close ``writer``."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class RendezvousSide:
    """Accepts the server's tunnels and joins each local grpcio connection to one of them."""

    def __init__(self) -> None:
        self.tunnels: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._splices: set[asyncio.Future[Any]] = set()

    async def on_tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The server dialled in: keep the tunnel until a local client needs it."""
        await self.tunnels.put((reader, writer))

    async def on_local_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A local grpcio connection: splice it to the next tunnel, both ways."""
        try:
            tunnel_reader, tunnel_writer = await asyncio.wait_for(self.tunnels.get(), 10)
        except TimeoutError:
            writer.close()
            return
        both = asyncio.gather(splice(reader, tunnel_writer), splice(tunnel_reader, writer))
        self._splices.add(both)
        both.add_done_callback(self._splices.discard)


async def demo() -> None:
    """Run both ends on 127.0.0.1 and make one call through the reverse tunnel."""
    try:
        import grpc
    except ImportError:
        sys.exit("--demo needs grpcio")

    side = RendezvousSide()
    rendezvous = await asyncio.start_server(side.on_tunnel, "127.0.0.1", 0)
    local = await asyncio.start_server(side.on_local_client, "127.0.0.1", 0)
    rendezvous_port = rendezvous.sockets[0].getsockname()[1]
    local_port = local.sockets[0].getsockname()[1]

    server = make_server()
    await server.start()
    injector = server.create_connection_injector(fastinject.ServerCredentials.insecure())
    dialler = asyncio.create_task(dial_and_serve(injector, "127.0.0.1", rendezvous_port))
    print(f"rendezvous on port {rendezvous_port}; grpcio calls via local port {local_port}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{local_port}") as channel:
            reply = await channel.unary_unary(f"/{SERVICE}/Hello")(b"tunnel user", timeout=10)
            print(f"reply over the reverse tunnel: {reply.decode()}")
            print(f"connections served by the injector: {injector.connections}")
    finally:
        dialler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dialler
        await server.stop(1)
        for listener in (rendezvous, local):
            listener.close()
            await listener.wait_closed()


async def serve(host: str, port: int) -> None:
    """Dial the rendezvous and serve over it until interrupted."""
    server = make_server()
    await server.start()
    injector = server.create_connection_injector(fastinject.ServerCredentials.insecure())
    print(f"serving {SERVICE} over tunnels dialled to {host}:{port}")
    try:
        await dial_and_serve(injector, host, port)
    finally:
        await server.stop(5)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the server side or the demo."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--rendezvous", metavar="HOST:PORT", help="the peer to dial")
    group.add_argument("--demo", action="store_true", help="run both ends and make a call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.demo:
        asyncio.run(demo())
        return
    host, sep, port = args.rendezvous.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--rendezvous must be HOST:PORT, not {args.rendezvous!r}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host.strip("[]"), int(port)))


if __name__ == "__main__":
    main()
