"""The server the worker-pool tests run in every worker: calls answer with the worker's pid.

``/pid.Pid/Get`` answers at once; ``/pid.Pid/Sleep`` sleeps for the seconds its request holds
(ASCII, e.g. ``b"2.5"``) and then answers; ``/pid.Pid/Loop`` names the module of the event
loop class (``uvloop`` or ``asyncio.unix_events``).  Requests and responses are raw bytes (no
protobuf): the answer is the pid as ASCII digits.  ``make_server`` is the factory;
``make_server_async`` the same as an async setup function; ``broken`` fails, to test boot
failures.
"""

from __future__ import annotations

import asyncio
import os

import fastinject


async def _get(request: bytes, context: fastinject.ServicerContext) -> bytes:
    return str(os.getpid()).encode()


async def _loop(request: bytes, context: fastinject.ServicerContext) -> bytes:
    return type(asyncio.get_running_loop()).__module__.encode()


async def _sleep(request: bytes, context: fastinject.ServicerContext) -> bytes:
    await asyncio.sleep(float(request))
    return str(os.getpid()).encode()


def make_server() -> fastinject.Server:
    """A server with the Pid service."""
    server = fastinject.Server()
    server.add_generic_rpc_handlers([
        fastinject.method_handlers_generic_handler("pid.Pid", {
            "Get": fastinject.unary_unary_rpc_method_handler(_get),
            "Sleep": fastinject.unary_unary_rpc_method_handler(_sleep),
            "Loop": fastinject.unary_unary_rpc_method_handler(_loop),
        })
    ])
    return server


async def make_server_async() -> fastinject.Server:
    """The same server from an async setup function."""
    await asyncio.sleep(0)
    return make_server()


def broken() -> fastinject.Server:
    """A factory that cannot build its server."""
    raise RuntimeError("this factory is broken on purpose")
