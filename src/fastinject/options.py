"""Server settings: every limit and timer with its default, and grpcio's option tuples.

:class:`ServerSettings` is the user-facing settings reference.  A server is configured either
with keyword settings (``Server(max_receive_message_length=8 << 20)``) or with the
``options=[("grpc.max_receive_message_length", 8 << 20)]`` tuples grpcio servers already use;
:meth:`ServerSettings.from_options` maps the latter onto the former.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .compression import Compression, coerce_compression

logger = logging.getLogger(__name__)

UNLIMITED_MESSAGE_LENGTH = sys.maxsize
"""The message-length limit that means "unlimited" (what grpc's ``-1`` maps to)."""

_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1


@dataclasses.dataclass(frozen=True, slots=True)
class ServerSettings:
    """The limits and timers of a server; times are in seconds, sizes in bytes.

    Each setting, its default and the grpcio option that sets it:

    ``max_receive_message_length`` = 4 MiB (``grpc.max_receive_message_length``)
        Largest request message accepted, after decompression; a larger one fails the call
        with ``RESOURCE_EXHAUSTED``.  ``-1`` in the option means unlimited
        (:data:`UNLIMITED_MESSAGE_LENGTH`).
    ``max_send_message_length`` = 2**31 - 1 (``grpc.max_send_message_length``)
        Largest response message a handler may send (``RESOURCE_EXHAUSTED`` otherwise);
        ``-1`` in the option means unlimited.
    ``max_partial_message_bytes`` = 32 MiB (no grpcio option)
        Bytes one connection may hold for request messages still being received, summed over
        its streams (each stream's buffer grows with the bytes that arrive: at most twice
        them, or the declared length once half is here).  The stream whose bytes take the
        connection past it fails with ``RESOURCE_EXHAUSTED`` and its buffer is dropped; the
        connection and its other calls go on.  One message of ``max_receive_message_length``
        always fits: the limit applied is at least that plus its 5-byte prefix.
    ``max_server_partial_message_bytes`` = 32 MiB (no grpcio option)
        The same bytes summed over every connection of the server (ports and injectors).
        Past it, the connection holding the most loses the call holding bytes the longest
        (it fails with ``RESOURCE_EXHAUSTED`` and drops its buffer), again until the sum is
        back within it: the peer piling up half messages pays, not the client whose message
        arrives next.
        At least one message of ``max_receive_message_length`` plus its prefix.
    ``max_concurrent_streams`` = 1000 (``grpc.max_concurrent_streams``)
        HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: RPCs one client connection may run at once.
    ``max_header_list_size`` = 16 KiB (``grpc.absolute_max_metadata_size``)
        HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: the largest request header block (metadata
        included, sized as HTTP/2 does: 32 bytes more per field).  A larger one fails its call
        with ``RESOURCE_EXHAUSTED`` (as grpc does; the connection lives on); one over four
        times the limit is not even decoded and ends the connection with GOAWAY
        ENHANCE_YOUR_CALM.  ``grpc.max_metadata_size`` (grpc's "soft" limit) sets it too; the
        absolute one wins when both are given.
    ``initial_stream_window_size`` = 1 MiB (``grpc.http2.lookahead_bytes``)
        HTTP/2 flow-control window of each stream: request bytes a client may send ahead of
        the handler reading them.  At least 1.
    ``initial_connection_window_size`` = 16 MiB (no grpcio option)
        Flow-control window of the whole connection; at least 65535.
    ``max_frame_size`` = 16384 (``grpc.http2.max_frame_size``)
        HTTP/2 SETTINGS_MAX_FRAME_SIZE, from 16384 to 16777215.
    ``keepalive_time`` = 7200.0 (``grpc.keepalive_time_ms``)
        Time after which the server pings an idle client to check the connection;
        ``math.inf`` (``INT_MAX`` ms in the option) disables keepalive pings.
    ``keepalive_timeout`` = 20.0 (``grpc.keepalive_timeout_ms``)
        Time to wait for the keepalive ping's ack before closing the connection.
    ``keepalive_permit_without_calls`` = False (``grpc.keepalive_permit_without_calls``)
        Whether clients may send keepalive pings while they have no RPC in flight.
    ``min_ping_interval_without_data`` = 300.0 (``grpc.http2.min_ping_interval_without_data_ms``)
        Shortest interval between client pings, while the server sends no data, that does
        not count as a "ping strike".
    ``max_ping_strikes`` = 2 (``grpc.http2.max_ping_strikes``)
        Ping strikes tolerated before the server sends GOAWAY ``too_many_pings``; 0 means
        no limit.
    ``max_connection_idle`` = None (``grpc.max_connection_idle_ms``)
        Close a connection (GOAWAY) once it has had no RPC for this long; None: never.
    ``max_connection_age`` = None (``grpc.max_connection_age_ms``)
        Gracefully close connections this old (with +/-10% jitter); None: never.
    ``max_connection_age_grace`` = None (``grpc.max_connection_age_grace_ms``)
        After the maximum age, how long RPCs in flight may still run before they are
        cancelled; None: as long as they need.
    ``default_compression`` = NoCompression (``grpc.default_compression_algorithm``, or the
    server's ``compression=`` argument)
        Compression of responses unless a call chooses otherwise; used only when the client
        accepts the algorithm and it is enabled (below).  Any value
        :func:`~fastinject.compression.coerce_compression` takes (e.g. ``grpc.Compression.Gzip``).
    ``enabled_compression`` = every algorithm (``grpc.compression_enabled_algorithms_bitset``)
        The algorithms the server accepts in requests and may compress responses with (an
        iterable of compression values; the option is grpc's bitset, bit ``1 << algorithm``).
        No compression is always enabled.  As in grpc core, a request compressed with a
        disabled algorithm fails with ``UNIMPLEMENTED`` ("Compression algorithm 'gzip' is
        disabled."), ``grpc-accept-encoding`` lists only the enabled ones, and responses are
        never compressed with a disabled one (they go uncompressed).
    ``handshake_timeout`` = 120.0 (``grpc.server_handshake_timeout_ms``)
        Time a new connection has, from its arrival, to complete its TLS handshake and send
        the HTTP/2 client preface and its first SETTINGS frame (one deadline for both, as
        grpc core); closed when missed.
    ``max_pending_handshakes`` = 1000 (no grpc option)
        Connections that may be not serving yet at once (in their TLS handshake, or before
        their preface and SETTINGS; plaintext too), over all ports and injectors; past it the
        oldest one is dropped (a peer that is slow on purpose holds one longest), so a flood
        of silent connections cannot shut out real clients.
    ``max_decompression_rate`` = 64 MiB (no grpcio option)
        Bytes of decompression work per second per connection (compressed bytes read plus
        bytes produced); a message may overdraw it.  While it is overdrawn the connection's
        next compressed message waits for it; one that would wait over a second fails its
        call with ``RESOURCE_EXHAUSTED``.  0: no limit.
    ``max_decompression_overrun`` = 5.0 (no grpcio option)
        Seconds a connection may stay over its decompression budget (its messages waiting
        or refused) before it ends with GOAWAY ENHANCE_YOUR_CALM (``too_much_decompression``).
    ``peer_log_interval`` = 10.0 (no grpcio option)
        Per connection, at most one log line at WARNING or above (such as a handler's
        exception traceback) per this many seconds; the lines in between are counted and the
        count is logged with the next line or when the connection closes.  0: no limit.
    ``so_reuseport`` = True (``grpc.so_reuseport``)
        Set SO_REUSEPORT on listening sockets where the platform has it (grpcio's default);
        ``("grpc.so_reuseport", 0)`` makes binding a port that is in use fail.

    Defences against hostile peers (``docs/SECURITY.md``; no grpcio options):

    ``stream_reset_burst`` = 1000, ``stream_reset_rate`` = 33.0
        Rapid reset (CVE-2023-44487): a connection may reset (RST_STREAM), or open without a
        valid request, ``stream_reset_burst`` streams at once, and ``stream_reset_rate`` more per
        second after that (nghttp2's defaults); past it the connection ends with GOAWAY
        ENHANCE_YOUR_CALM ``too_many_resets``.
    ``useless_frame_burst`` = 1000, ``useless_frame_rate`` = 33.0
        The same kind of budget for frames that carry no call: SETTINGS, PRIORITY, GOAWAY,
        unknown frame types, empty DATA without END_STREAM, DATA for no call, empty
        CONTINUATION, and WINDOW_UPDATE beyond two per DATA frame sent (nghttp2's "glitches").
        Past it: GOAWAY ENHANCE_YOUR_CALM ``too_many_useless_frames``.
    ``max_frames_per_turn`` = 256, ``min_frames_per_turn`` = 32
        Frames the server's connections handle together per event-loop turn, a HEADERS frame
        counting as 8 (it starts a call).  A connection's share is the budget split among the
        connections that stopped with frames left the turn before (a lone busy connection
        gets it all); once a turn spent the budget, a connection still reading gets
        ``min_frames_per_turn``.  The rest waits, with reading paused, for a later turn, so
        busy connections cannot starve the others, however many they are.
    ``max_pending_control_frames`` = 10000
        Answers a client's frames oblige us to queue (SETTINGS and PING ACKs, RST_STREAM,
        rejections) while our output to it has not drained (grpc core's limit of "induced
        frames").  Past it: GOAWAY ENHANCE_YOUR_CALM ``too_many_pending_control_frames``.
        Independently, a connection whose unsent output is over the transport's high-water
        mark is not read from until it drains.

    Millisecond options are converted to seconds, and ``INT_MAX`` milliseconds (grpc's
    "infinite") to None (``math.inf`` for ``keepalive_time``); likewise ``math.inf`` given for
    an optional duration becomes None.  Every value is checked when the settings are made: a
    wrong type or an out-of-range value raises :class:`ValueError` naming the setting.
    """

    max_receive_message_length: int = 4 * 1024 * 1024
    max_send_message_length: int = _INT32_MAX
    max_partial_message_bytes: int = 32 * 1024 * 1024
    max_server_partial_message_bytes: int = 32 * 1024 * 1024
    max_concurrent_streams: int = 1000
    max_header_list_size: int = 16 * 1024
    initial_stream_window_size: int = 1024 * 1024
    initial_connection_window_size: int = 16 * 1024 * 1024
    max_frame_size: int = 16384
    keepalive_time: float = 7200.0
    keepalive_timeout: float = 20.0
    keepalive_permit_without_calls: bool = False
    min_ping_interval_without_data: float = 300.0
    max_ping_strikes: int = 2
    max_connection_idle: float | None = None
    max_connection_age: float | None = None
    max_connection_age_grace: float | None = None
    default_compression: Compression = Compression.NoCompression
    enabled_compression: frozenset[Compression] = frozenset(Compression)
    handshake_timeout: float = 120.0
    max_pending_handshakes: int = 1000
    max_decompression_rate: int = 64 * 1024 * 1024
    max_decompression_overrun: float = 5.0
    peer_log_interval: float = 10.0
    so_reuseport: bool = True
    stream_reset_burst: int = 1000
    stream_reset_rate: float = 33.0
    useless_frame_burst: int = 1000
    useless_frame_rate: float = 33.0
    max_frames_per_turn: int = 256
    min_frames_per_turn: int = 32
    max_pending_control_frames: int = 10000

    def __post_init__(self) -> None:
        for name in _LIMITS:
            object.__setattr__(self, name, _check(name, getattr(self, name)))
        if self.default_compression not in self.enabled_compression:
            # grpc core logs this too ("default compression algorithm ... not enabled").
            logger.warning(
                "default compression %s is not enabled (enabled_compression): responses "
                "are sent uncompressed unless a call chooses an enabled algorithm",
                self.default_compression.name,
            )

    @classmethod
    def from_options(
        cls, options: Sequence[tuple[str | bytes, Any]] | None = None, **settings: Any
    ) -> ServerSettings:
        """Settings from grpcio option tuples, overridden by keyword ``settings``.

        Option names may be ``str`` or ASCII ``bytes``, as grpcio takes them.  Known ``grpc.*``
        options are mapped onto fields (see the class docstring).  Any other option is
        ignored (grpc core ignores arguments it does not use) with one WARNING per name and
        process, so a setting that silently does nothing is seen; docs/MIGRATING.md lists
        grpc's server options and what fastinject does with each.  An unknown keyword raises
        :class:`TypeError`; a bad value raises :class:`ValueError` naming the option or setting.
        """
        unknown = [name for name in settings if name not in _FIELD_NAMES]
        if unknown:
            raise TypeError(f"unknown server setting(s): {', '.join(map(repr, unknown))}")
        given: dict[str, Any] = {}
        for item in options or ():
            name = _option_name(item)
            given[name] = item[1]  # a repeated option: the last one wins
        values: dict[str, Any] = {}
        for option, (field, convert) in _OPTIONS.items():
            if option in given:
                try:
                    values[field] = _check(field, convert(option, given.pop(option)))
                except ValueError as exc:
                    raise ValueError(f"option {option!r}: {exc}") from None
        for option in given:
            _warn_ignored(option)
        values.update(settings)
        return cls(**values)


def _option_name(item: object) -> str:
    """The name of one ``(name, value)`` option, a ``str`` or ASCII ``bytes`` name."""
    if isinstance(item, tuple) and len(item) == 2:
        name = item[0]
        if isinstance(name, str):
            return name
        if isinstance(name, bytes) and name.isascii():
            return name.decode("ascii")
    raise ValueError(f"options must be (name, value) pairs with a str or bytes name: {item!r}")


_warned_options: set[str] = set()


def _warn_ignored(option: str) -> None:
    if option not in _warned_options:
        _warned_options.add(option)
        logger.warning(
            "ignoring server option %r: fastinject does not implement it "
            "(see docs/MIGRATING.md)", option,
        )


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(ServerSettings))


