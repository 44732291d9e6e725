"""A grpc.aio server hosting the interop ``TestService``, the baseline of the end-to-end benchmark.

Run as ``python -m benchmarks.e2e.grpcaio_server --port 0``.  It serves the same servicer class
as ``python -m fastinject.interop.server`` (``fastinject.interop.servicer.TestServiceServicer``),
so the comparison measures the servers, not the application code.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import grpc  # type: ignore[import-untyped,unused-ignore]
from benchmarks.e2e import _serving

DEFAULT_SERVICER = "fastinject.interop.servicer:TestServiceServicer"
"""The servicer class served unless ``--servicer`` names another one."""


def load_servicer(spec: str) -> object:
    """Import ``module:Class`` and return an instance that has every TestService method.

    Methods the class lacks (the interop servicer leaves UnimplementedCall out on purpose)
    come from grpcio's generated base class, which answers UNIMPLEMENTED.
    """
    from fastinject.interop import test_pb2_grpc

    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"servicer must be given as module:Class, got {spec!r}")
    servicer_class = getattr(importlib.import_module(module_name), class_name)
    base = test_pb2_grpc.TestServiceServicer
    if not issubclass(servicer_class, base):
        servicer_class = type(servicer_class.__name__, (servicer_class, base), {})
    servicer: object = servicer_class()
    return servicer


async def serve(port: int, servicer: object, tls: tuple[str, str] | None = None) -> None:
    """Serve ``servicer`` on 127.0.0.1:``port`` until SIGTERM or SIGINT (TLS: cert, key)."""
    from fastinject.interop import test_pb2_grpc

    server = grpc.aio.server()
    test_pb2_grpc.add_TestServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    address = f"{_serving.LISTEN_HOST}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        cert, key = (Path(path).read_bytes() for path in tls)
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    _serving.announce(bound)
    try:
        await _serving.wait_for_stop_signal()
    finally:
        await server.stop(grace=1.0)


def main() -> None:
    """Parse the command line and run the server."""
    parser = _serving.base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--servicer", default=DEFAULT_SERVICER, help="servicer class to serve, as module:Class"
    )
    args = parser.parse_args()
    tls = _serving.tls_files(parser, args)
    asyncio.run(serve(args.port, load_servicer(args.servicer), tls))


if __name__ == "__main__":
    main()
