"""fastinject demo: a grpcio-tools servicer served by fastinject, called by a grpcio client.

Runs the gRPC interop ``TestService`` (its generated code ships in ``fastinject.interop``) on a
listening port *and* on a connection handed to a ``ConnectionInjector``, then calls every kind
of method with grpcio's client and prints what came back.  Needs ``grpcio`` for the client:
``pip install 'fastinject[interop]' grpcio && python examples/demo.py`` (the interop extra
brings the protobuf runtime the generated code needs).
"""

from __future__ import annotations

import asyncio
import socket

import grpc

import fastinject
from fastinject.interop import test_pb2_grpc
from fastinject.interop.messages_pb2 import (
    Payload,
    ResponseParameters,
    SimpleRequest,
    StreamingInputCallRequest,
    StreamingOutputCallRequest,
)
from fastinject.interop.servicer import TestServiceServicer


async def call_everything(channel: grpc.aio.Channel, label: str) -> None:
    """Make one call of each kind and print the results."""
    stub = test_pb2_grpc.TestServiceStub(channel)
    unary = await stub.UnaryCall(SimpleRequest(response_size=10, payload=Payload(body=b"hi")))
    print(f"[{label}] unary: {len(unary.payload.body)}-byte response")
    request = StreamingOutputCallRequest(
        response_parameters=[ResponseParameters(size=n) for n in (1, 2, 3)]
    )
    sizes = [len(r.payload.body) async for r in stub.StreamingOutputCall(request)]
    print(f"[{label}] server streaming: responses of {sizes} bytes")
    chunks = (StreamingInputCallRequest(payload=Payload(body=b"x" * n)) for n in (4, 5, 6))
    aggregate = await stub.StreamingInputCall(chunks)
    print(f"[{label}] client streaming: server counted {aggregate.aggregated_payload_size} bytes")
    duplex = stub.FullDuplexCall(
        StreamingOutputCallRequest(response_parameters=[ResponseParameters(size=n)])
        for n in (7, 8)
    )
    print(f"[{label}] bidi: {[len(r.payload.body) async for r in duplex]} bytes")


class DemoServicer(TestServiceServicer, test_pb2_grpc.TestServiceServicer):
    """The interop servicer; the generated base class supplies UnimplementedCall."""


async def main() -> None:
    """Serve on a port and on an injected connection; call both."""
    server = fastinject.Server()
    # The code grpcio-tools generates registers the servicer on our server unchanged.
    test_pb2_grpc.add_TestServiceServicer_to_server(DemoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    async with server:
        print(f"fastinject serving grpc.testing.TestService on 127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await call_everything(channel, "port")

        # Connection injection: accept a socket ourselves and hand it to the server.
        injector = server.create_connection_injector(fastinject.ServerCredentials.insecure())
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        loop = asyncio.get_running_loop()

        async def accept_one() -> None:
            sock, _ = await loop.sock_accept(listener)
            injector.inject_connection(sock)

        accepting = asyncio.ensure_future(accept_one())
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        async with grpc.aio.insecure_channel(address) as channel:
            await call_everything(channel, "injected")
        await accepting
        listener.close()
        await injector.destroy()
    print("done: every call succeeded")


if __name__ == "__main__":
    asyncio.run(main())