class _Range(NamedTuple):
    # "int", "float", "rate" (a float per second), "duration?" (a float or None), "bool",
    # "compression" or "compression set"
    kind: str
    low: float = 0
    high: float = math.inf
    positive: bool = False  # low is exclusive (the value must be > 0)


_LIMITS: dict[str, _Range] = {
    "max_receive_message_length": _Range("int", 0, UNLIMITED_MESSAGE_LENGTH),
    "max_send_message_length": _Range("int", 0, UNLIMITED_MESSAGE_LENGTH),
    "max_partial_message_bytes": _Range("int", 0, UNLIMITED_MESSAGE_LENGTH),
    "max_server_partial_message_bytes": _Range("int", 0, UNLIMITED_MESSAGE_LENGTH),
    "max_concurrent_streams": _Range("int", 0, _UINT32_MAX),
    "max_header_list_size": _Range("int", 1, _UINT32_MAX),
    "initial_stream_window_size": _Range("int", 1, _INT32_MAX),
    "initial_connection_window_size": _Range("int", 65535, _INT32_MAX),
    "max_frame_size": _Range("int", 16384, 16777215),
    "keepalive_time": _Range("float", positive=True),
    "keepalive_timeout": _Range("float", positive=True),
    "keepalive_permit_without_calls": _Range("bool"),
    "min_ping_interval_without_data": _Range("float"),
    "max_ping_strikes": _Range("int", 0, _INT32_MAX),
    "max_connection_idle": _Range("duration?", positive=True),
    "max_connection_age": _Range("duration?", positive=True),
    "max_connection_age_grace": _Range("duration?"),
    "default_compression": _Range("compression"),
    "enabled_compression": _Range("compression set"),
    "handshake_timeout": _Range("float", positive=True),
    "max_pending_handshakes": _Range("int", 1, _INT32_MAX),
    "max_decompression_rate": _Range("int", 0, UNLIMITED_MESSAGE_LENGTH),
    "max_decompression_overrun": _Range("float"),
    "peer_log_interval": _Range("float"),
    "so_reuseport": _Range("bool"),
    "stream_reset_burst": _Range("int", 1, _INT32_MAX),
    "stream_reset_rate": _Range("rate"),
    "useless_frame_burst": _Range("int", 1, _INT32_MAX),
    "useless_frame_rate": _Range("rate"),
    "max_frames_per_turn": _Range("int", 1, _INT32_MAX),
    "min_frames_per_turn": _Range("int", 1, _INT32_MAX),
    "max_pending_control_frames": _Range("int", 1, _INT32_MAX),
}


