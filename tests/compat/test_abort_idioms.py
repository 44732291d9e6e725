"""Handler code written for grpc.aio around ``context.abort()`` behaves the same on fastinject.

grpc.aio handlers commonly guard a broad ``except Exception`` with ``except grpc.aio.AbortError:
raise`` so an abort is not mistaken for a failure; and only the first abort of a call counts.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import fastinject
from compat.conftest import SERVICE, ServeMethods


async def async_lookup(request: bytes, context: Any) -> bytes:
    """Abort NOT_FOUND inside a try whose broad except would answer INTERNAL."""
    try:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such record")
    except grpc.aio.AbortError:
        raise
    except Exception:
        await context.abort(grpc.StatusCode.INTERNAL, "lookup failed")
    raise AssertionError("abort returned")


def sync_lookup(request: bytes, context: Any) -> bytes:
    """The same idiom in a sync handler (run in the thread pool)."""
    try:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such record")
    except grpc.aio.AbortError:
        raise
    except Exception:
        context.abort(grpc.StatusCode.INTERNAL, "lookup failed")
    raise AssertionError("abort returned")


async def abort_twice(request: bytes, context: Any) -> bytes:
    """Catch the first abort (with a broad except) and abort again with another status."""
    try:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota used up")
    except Exception:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "second thoughts")
    raise AssertionError("abort returned")


class RecordCodes:
    """An interceptor that records ``context.code()`` after async unary handlers (as metrics do)."""

    def __init__(self) -> None:
        self.codes: dict[str, Any] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        """Wrap the handler so its final code is recorded."""
        handler = await continuation(details)
        inner = handler.unary_unary

        async def recorded(request: bytes, context: Any) -> bytes:
            try:
                result: bytes = await inner(request, context)
                return result
            finally:
                self.codes[details.method] = context.code()

        if details.method.endswith("SyncLookup"):
            return handler
        return fastinject.unary_unary_rpc_method_handler(recorded)


@pytest.mark.parametrize("name", ["AsyncLookup", "SyncLookup"])
async def test_abort_passes_an_except_grpc_aio_abort_error_guard(
    serve_methods: ServeMethods, name: str
) -> None:
    """The abort is a grpc.aio.AbortError, so the broad except is not entered: NOT_FOUND arrives."""
    recorder = RecordCodes()
    target = await serve_methods(
        {
            "AsyncLookup": fastinject.unary_unary_rpc_method_handler(async_lookup),
            "SyncLookup": fastinject.unary_unary_rpc_method_handler(sync_lookup),
        },
        interceptors=[recorder],
    )
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(f"/{SERVICE}/{name}")(b"")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such record"
    if name == "AsyncLookup":  # the recorder wraps async handlers only
        assert recorder.codes[f"/{SERVICE}/{name}"] == grpc.StatusCode.NOT_FOUND


async def test_only_the_first_abort_counts(serve_methods: ServeMethods) -> None:
    """The client and ``context.code()`` both report the first abort's status."""
    recorder = RecordCodes()
    target = await serve_methods(
        {"AbortTwice": fastinject.unary_unary_rpc_method_handler(abort_twice)},
        interceptors=[recorder],
    )
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(f"/{SERVICE}/AbortTwice")(b"")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "quota used up"
    assert recorder.codes[f"/{SERVICE}/AbortTwice"] == grpc.StatusCode.RESOURCE_EXHAUSTED
