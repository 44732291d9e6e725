"""A connection's TLS session is made only once its first TLS record is whole.

Half a ClientHello (a slowloris peer) then costs the server the bytes received, not an OpenSSL
session and its buffers; a ClientHello that arrives in pieces still completes its handshake.
The path is the ``ssl.MemoryBIO`` one (``TlsLayer``): injected streams, connections with
``initial_data`` and, on uvloop, most accepted connections.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

import fastinject
from echo_service import Recorder
from serving import TIMEOUT, echo_server
from tls_material import TlsMaterial


def client_hello(client: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> bytes:
    """The ClientHello ``client`` starts its handshake with."""
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


async def test_a_clienthello_in_pieces_makes_no_session_until_its_record_is_whole(
    recorder: Recorder, tls: TlsMaterial
) -> None:
    """While one byte of the first record is missing the server holds no TLS session.

    The last byte completes the record; the handshake then completes with ALPN h2.
    """
    server = echo_server(recorder)
    await server.start()
    injector = server.create_connection_injector(
        fastinject.ServerCredentials.ssl([(tls.server_key_pem, tls.server_cert_pem)])
    )
    context = ssl.create_default_context(cadata=tls.ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    hello = client_hello(client, outgoing)
    ours, theirs = socket.socketpair()
    try:
        await injector.inject_connection(theirs, initial_data=hello[:3])
        reader, writer = await asyncio.open_connection(sock=ours)
        for index in range(3, len(hello) - 1):
            writer.write(hello[index : index + 1])
            await writer.drain()
        (arrival,) = server._pending
        pending = arrival._holder  # the TlsLayer working on the connection
        await asyncio.sleep(0.05)  # let the server read what was sent
        assert pending.get_extra_info("ssl_object") is None  # type: ignore[union-attr]

        writer.write(hello[-1:])
        async with asyncio.timeout(TIMEOUT):
            while True:
                incoming.write(await reader.read(65536))
                try:
                    client.do_handshake()
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())
                    continue
                writer.write(outgoing.read())
                break
        assert client.selected_alpn_protocol() == "h2"
        assert pending.get_extra_info("ssl_object") is not None  # type: ignore[union-attr]
        writer.close()
    finally:
        await server.stop(None)