def _check(name: str, value: Any) -> Any:
    """``value`` checked (and normalised) for setting ``name``; ValueError names the setting."""
    kind, low, high, positive = _LIMITS[name]
    if kind.startswith("compression"):
        try:
            if kind == "compression":
                return coerce_compression(value)
            if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                raise ValueError(f"expected an iterable of algorithms, not {value!r}")
            return frozenset({Compression.NoCompression, *map(coerce_compression, value)})
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, not {value!r}")
        return value
    if kind == "duration?" and (value is None or value == math.inf):
        return None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int" and not (is_number and isinstance(value, int)):
        raise ValueError(f"{name} must be an int, not {value!r}")
    if not is_number:
        unit = "events per second" if kind == "rate" else "seconds"
        raise ValueError(f"{name} must be a number of {unit}, not {value!r}")
    if math.isnan(value) or value < low or value > high or (positive and value <= 0):
        bounds = "> 0" if positive else f">= {low}"
        if high != math.inf:
            bounds += f" and <= {high}"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return int(value) if kind == "int" else float(value)


# -- grpcio options ---------------------------------------------------------------------------


def _option_int(option: str, value: Any) -> int:
    # grpcio passes any Python int (bool included) through as an integer channel argument.
    if not isinstance(value, int):
        raise ValueError(f"must be an int, not {value!r}")
    return int(value)


