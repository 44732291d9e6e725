"""Rich errors with the real grpcio-status package: ``abort_with_status`` to ``from_call``."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

import fastinject
from compat.conftest import SERVICE, ServeMethods


def rich_status() -> status_pb2.Status:
    """An INVALID_ARGUMENT status carrying a BadRequest detail."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="name", description="empty"),
    ]))
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad name", details=[detail])


async def async_reject(request: bytes, context: Any) -> bytes:
    """Abort with the rich status (async handler)."""
    await context.abort_with_status(rpc_status.to_status(rich_status()))
    raise AssertionError("abort_with_status returned")


def sync_reject(request: bytes, context: Any) -> bytes:
    """Abort with the rich status (sync handler, in the thread pool)."""
    context.abort_with_status(rpc_status.to_status(rich_status()))
    raise AssertionError("abort_with_status returned")


@pytest.mark.parametrize("name", ["AsyncReject", "SyncReject"])
async def test_abort_with_status_reaches_from_call(serve_methods: ServeMethods, name: str) -> None:
    """The client gets the code and message, and rpc_status.aio.from_call the whole detail."""
    target = await serve_methods({
        "AsyncReject": fastinject.unary_unary_rpc_method_handler(async_reject),
        "SyncReject": fastinject.unary_unary_rpc_method_handler(sync_reject),
    })
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(f"/{SERVICE}/{name}")(b"")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "bad name"
        received = await rpc_status.aio.from_call(call)
    assert received == rich_status()
    violation = error_details_pb2.BadRequest()
    assert received.details[0].Unpack(violation)
    assert violation.field_violations[0].field == "name"
