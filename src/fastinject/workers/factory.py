"""The user's server factory: ``"module:function"`` returning a configured ``fastinject.Server``.

The function may be plain or ``async`` (an async setup function can open database pools and the
like on the worker's own event loop).  It runs once per worker process, so servicers,
interceptors and settings are built in every worker; it must not bind ports (the supervisor
or the command line does that).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from ..server import Server

__all__ = ["FactoryError", "build_server", "load_factory"]


class FactoryError(Exception):
    """The factory cannot be found, or it did not give a ``fastinject.Server``."""


def load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``"package.module:function"`` (attributes may be dotted)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise FactoryError(f"factory {spec!r} must be given as 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name != module_name:
            raise  # the module exists but one of its own imports failed: show that error
        raise FactoryError(f"cannot import module {module_name!r} of factory {spec!r}") from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise FactoryError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise FactoryError(f"factory {spec!r} is a {type(target).__name__}, not a function")
    return target  # type: ignore[no-any-return]


async def build_server(spec: str) -> Server:
    """Call the factory named by ``spec`` (awaiting it if it is async) and check its result."""
    result = load_factory(spec)()
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Server):
        raise FactoryError(
            f"factory {spec!r} returned {type(result).__name__}, not a fastinject.Server"
        )
    return result
