"""What fastinject shares with grpcio when grpcio is installed (it never needs it).

* The end-of-stream object: ``context.read()`` returns ``grpc.aio.EOF`` itself, so handlers
  written for grpc.aio (``if request is grpc.aio.EOF``) work unchanged; without grpcio it is
  fastinject's own.  ``fastinject.EOF`` is that same object either way.
* The abort error: ``context.abort()`` raises an error that is also a ``grpc.aio.AbortError``,
  so handlers that let it pass with ``except grpc.aio.AbortError: raise`` before a broad
  ``except Exception`` (a common grpc.aio idiom) do not turn an abort into a second one.
* Being a ``grpc.aio.Server``: :class:`fastinject.Server` is registered as a virtual subclass,
  so packages that choose their servicer with ``isinstance(server, grpc.aio.Server)``
  (grpcio-reflection) choose the asyncio one.

grpcio is imported only when it is installed, and lazily: ``import fastinject`` never imports
it; the first server made (or the first look at ``fastinject.EOF``) does.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from .errors import AbortError


class EndOfStream:
    """fastinject's end-of-stream object, used when grpcio is not installed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<fastinject.EOF>"


_OWN_EOF = EndOfStream()


@functools.cache
def grpc_aio() -> ModuleType | None:
    """The ``grpc.aio`` module, or ``None`` when grpcio is not installed (or cannot load)."""
    try:
        import grpc.aio
    except ImportError:
        return None
    return grpc.aio  # type: ignore[no-any-return]


@functools.cache
def end_of_stream() -> Any:
    """The one EOF object: ``grpc.aio.EOF`` when grpcio is installed, else fastinject's own."""
    aio = grpc_aio()
    return _OWN_EOF if aio is None else aio.EOF


@functools.cache
def abort_error_class() -> type[AbortError]:
    """What ``abort()`` raises: :class:`AbortError`, also ``grpc.aio.AbortError`` with grpcio."""
    aio = grpc_aio()
    if aio is None:
        return AbortError
    return type("AbortError", (AbortError, aio.AbortError), {"__module__": AbortError.__module__})


def register_server_class(server_class: type) -> None:
    """Make ``server_class`` a virtual subclass of ``grpc.aio.Server`` (when grpcio is there)."""
    aio = grpc_aio()
    if aio is not None and not issubclass(server_class, aio.Server):
        aio.Server.register(server_class)
