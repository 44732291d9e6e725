r"""The gRPC interop ``TestService``: protobuf messages, servicer and a runnable server.

The ``.proto`` files here are our own, wire-compatible with grpc/grpc's
``src/proto/grpc/testing/{empty,messages,test}.proto`` (same package ``grpc.testing``, same
message, field, service and method names and numbers), so standard interop clients can call
``python -m fastinject.interop.server``.

This package is a fixture of fastinject's tests, benchmarks and demo, not part of the server:
``import fastinject`` never imports it, and it needs protobuf, which fastinject itself does not:
install it with ``pip install 'fastinject[interop]'``.

The ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` modules are generated; regenerate them from
the repository root with::

    python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src \
        src/fastinject/interop/*.proto

The ``*_pb2_grpc.py`` modules import grpcio and are used only by tests and benchmarks (client
stubs); nothing else in this package needs grpcio at run time.
"""

try:
    import google.protobuf  # noqa: F401  (the generated modules import it in turn)
except ModuleNotFoundError as missing:
    raise ModuleNotFoundError(
        "fastinject.interop needs protobuf: pip install 'fastinject[interop]'",
        name=missing.name,
    ) from missing
