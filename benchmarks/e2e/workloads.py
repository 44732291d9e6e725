"""The benchmark workloads: which method is called, with what requests, and what a success returns.

Each workload describes one gRPC call shape against the interop ``TestService``.  From it the
harness builds the HTTP/2 request body h2load posts (the gRPC-framed requests, written to a
file), the lower bound on response DATA bytes a successful call returns (so a server answering
every call with an error status is caught even though h2load cannot see trailers), and the
check of one real grpcio call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from fastinject.interop import messages_pb2 as pb

SMALL = 100
"""Payload body size of the small messages, in bytes."""

LARGE = 1024 * 1024
"""Payload body size of the large unary messages, in bytes."""

STREAM_LENGTH = 10_000
"""Messages in one call of the streaming workloads."""

SERVICE_PATH = "/grpc.testing.TestService"
"""HTTP/2 path prefix of the interop service."""


def grpc_frame(message: Message) -> bytes:
    """Return ``message`` as one uncompressed gRPC length-prefixed message."""
    body: bytes = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def _payload(size: int) -> pb.Payload:
    return pb.Payload(type=pb.COMPRESSABLE, body=bytes(size))


@dataclass(frozen=True)
class InstructionPlan:
    """How the ``--instructions`` mode drives a workload: fixed concurrency, two batch sizes.

    ``clients`` x ``streams`` calls are in flight (h2load ``-c`` and ``-m``); ``small`` and
    ``large`` are the call counts of the two batches of a sample, whole waves of calls, kept
    small because a server under callgrind runs 50-100 times slower.
    """

    clients: int
    streams: int
    small: int
    large: int

    def describe(self) -> str:
        """Return e.g. ``4x64, 256/1024``: concurrency, then the two batch sizes."""
        return f"{self.clients}x{self.streams}, {self.small}/{self.large}"


@dataclass(frozen=True)
class Workload:
    """One call shape: method, request messages, expected responses and h2load concurrency.

    ``clients`` x ``streams`` is the number of calls in flight (h2load ``-c`` and ``-m``);
    ``messages_per_call`` is how many messages one call carries in its streaming direction
    (1 for unary), used to report messages per second; ``instructions`` is how the
    ``--instructions`` mode drives it.  With ``connection_per_call`` every call opens a
    connection of its own (``clients`` of them at once, in as many h2load runs as it takes),
    so calls/s is new connections per second and CPU/call the cost of one connection; with
    ``latency`` every call's latency is logged and percentiles are reported.
    """

    name: str
    method: str
    description: str
    clients: int
    streams: int
    messages_per_call: int
    instructions: InstructionPlan
    requests: Callable[[], Sequence[Message]]
    responses: Callable[[], Sequence[Message]]
    verify: Callable[[Sequence[Message]], str | None]
    connection_per_call: bool = False
    latency: bool = False

    @property
    def path(self) -> str:
        """HTTP/2 ``:path`` of the method."""
        return f"{SERVICE_PATH}/{self.method}"

    @property
    def request_streaming(self) -> bool:
        """Whether the method takes a stream of requests."""
        return self.method == "StreamingInputCall"

    @property
    def response_streaming(self) -> bool:
        """Whether the method returns a stream of responses."""
        return self.method == "StreamingOutputCall"

    def request_body(self) -> bytes:
        """Return the HTTP/2 request body of one call: every request message, gRPC-framed."""
        return b"".join(grpc_frame(message) for message in self.requests())

    def min_response_data(self) -> int:
        """Return the fewest DATA bytes a successful call's response carries."""
        return sum(len(grpc_frame(message)) for message in self.responses())


def _verify_unary(size: int) -> Callable[[Sequence[Message]], str | None]:
    def verify(responses: Sequence[Message]) -> str | None:
        if len(responses) != 1 or not isinstance(responses[0], pb.SimpleResponse):
            return f"expected one SimpleResponse, got {len(responses)} messages"
        got = len(responses[0].payload.body)
        return None if got == size else f"response payload is {got} bytes, expected {size}"

    return verify


def _verify_aggregate(responses: Sequence[Message]) -> str | None:
    expected = SMALL * STREAM_LENGTH
    if len(responses) != 1 or not isinstance(responses[0], pb.StreamingInputCallResponse):
        return f"expected one StreamingInputCallResponse, got {len(responses)} messages"
    got = responses[0].aggregated_payload_size
    return None if got == expected else f"aggregated_payload_size is {got}, expected {expected}"