def _message_length(option: str, value: Any) -> int:
    number = _option_int(option, value)
    if number == -1:
        return UNLIMITED_MESSAGE_LENGTH
    if number < 0:
        raise ValueError(f"must be >= 0 or -1 (unlimited), got {number}")
    return number


def _milliseconds(option: str, value: Any) -> float:
    number = _option_int(option, value)
    if number < 0:
        raise ValueError(f"must be >= 0 milliseconds, got {number}")
    return number / 1000


def _milliseconds_or_infinite(option: str, value: Any) -> float | None:
    number = _option_int(option, value)
    return None if number >= _INT32_MAX else _milliseconds(option, number)


def _keepalive_time(option: str, value: Any) -> float:
    number = _option_int(option, value)
    return math.inf if number >= _INT32_MAX else _milliseconds(option, number)


def _flag(option: str, value: Any) -> bool:
    return bool(_option_int(option, value))


def _compression(option: str, value: Any) -> Compression:
    return coerce_compression(value)


def _compression_bitset(option: str, value: Any) -> frozenset[Compression]:
    bits = _option_int(option, value)
    if bits < 0:
        raise ValueError(f"must be a bitset >= 0, got {bits}")
    return frozenset(algorithm for algorithm in Compression if bits & (1 << algorithm))


# option -> (field, converter).  The order matters where two options set one field: the
# later entry wins (grpc.absolute_max_metadata_size over grpc.max_metadata_size).
_OPTIONS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "grpc.max_receive_message_length": ("max_receive_message_length", _message_length),
    "grpc.max_send_message_length": ("max_send_message_length", _message_length),
    "grpc.max_concurrent_streams": ("max_concurrent_streams", _option_int),
    "grpc.max_metadata_size": ("max_header_list_size", _option_int),
    "grpc.absolute_max_metadata_size": ("max_header_list_size", _option_int),
    "grpc.http2.lookahead_bytes": ("initial_stream_window_size", _option_int),
    "grpc.http2.max_frame_size": ("max_frame_size", _option_int),
    "grpc.keepalive_time_ms": ("keepalive_time", _keepalive_time),
    "grpc.keepalive_timeout_ms": ("keepalive_timeout", _milliseconds),
    "grpc.keepalive_permit_without_calls": ("keepalive_permit_without_calls", _flag),
    "grpc.http2.min_ping_interval_without_data_ms": (
        "min_ping_interval_without_data",
        _milliseconds,
    ),
    "grpc.http2.max_ping_strikes": ("max_ping_strikes", _option_int),
    "grpc.max_connection_idle_ms": ("max_connection_idle", _milliseconds_or_infinite),
    "grpc.max_connection_age_ms": ("max_connection_age", _milliseconds_or_infinite),
    "grpc.max_connection_age_grace_ms": ("max_connection_age_grace", _milliseconds_or_infinite),
    "grpc.default_compression_algorithm": ("default_compression", _compression),
    "grpc.compression_enabled_algorithms_bitset": ("enabled_compression", _compression_bitset),
    "grpc.server_handshake_timeout_ms": ("handshake_timeout", _milliseconds),
    "grpc.so_reuseport": ("so_reuseport", _flag),
}

GRPC_OPTIONS: frozenset[str] = frozenset(_OPTIONS)
"""The grpcio option names :meth:`ServerSettings.from_options` understands."""

__all__ = ["GRPC_OPTIONS", "UNLIMITED_MESSAGE_LENGTH", "ServerSettings"]
