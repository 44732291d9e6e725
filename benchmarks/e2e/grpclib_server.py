"""A grpclib server hosting the benchmarked interop methods, for the end-to-end benchmark.

Run as ``python -m benchmarks.e2e.grpclib_server --port 0 --stubs PATH`` where PATH is the
``test_grpc.py`` module the harness generated with grpclib's protoc plugin.  The servicer
implements UnaryCall, StreamingInputCall and StreamingOutputCall the way
``fastinject.interop.servicer`` does (zero-filled payloads of the requested sizes, echoed
status, response intervals); every other method answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.e2e import _serving
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from fastinject.interop import messages_pb2 as pb

Handler = Callable[[Any, Stream[Any, Any]], Coroutine[Any, Any, None]]


def load_stubs(path: Path) -> ModuleType:
    """Import the generated grpclib module at ``path``."""
    spec = importlib.util.spec_from_file_location("_e2e_grpclib_test_grpc", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import generated stubs from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAX_PAYLOAD_SIZE = 16 << 20
"""The largest payload a client may ask for, as in the interop servicer."""

ECHO_KEYS = ("x-grpc-test-echo-initial", "x-grpc-test-echo-trailing-bin")
"""Request headers the interop servicer looks for on every call (and echoes back)."""


def _echoed(stream: Stream[Any, Any]) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in (stream.metadata or {}).items() if key in ECHO_KEYS]


def _check_status(status: pb.EchoStatus) -> None:
    if status.code:
        raise GRPCError(Status(status.code), status.message)


def _payload(payload_type: int, size: int) -> pb.Payload:
    if payload_type != pb.COMPRESSABLE or not 0 <= size <= MAX_PAYLOAD_SIZE:
        raise GRPCError(Status.INVALID_ARGUMENT, f"unsupported payload {payload_type}/{size}")
    return pb.Payload(type=pb.COMPRESSABLE, body=bytes(size))


# The handlers do the same per-call work as fastinject.interop.servicer on the benchmarked
# paths: look for the echo headers, honour response_status, check the payload type and size.
async def unary_call(_self: Any, stream: Stream[pb.SimpleRequest, pb.SimpleResponse]) -> None:
    """Answer one SimpleRequest with a payload of ``response_size`` zero bytes."""
    _echoed(stream)
    request = await stream.recv_message()
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
    _check_status(request.response_status)
    payload = _payload(request.response_type, request.response_size)
    await stream.send_message(pb.SimpleResponse(payload=payload))


async def streaming_input_call(
    _self: Any,
    stream: Stream[pb.StreamingInputCallRequest, pb.StreamingInputCallResponse],
) -> None:
    """Answer a stream of requests with the sum of their payload sizes."""
    _echoed(stream)
    total = 0
    async for request in stream:
        total += len(request.payload.body)
    await stream.send_message(pb.StreamingInputCallResponse(aggregated_payload_size=total))


async def streaming_output_call(
    _self: Any,
    stream: Stream[pb.StreamingOutputCallRequest, pb.StreamingOutputCallResponse],
) -> None:
    """Send one response per ResponseParameters of the request."""
    _echoed(stream)
    request = await stream.recv_message()
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
    _check_status(request.response_status)
    for parameters in request.response_parameters:
        payload = _payload(request.response_type, parameters.size)
        if parameters.interval_us > 0:
            await asyncio.sleep(parameters.interval_us / 1e6)
        await stream.send_message(pb.StreamingOutputCallResponse(payload=payload))


async def _unimplemented(_self: Any, _stream: Stream[Any, Any]) -> None:
    raise GRPCError(Status.UNIMPLEMENTED)


IMPLEMENTED: dict[str, Handler] = {
    "UnaryCall": unary_call,
    "StreamingInputCall": streaming_input_call,
    "StreamingOutputCall": streaming_output_call,
}
"""The benchmarked methods, by name."""


def build_servicer(stubs: ModuleType) -> Any:
    """Return an instance of the generated ``TestServiceBase`` with our methods filled in."""
    base: type = stubs.TestServiceBase
    methods = dict.fromkeys(getattr(base, "__abstractmethods__", ()), _unimplemented)
    methods.update(IMPLEMENTED)
    return type("BenchTestService", (base,), methods)()


async def serve(port: int, stubs_path: Path, tls: tuple[str, str] | None = None) -> None:
    """Serve the interop service on 127.0.0.1:``port`` until SIGTERM or SIGINT (TLS: cert, key)."""
    server = Server([build_servicer(load_stubs(stubs_path))])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((_serving.LISTEN_HOST, port))
    await server.start(sock=sock, ssl=None if tls is None else _serving.server_ssl_context(tls))
    _serving.announce(sock.getsockname()[1])
    try:
        await _serving.wait_for_stop_signal()
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    """Parse the command line and run the server."""
    parser = _serving.base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--stubs", type=Path, required=True, help="generated test_grpc.py")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.stubs, _serving.tls_files(parser, args)))


if __name__ == "__main__":
    main()