def _verify_stream(responses: Sequence[Message]) -> str | None:
    if len(responses) != STREAM_LENGTH:
        return f"got {len(responses)} responses, expected {STREAM_LENGTH}"
    for index, response in enumerate(responses):
        if not isinstance(response, pb.StreamingOutputCallResponse):
            return f"response {index} is a {type(response).__name__}"
        if len(response.payload.body) != SMALL:
            return f"response {index} payload is {len(response.payload.body)} bytes"
    return None


def _unary(
    name: str,
    size: int,
    in_flight: tuple[int, int],
    instructions: InstructionPlan,
    description: str,
    *,
    connection_per_call: bool = False,
    latency: bool = False,
) -> Workload:
    return Workload(
        name=name,
        method="UnaryCall",
        description=description,
        clients=in_flight[0],
        streams=in_flight[1],
        messages_per_call=1,
        instructions=instructions,
        requests=lambda: [
            pb.SimpleRequest(
                response_type=pb.COMPRESSABLE, response_size=size, payload=_payload(size)
            )
        ],
        responses=lambda: [pb.SimpleResponse(payload=_payload(size))],
        verify=_verify_unary(size),
        connection_per_call=connection_per_call,
        latency=latency,
    )


# Concurrency choices (h2load -c clients x -m streams per connection):
# * unary-100B: 4 connections x 64 streams = 256 calls in flight.  A few connections rather than
#   one because h2 (and so grpclib) advertises SETTINGS_MAX_CONCURRENT_STREAMS = 100 with no knob
#   to raise it; 64 per connection keeps every server inside its default limit, so all of them
#   really have 256 calls in flight instead of some silently queueing in h2load.
# * unary-1MiB: 1 connection x 8 streams: enough to keep the server busy, without holding
#   hundreds of MiB in flight on a 2-core machine.
# * streaming: 1 connection x 2 calls, so the next call's messages are already queued while the
#   server finishes the previous one; more would only queue.
# * connect-100B: 64 new connections at once, one call each, then the next 64: the accept, the
#   handshake (TLS with --tls) and the HTTP/2 setup of a connection are the work measured.
# Under callgrind one call of a streaming workload takes 2-20 s: the --instructions mode posts
# them one at a time (the difference of one call is still 10,000 messages).
_STREAM_INSTRUCTIONS = InstructionPlan(clients=1, streams=1, small=1, large=2)
WORKLOADS: tuple[Workload, ...] = (
    _unary(
        "unary-100B",
        SMALL,
        (4, 64),
        InstructionPlan(clients=4, streams=64, small=256, large=1024),
        "UnaryCall, 100-byte request and response, 256 in flight (W1: latency percentiles)",
        latency=True,
    ),
    _unary(
        "unary-1MiB",
        LARGE,
        (1, 8),
        InstructionPlan(clients=1, streams=8, small=8, large=24),
        "UnaryCall, 1 MiB request and response, 8 in flight",
    ),
    Workload(
        name="client-stream",
        method="StreamingInputCall",
        description=f"StreamingInputCall, {STREAM_LENGTH:,} x 100-byte requests per call",
        clients=1,
        streams=2,
        messages_per_call=STREAM_LENGTH,
        instructions=_STREAM_INSTRUCTIONS,
        requests=lambda: [pb.StreamingInputCallRequest(payload=_payload(SMALL))] * STREAM_LENGTH,
        responses=lambda: [
            pb.StreamingInputCallResponse(aggregated_payload_size=SMALL * STREAM_LENGTH)
        ],
        verify=_verify_aggregate,
    ),
    Workload(
        name="server-stream",
        method="StreamingOutputCall",
        description=f"StreamingOutputCall, {STREAM_LENGTH:,} x 100-byte responses per call",
        clients=1,
        streams=2,
        messages_per_call=STREAM_LENGTH,
        instructions=_STREAM_INSTRUCTIONS,
        requests=lambda: [
            pb.StreamingOutputCallRequest(
                response_type=pb.COMPRESSABLE,
                response_parameters=[pb.ResponseParameters(size=SMALL)] * STREAM_LENGTH,
            )
        ],
        responses=lambda: [pb.StreamingOutputCallResponse(payload=_payload(SMALL))] * STREAM_LENGTH,
        verify=_verify_stream,
    ),
    _unary(
        "connect-100B",
        SMALL,
        (64, 1),
        InstructionPlan(clients=64, streams=1, small=64, large=256),
        "a new connection per 100-byte UnaryCall, 64 connections opened at once",
        connection_per_call=True,
    ),
)
"""Every workload, in the order they run."""

WORKLOADS_BY_NAME: dict[str, Workload] = {workload.name: workload for workload in WORKLOADS}
"""Workloads keyed by their command-line name."""
