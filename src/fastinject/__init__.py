"""fastinject: an asyncio gRPC server with a Cython hot path and connection injection (gRFC L114).

Serve gRPC on listening ports like ``grpc.aio``, or hand the server any open byte stream (a
socket you accepted, a tunnel you dialled, an in-memory pipe) through a
:class:`ConnectionInjector`, with the TLS credentials that connection calls for.
"""

from typing import Any

from ._grpcio import end_of_stream
from .compression import Compression
from .context import ServicerContext
from .credentials import ServerCredentials
from .duplex import Duplex
from .errors import (
    BindError,
    FastInjectError,
    InjectorDestroyedError,
    MessageTooLargeError,
    ProtocolError,
    RpcError,
    ServerStateError,
    ServerStoppedError,
)
from .handlers import (
    HandlerCallDetails,
    RpcMethodHandler,
    method_handlers_generic_handler,
    stream_stream_rpc_method_handler,
    stream_unary_rpc_method_handler,
    unary_stream_rpc_method_handler,
    unary_unary_rpc_method_handler,
)
from .injector import ConnectionInjector
from .options import ServerSettings
from .router import ConnectionInfo, ConnectionRouter, Rule
from .server import Server
from .status import StatusCode


def __getattr__(name: str) -> Any:
    # ``EOF``: ``grpc.aio.EOF`` itself when grpcio is installed (fastinject._grpcio), resolved
    # on first use so that ``import fastinject`` does not import grpcio.
    if name == "EOF":
        return end_of_stream()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EOF",
    "BindError",
    "Compression",
    "ConnectionInfo",
    "ConnectionInjector",
    "ConnectionRouter",
    "Duplex",
    "FastInjectError",
    "HandlerCallDetails",
    "InjectorDestroyedError",
    "MessageTooLargeError",
    "ProtocolError",
    "RpcError",
    "RpcMethodHandler",
    "Rule",
    "Server",
    "ServerCredentials",
    "ServerSettings",
    "ServerStateError",
    "ServerStoppedError",
    "ServicerContext",
    "StatusCode",
    "method_handlers_generic_handler",
    "stream_stream_rpc_method_handler",
    "stream_unary_rpc_method_handler",
    "unary_stream_rpc_method_handler",
    "unary_unary_rpc_method_handler",
]
