"""Helpers for tests of connections in their handshake: raw peers and a grpcio caller."""

from __future__ import annotations

import asyncio
import ssl

import grpc
import pytest

from serving import TIMEOUT, method
from tls_material import TlsMaterial

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Caller:
    """A grpcio client calling test.Echo/Unary in a loop until stopped; counts its calls."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._unary = method(channel, "Unary")
        self.succeeded = 0
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        for _ in range(100_000):  # a bound; stop() ends it long before
            if self._stop.is_set():
                return
            assert await self._unary(b"ping", timeout=TIMEOUT) == b"ping"
            self.succeeded += 1

    async def calls(self, count: int) -> None:
        """Wait until ``count`` more calls succeeded (re-raising any failure)."""
        target = self.succeeded + count
        async with asyncio.timeout(TIMEOUT):
            while self.succeeded < target:
                if self._task.done():
                    self._task.result()
                    raise AssertionError("the caller stopped early")
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop calling; re-raise a failed call."""
        self._stop.set()
        await asyncio.wait_for(self._task, TIMEOUT)


def client_context(tls: TlsMaterial) -> ssl.SSLContext:
    """A TLS client context trusting the test CA, offering ALPN h2."""
    context = ssl.create_default_context(cadata=tls.ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    return context


def client_hello(tls: TlsMaterial) -> bytes:
    """A real ClientHello for ``localhost``."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(tls).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


async def connect(port: int, first: bytes = b"") -> Connection:
    """Open a raw TCP connection to ``port`` and send ``first``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    await writer.drain()
    return reader, writer


async def closed_by_server(connection: Connection) -> bool:
    """Read until the server closes the connection (True); False if it stays open TIMEOUT s."""
    reader, writer = connection
    try:
        async with asyncio.timeout(TIMEOUT):
            while await reader.read(65536):
                pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    finally:
        writer.close()
    return True


def still_open(connection: Connection) -> bool:
    """Whether the server has not closed ``connection`` yet (nothing buffered says so)."""
    reader, _ = connection
    return not reader.at_eof() and reader.exception() is None


def tls_channel(port: int, tls: TlsMaterial) -> grpc.aio.Channel:
    """A grpcio TLS channel to ``port`` trusting the test CA."""
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)
