"""One real grpcio call per workload, to prove a server answers it with status OK.

h2load cannot see gRPC trailers, so before any timed round the harness makes the workload's
call once with a grpcio client and checks the status and the response messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc  # type: ignore[import-untyped,unused-ignore]
from benchmarks.e2e.workloads import Workload
from google.protobuf.message import Message

from fastinject.interop import test_pb2_grpc

CALL_TIMEOUT_S = 20.0
"""Deadline of the checking call; generous, because it is not timed."""


def check_call(
    port: int,
    workload: Workload,
    timeout_s: float = CALL_TIMEOUT_S,
    root_certificate: bytes | None = None,
) -> str | None:
    """Call ``workload``'s method on 127.0.0.1:``port``; return what was wrong, or None if OK.

    The call's deadline is ``timeout_s`` seconds.  With ``root_certificate`` (PEM) the call
    goes over TLS and the server's certificate must be signed by it.
    """
    requests = workload.requests()
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.insecure_channel(target)
        if root_certificate is None
        else grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificate))
    )
    with channel:
        stub = test_pb2_grpc.TestServiceStub(channel)  # type: ignore[no-untyped-call]
        method = getattr(stub, workload.method)
        try:
            responses = _call(method, workload, requests, timeout_s)
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call):
                return f"{workload.method} failed: {error.code()} {error.details()}"
            return f"{workload.method} failed: {error}"
    return workload.verify(responses)


def _call(
    method: object, workload: Workload, requests: Sequence[Message], timeout_s: float
) -> list[Message]:
    if not callable(method):
        raise TypeError(f"stub has no callable {workload.method}")
    argument: Message | Iterator[Message]
    argument = iter(requests) if workload.request_streaming else requests[0]
    result = method(argument, timeout=timeout_s, wait_for_ready=True)
    if workload.response_streaming:
        return list(result)
    return [result]
