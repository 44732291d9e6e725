"""``h2`` tuned for a gRPC server's hot path.

Profiling a unary benchmark showed two thirds of the server's CPU inside h2 and hpack, most of
it re-encoding and re-decoding header blocks that repeat on every call: clients send the same
request headers, and we send the same response headers and ``grpc-status: 0`` trailers.
The connection's HPACK coders are therefore :mod:`fastinject._hpack`'s memoising ones,
which remember blocks per dynamic-table state, across the connections of the process.

h2 also formats ``repr(frame)`` for a trace log line on every received frame, whether or not
anything logs, and hyperframe's DATA repr hex-encodes the whole payload: a fifth of the CPU of
a 1 MiB call.  Received frames are therefore given classes with a cheap repr.

Even then, h2 builds a frame object, two state-machine transitions and an event for every
16 KiB DATA frame, in both directions: two thirds of a 1 MiB call's CPU.  A DATA frame on an
open stream only moves flow-control windows and perhaps the stream's state, so
:meth:`TunedH2Connection.accept_data` and :meth:`TunedH2Connection.send_data_frames` do that
on h2's own counters and state machines and let the caller handle the bytes.  Likewise
:meth:`TunedH2Connection.send_header_block` writes response headers and trailers after the
same state transitions h2 makes, without h2's frame objects (a third of a small unary call's
CPU went there), and :meth:`TunedH2Connection.receive_request` opens a call's stream from its
request header block; both move the stream with :mod:`fastinject._h2streams`, which builds a
plain request's stream as a copy of one h2 built and makes the response's transitions without
h2's state-machine lookups.  Every other frame still goes through h2, which keeps its state
exact.
New connections are copies of a started one (:meth:`TunedH2Connection.started`).
Large DATA payloads are not copied into h2's output buffer:
:meth:`TunedH2Connection.buffers_to_send` hands them to the transport as views, in order.
"""

from __future__ import annotations

import enum
import struct
from importlib import metadata
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import h2.windows
import hpack
import hyperframe.frame

from .stream import SendQueue

SUPPORTED_H2 = ">=4.1,<4.5"
"""The h2 versions whose internals this module was checked against (CI runs the oldest and
newest); keep in step with the dependency in ``pyproject.toml``."""

# What this module uses of h2 and hpack beyond their public API, by the object that has it.
_H2_INTERNALS: dict[str, tuple[object, tuple[str, ...]]] = {
    "h2.connection": (
        h2.connection,
        ("AllowedStreamIDs", "ConnectionInputs", "ConnectionState", "_decode_headers"),
    ),
    "h2.stream": (
        h2.stream,
        ("StreamClosedBy", "StreamInputs", "StreamState", "H2Stream", "H2StreamStateMachine"),
    ),
    "h2.windows": (h2.windows, ("WindowManager",)),
    "h2.utilities": (h2.utilities, ("guard_increment_window",)),
    "H2Connection": (
        h2.connection.H2Connection,
        ("_receive_frame", "_receive_data_frame", "_receive_goaway_frame",
         "_receive_headers_frame", "_begin_new_stream", "_prepare_for_sending",
         "_terminate_connection", "_local_settings_acked", "_receive_settings_frame",
         "open_inbound_streams", "_stream_closed_by",
         "DEFAULT_MAX_HEADER_LIST_SIZE"),
    ),
    "H2Stream": (
        h2.stream.H2Stream,
        ("acknowledge_received_data", "reset_stream", "open", "closed", "closed_by",
         "inbound_flow_control_window"),
    ),
}
# Instance attributes, looked up on a connection and a stream made for the check.
_CONNECTION_ATTRIBUTES = (
    "_frame_dispatch_table", "_inbound_flow_control_window_manager", "_data_to_send",
    "incoming_buffer", "state_machine", "streams", "local_settings", "highest_inbound_stream_id",
    "outbound_flow_control_window", "max_outbound_frame_size", "max_inbound_frame_size",
)
_STREAM_ATTRIBUTES = (
    "state_machine", "_expected_content_length", "_actual_content_length",
    "_inbound_window_manager", "outbound_flow_control_window",
)
# Every attribute of a new H2Connection, by what a connection copied from a started prototype
# (TunedH2Connection.started) gets: made afresh, a copy of the prototype's, the prototype's
# own (immutable values), or bound from the prototype's when looked up (_FrameHandlers).  The
# check fails on any other, which the copy would share.
_FRESH_ATTRIBUTES = frozenset({
    "streams", "encoder", "decoder", "incoming_buffer", "_header_frames", "_closed_streams",
})
_COPIED_ATTRIBUTES = frozenset({
    "state_machine", "local_settings", "remote_settings", "_inbound_flow_control_window_manager",
    "_data_to_send",
})
_SHARED_ATTRIBUTES = frozenset({
    "config", "highest_inbound_stream_id", "highest_outbound_stream_id",
    "outbound_flow_control_window", "max_outbound_frame_size", "max_inbound_frame_size",
})
_BOUND_ATTRIBUTES = frozenset({"_frame_dispatch_table"})
_KNOWN_ATTRIBUTES = (
    _FRESH_ATTRIBUTES | _COPIED_ATTRIBUTES | _SHARED_ATTRIBUTES | _BOUND_ATTRIBUTES
)
# Everything TunedH2Connection._copy provides: h2's attributes and our own.
_COPIED_STATE = _KNOWN_ATTRIBUTES | {"_buffers", "data_frames_sent", "_prototype"}


_CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 section 3.4


def _uncopyable(connection: Any) -> list[str]:
    """What keeps ``connection`` from being copied as :meth:`TunedH2Connection.started` does."""
    names = vars(connection).keys()
    problems = [f"H2Connection().{name} (unknown state)" for name in names - _KNOWN_ATTRIBUTES]
    problems += [f"H2Connection().{name}" for name in _KNOWN_ATTRIBUTES - names]
    for name in ("state_machine", "_inbound_flow_control_window_manager"):
        part = getattr(connection, name, None)
        if part is not None and not all(
            isinstance(value, int | enum.Enum) for value in vars(part).values()
        ):
            problems.append(f"H2Connection().{name} (state other than numbers)")
    settings = getattr(connection, "local_settings", None)
    # h2 4.4 added ``_client`` (a bool) beside ``_settings``; the copy takes any such value.
    if settings is not None and not (
        isinstance(vars(settings).get("_settings"), dict)
        and all(isinstance(value, bool | int) for name, value in vars(settings).items()
                if name != "_settings")
    ):
        problems.append("Settings()._settings (other state)")
    return problems


class UnsupportedH2Error(ImportError):
    """The installed h2 lacks internals fastinject's h2 tuning relies on."""


def check_h2_internals() -> None:
    """Raise :class:`UnsupportedH2Error` naming the h2 version and what it lacks, if anything.

    fastinject subclasses ``H2Connection`` and drives its state machines directly on the hot
    path (see the module docstring): an h2 release that renames one of these would otherwise
    fail deep inside a call, or worse, silently skip flow-control accounting.
    """
    missing = [
        f"{owner}.{name}"
        for owner, (holder, names) in _H2_INTERNALS.items()
        for name in names
        if not hasattr(holder, name)
    ]
    try:
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        connection.initiate_connection()
        stream = connection._begin_new_stream(1, h2.connection.AllowedStreamIDs.ODD)
    except Exception as exc:  # any failure here means the internals moved
        missing.append(f"H2Connection._begin_new_stream(1, ODD) ({exc!r})")
    else:
        missing += [
            f"H2Connection().{name}" for name in _CONNECTION_ATTRIBUTES
            if not hasattr(connection, name)
        ]
        missing += [
            f"H2Stream().{name}" for name in _STREAM_ATTRIBUTES if not hasattr(stream, name)
        ]
        if not hasattr(connection.incoming_buffer, "_headers_buffer"):
            missing.append("FrameBuffer()._headers_buffer")
        preamble = vars(connection.incoming_buffer)
        if (preamble.get("_preamble"), preamble.get("_preamble_len")) != (
            _CLIENT_PREFACE, len(_CLIENT_PREFACE)
        ):
            missing.append("FrameBuffer()._preamble and _preamble_len")
        if not hasattr(stream.state_machine, "trailers_sent"):
            missing.append("H2StreamStateMachine().trailers_sent")
        if not hasattr(stream._inbound_window_manager, "current_window_size"):
            missing.append("WindowManager().current_window_size")
        missing += _uncopyable(connection)
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    table = getattr(encoder, "header_table", None)
    missing += [
        f"hpack.Encoder().header_table.{name}"
        for name in ("dynamic_entries", "_current_size", "_maxsize", "maxsize", "resized")
        if not hasattr(table, name)
    ]
    if not hasattr(encoder, "table_size_changes"):
        missing.append("hpack.Encoder().table_size_changes")
    if not hasattr(decoder, "max_allowed_table_size"):
        missing.append("hpack.Decoder().max_allowed_table_size")
    # receive_request skips the connection's transition that changes nothing.
    states = getattr(h2.connection, "ConnectionState", None)
    inputs = getattr(h2.connection, "ConnectionInputs", None)
    transitions = getattr(h2.connection.H2ConnectionStateMachine, "_transitions", {})
    if states is not None and inputs is not None and transitions.get(
        (states.SERVER_OPEN, inputs.RECV_HEADERS)
    ) != (None, states.SERVER_OPEN):
        missing.append("H2ConnectionStateMachine._transitions[SERVER_OPEN, RECV_HEADERS]")
    if not missing:  # streams opened and answered without h2's stream code (_h2streams)
        from ._h2streams import check_stream_paths

        missing += check_stream_paths()
    if missing:
        raise UnsupportedH2Error(
            f"h2 {metadata.version('h2')} (hpack {metadata.version('hpack')}) is not supported: "
            f"fastinject relies on h2 internals it lacks: {', '.join(missing)}. "
            f"Install h2{SUPPORTED_H2}."
        )


check_h2_internals()

from h2.connection import (  # noqa: E402  (after the check, which names what is missing)
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    _decode_headers,
)
from h2.stream import StreamClosedBy, StreamInputs, StreamState  # noqa: E402
from h2.utilities import guard_increment_window  # noqa: E402

from ._h2streams import (  # noqa: E402
    H2_ONLY,
    open_request_stream,
    receive_end_stream,
    request_length,
    send_headers,
)
from ._hpack import CachingDecoder, CachingEncoder  # noqa: E402

# A frame header: length (high byte, low 16 bits), type, flags, stream id.
_FRAME_HEADER = struct.Struct(">BHBBI")
_HEADERS_TYPE = 0x1
_CONTINUATION_TYPE = 0x9
_END_STREAM = 0x1
_END_HEADERS = 0x4
# Stream states in which a server may send DATA (the request side may still be open or not).
_SENDING_STATES = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


_MAX_WINDOW = 2**31 - 1  # a flow-control window's largest size, and an update's (RFC 9113 6.9)

# Started connections to copy, by (config, settings, extra window): see TunedH2Connection.started.
_prototypes: dict[tuple[Any, ...], TunedH2Connection] = {}
_MAX_PROTOTYPES = 16
# What a client's first SETTINGS payload does to a copy of a prototype, by (prototype, payload):
# see TunedH2Connection.receive_first_settings.
_settings_effects: dict[tuple[Any, bytes], tuple[Any, ...] | None] = {}
# Longer first SETTINGS payloads (over 16 settings) go to h2 and are not remembered: with a large
# max_frame_size, 16 remembered payloads could otherwise hold hundreds of MiB.
_MAX_REMEMBERED_SETTINGS = 16 * 6


class _QuietRepr:
    """A received frame whose repr costs nothing.

    h2 formats ``repr(frame)`` for a trace line on every frame it receives, logged or not;
    hyperframe's repr formats the flags and body (and hex-encodes a DATA payload).
    """

    stream_id: int

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stream_id={self.stream_id})"


# Every frame class hyperframe parses, and its quiet twin (same name, same layout).
_QUIET_FRAMES: dict[type, type] = {
    frame_type: type(frame_type.__name__, (_QuietRepr, frame_type), {})
    for frame_type in (*hyperframe.frame.FRAMES.values(), hyperframe.frame.ExtensionFrame)
}


class StreamRefused(h2.events.Event):
    """A stream beyond SETTINGS_MAX_CONCURRENT_STREAMS was refused (RST_STREAM REFUSED_STREAM)."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class _SharedSettings(h2.settings.Settings):
    """h2's ``Settings`` of a connection copied from a prototype, its values shared until changed.

    h2 keeps a deque of values per setting (the current one and those waiting for an
    acknowledgement); copying them for our and the client's settings was a tenth of a new
    connection's instructions.  A copy shares the prototype's values, or those of the other
    connections that received the same first SETTINGS, and copies them when h2 changes them.
    Acknowledging shared values is remembered: every connection whose client acknowledges our
    SETTINGS then shares the acknowledged values.
    """

    _shared: bool  # _settings is shared with other Settings objects: copy before changing it

    def _own(self) -> None:
        if self._shared:
            self._settings = {code: values.copy() for code, values in self._settings.items()}
            self._shared = False

    def share(self, values: dict[Any, Any]) -> None:
        """Take ``values`` (a ``_settings`` dict that is not to change any more) as they are."""
        self._settings = values
        self._shared = True

    def __setitem__(self, key: Any, value: int) -> None:
        self._own()
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._own()
        super().__delitem__(key)

    def acknowledge(self) -> dict[Any, Any]:
        """As h2's; the outcome for shared values is computed once and shared in turn."""
        if not self._shared:
            return super().acknowledge()
        pending = self._settings
        known = _acknowledged.get(id(pending))
        if known is None or known[0] is not pending:
            self._own()
            changes = super().acknowledge()
            if len(_acknowledged) >= _MAX_PROTOTYPES:
                _acknowledged.clear()
            known = _acknowledged[id(pending)] = (pending, self._settings, changes)
        self.share(known[1])
        return dict(known[2])


# What acknowledging shared settings values does, by id of those values: (the values, the
# acknowledged values, the changes); see _SharedSettings.acknowledge.
_acknowledged: dict[int, tuple[dict[Any, Any], dict[Any, Any], dict[Any, Any]]] = {}


class _FrameHandlers:
    """The ``_frame_dispatch_table`` of a connection copied from a prototype.

    h2 looks a received frame's handler up in a table of bound methods made per connection.
    A copy binds the prototype's handler when h2 looks it up instead: the table (26 methods,
    with the quiet frame classes) cost a dict per connection and a reference cycle that only
    the garbage collector could free, for the few frames a connection hands to h2.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: TunedH2Connection | None = None) -> None:
        self._connection = connection

    def __get__(self, connection: TunedH2Connection | None, owner: type) -> _FrameHandlers:
        return self if connection is None else _FrameHandlers(connection)

    def __getitem__(self, frame_type: type) -> Any:
        connection = self._connection
        assert connection is not None  # looked up on a connection, not on the class
        prototype = connection._prototype
        assert prototype is not None  # a connection without one has its own table
        return prototype._frame_dispatch_table[frame_type].__func__.__get__(connection)


class TunedH2Connection(h2.connection.H2Connection):
    """An ``H2Connection`` with memoising HPACK coders and cheap open-stream counting."""

    # A connection made by __init__ (a prototype) has its own table, which hides this one.
    _frame_dispatch_table = _FrameHandlers()  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.config
        if (config.validate_inbound_headers or config.normalize_inbound_headers
                or config.header_encoding):
            # receive_request hands on headers as decoded, and opens plain requests' streams
            # as h2 does only then.
            raise ValueError("TunedH2Connection keeps received headers as they came: "
                             "no inbound validation, normalization or header_encoding")
        self.encoder = CachingEncoder()
        self.decoder = CachingDecoder()
        self.decoder.max_header_list_size = self.DEFAULT_MAX_HEADER_LIST_SIZE
        table: dict[type, Any] = self.__dict__["_frame_dispatch_table"]  # h2's, made above
        table.update({quiet: table[loud] for loud, quiet in _QUIET_FRAMES.items() if loud in table})
        # Output that precedes ``_data_to_send``: large payload views and the bytes before them.
        self._buffers: list[bytes | memoryview] = []
        self.data_frames_sent = 0
        self._prototype: TunedH2Connection | None = None  # what this one is a copy of

    @classmethod
    def started(
        cls,
        config: h2.config.H2Configuration,
        settings: tuple[tuple[int, int], ...],
        extra_window: int,
    ) -> TunedH2Connection:
        """A new server connection with its SETTINGS (and window increment) queued.

        As ``initiate_connection()``, ``update_settings(dict(settings))`` and
        ``increment_flow_control_window(extra_window)`` (if positive) leave one; ``settings``
        are (parameter, value) pairs, the parameters as ints.  Those calls
        build, validate and serialise the same frames for every connection (with h2's
        constructor, a sixth of a plaintext connection's CPU); the first connection of a
        configuration is made so and kept as a prototype, and later ones are copies of it.
        """
        key = (config, settings, extra_window)
        prototype = _prototypes.get(key)
        if prototype is None:
            prototype = cls(config=config)
            prototype.initiate_connection()
            prototype.update_settings(
                {h2.settings.SettingCodes(code): value for code, value in settings}
            )
            if extra_window > 0:
                prototype.increment_flow_control_window(extra_window)
            unknown = vars(prototype).keys() - _COPIED_STATE
            if unknown:  # a programming error: _copy must make or copy every attribute
                raise AssertionError(f"TunedH2Connection._copy does not know {sorted(unknown)}")
            if len(_prototypes) >= _MAX_PROTOTYPES:
                _prototypes.clear()
            _prototypes[key] = prototype
        return prototype._copy()

    def _copy(self) -> TunedH2Connection:
        """A connection in this one's state; it must not have received anything yet."""
        twin = object.__new__(type(self))
        state = twin.__dict__
        for name in _SHARED_ATTRIBUTES:
            state[name] = self.__dict__[name]
        for name in ("state_machine", "_inbound_flow_control_window_manager"):
            original = self.__dict__[name]
            copy = object.__new__(type(original))
            copy.__dict__.update(original.__dict__)
            state[name] = copy
        for name in ("local_settings", "remote_settings"):
            original = self.__dict__[name]
            settings = object.__new__(_SharedSettings)
            settings.__dict__.update(original.__dict__)
            settings.share(original._settings)
            state[name] = settings
        state["_data_to_send"] = bytearray(self._data_to_send)
        state["streams"] = {}
        state["encoder"] = CachingEncoder()
        state["decoder"] = decoder = CachingDecoder()
        decoder.max_header_list_size = self.DEFAULT_MAX_HEADER_LIST_SIZE
        state["incoming_buffer"] = type(self.incoming_buffer)(server=True)
        state["_header_frames"] = []
        # h2's SizeLimitDict, empty, made without its Python __init__ (which checks the size).
        closed_streams: Any = type(self._closed_streams)
        state["_closed_streams"] = closed = closed_streams.__new__(closed_streams)
        closed._size_limit = self.MAX_CLOSED_STREAMS
        state["_buffers"] = []
        state["data_frames_sent"] = 0
        state["_prototype"] = self
        return twin

    def receive_first_settings(self, payload: bytes | memoryview) -> bool:
        """Apply the client's first SETTINGS frame (no ACK, stream 0) as h2 would, from a memo.

        On a connection copied from a prototype that has received no SETTINGS and opened no
        stream, what a given SETTINGS payload does is the same for every connection: h2 does
        it once on a copy of the prototype, and its effect (connection state, the client's
        settings, our outbound frame size, the ACK queued) is replayed here.  Returns False,
        touching nothing, when h2 must see the frame itself: another kind of connection, a
        payload of over 16 settings, a header block in progress, or a payload h2 refuses or
        that changes anything else (our encoder's table size).
        """
        prototype = self._prototype
        if (
            prototype is None
            or len(payload) > _MAX_REMEMBERED_SETTINGS
            or self.streams
            or self.incoming_buffer._headers_buffer
            or self.state_machine.state is not prototype.state_machine.state
            or self.remote_settings._settings != prototype.remote_settings._settings
            or self.encoder.header_table.resized
            or self.encoder.table_size_changes
        ):
            return False
        key = (prototype, bytes(payload))
        if key not in _settings_effects:
            if len(_settings_effects) >= _MAX_PROTOTYPES:
                _settings_effects.clear()
            _settings_effects[key] = prototype._settings_effect(key[1])
        effect = _settings_effects[key]
        if effect is None:
            return False
        machine_state, remote, max_outbound_frame_size, ack = effect
        self.state_machine.state = machine_state
        cast(_SharedSettings, self.remote_settings).share(remote)
        self.max_outbound_frame_size = max_outbound_frame_size
        self._data_to_send += ack
        return True

    def _settings_effect(self, payload: bytes) -> tuple[Any, ...] | None:
        """What h2 does to a copy of this prototype for a SETTINGS frame with ``payload``."""
        twin = self._copy()
        frame = hyperframe.frame.SettingsFrame(0)
        try:
            frame.parse_body(memoryview(payload))
            frames, _ = twin._receive_settings_frame(frame)
        except Exception:  # h2 refuses it: let it see the frame and answer for itself
            return None
        twin._prepare_for_sending(frames)
        if twin.encoder.header_table.resized or twin.encoder.header_table_size != (
            self.encoder.header_table_size
        ):
            return None
        return (
            twin.state_machine.state,
            twin.remote_settings._settings,
            twin.max_outbound_frame_size,
            bytes(twin._data_to_send[len(self._data_to_send) :]),
        )

    def _receive_goaway_frame(self, frame: Any) -> Any:
        """Report a client's GOAWAY without closing h2's side of the connection.

        RFC 9113 section 6.8: GOAWAY only stops new streams.  h2 moves to its closed state and
        drops queued output, after which the responses of calls in flight could not be sent.
        """
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_frame(self, frame: Any) -> Any:
        quiet = _QUIET_FRAMES.get(frame.__class__)
        if quiet is not None:
            frame.__class__ = quiet
        return super()._receive_frame(frame)

    def _receive_headers_frame(self, frame: Any) -> Any:
        """Refuse a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS with RST_STREAM REFUSED_STREAM.

        RFC 9113 section 5.1.2 makes it a stream error; h2 raises TooManyStreamsError, a
        connection error that would end every call on the connection.  The header block is
        decoded all the same (the HPACK table is shared by every stream) and the stream id is
        used up, so later frames of the refused stream are answered as h2 answers frames of a
        stream it reset.  grpc core's server refuses such streams the same way.  The call was
        never processed: grpc-go, grpc-java and grpc-js retry it transparently; grpcio reports
        UNAVAILABLE, which its retry policy may retry.
        """
        if (frame.stream_id in self.streams
                or self.open_inbound_streams < self.local_settings.max_concurrent_streams):
            return super()._receive_headers_frame(frame)
        _decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._begin_new_stream(frame.stream_id, AllowedStreamIDs.ODD)
        stream.state_machine.process_input(StreamInputs.RECV_HEADERS)
        events.append(StreamRefused(frame.stream_id))
        return stream.reset_stream(h2.errors.ErrorCodes.REFUSED_STREAM), events

    def receive_request(
        self, stream_id: int, block: bytes | memoryview, end_stream: bool
    ) -> list[tuple[bytes, bytes]] | None:
        """Open a client stream for a request header block that came whole in one HEADERS frame.

        For an unpadded HEADERS frame without PRIORITY and with END_HEADERS: decodes the block,
        moves the connection and the new stream as h2's ``_receive_headers_frame`` does and
        returns the headers, without h2's frame parsing, frame object and dispatch.  Returns
        None, touching nothing, when h2 must see the frame itself: the stream is not a new
        client stream, another header block is in progress, the connection is closed, or the
        stream would exceed SETTINGS_MAX_CONCURRENT_STREAMS (refused there).  Errors are h2's:
        GOAWAY is queued and :class:`h2.exceptions.ProtocolError` raised.
        """
        if (
            stream_id <= self.highest_inbound_stream_id
            or not stream_id & 1
            or self.incoming_buffer._headers_buffer
            or self.state_machine.state is ConnectionState.CLOSED
            or self.open_inbound_streams >= self.local_settings.max_concurrent_streams
        ):
            return None
        try:
            headers: Any = _decode_headers(self.decoder, block)  # type: ignore[arg-type]
            machine = self.state_machine
            if machine.state is not ConnectionState.SERVER_OPEN:  # the first call: h2 moves
                machine.process_input(ConnectionInputs.RECV_HEADERS)
            length = request_length(headers)
            if length != H2_ONLY:
                open_request_stream(self, stream_id, end_stream, length)
            else:
                stream = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
                stream.receive_headers(headers, end_stream, None)
        except h2.exceptions.ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise
        return headers  # type: ignore[no-any-return]

    def receive_preface(self, data: bytes | memoryview) -> bool:
        """Take the client's connection preface, whole, as h2's frame buffer does, without h2.

        Returns False, touching nothing, when h2 must check the bytes itself: they are not
        the preface (h2 refuses them), or part of it already went to h2.
        """
        buffer = self.incoming_buffer
        if buffer._preamble_len != len(_CLIENT_PREFACE) or data != _CLIENT_PREFACE:
            return False
        buffer._preamble = b""
        buffer._preamble_len = 0
        return True

    def receive_window_update(self, increment: int) -> bool:
        """Apply a WINDOW_UPDATE of the connection (stream 0) as h2 does for the frame.

        Widens the connection's send window, without h2's frame parsing, frame object and
        event.  Returns False, touching nothing, when h2 must see the frame itself (an
        increment h2 refuses: 0 or over 2^31-1; a header block in progress; the connection
        closed).  Errors are h2's: GOAWAY is queued and :class:`h2.exceptions.ProtocolError`
        raised (FlowControlError for a window past 2^31-1).
        """
        if (not 0 < increment <= _MAX_WINDOW or self.incoming_buffer._headers_buffer
                or self.state_machine.state is ConnectionState.CLOSED):
            return False
        try:
            self.state_machine.process_input(ConnectionInputs.RECV_WINDOW_UPDATE)
            self.outbound_flow_control_window = guard_increment_window(
                self.outbound_flow_control_window, increment
            )
        except h2.exceptions.ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise
        return True

    def receive_goaway(self) -> bool:
        """Whether a client's GOAWAY (stream 0, at least 8 bytes) may be taken without h2.

        h2 keeps no state for it (see :meth:`_receive_goaway_frame`): the caller reports it.
        False when a header block is in progress, which h2 refuses the frame inside.
        """
        return not self.incoming_buffer._headers_buffer

    def receive_settings_ack(self) -> bool:
        """Apply the client's acknowledgement of our SETTINGS, as h2 does for the frame.

        For an empty SETTINGS frame with ACK on stream 0: moves the connection's state machine
        and applies the acknowledged values with h2's ``_local_settings_acked``, without h2's
        frame parsing, frame object and event.  Returns False, touching nothing, when h2 must
        see the frame itself (a header block is in progress, or the connection is closed).
        Errors are h2's: GOAWAY is queued and :class:`h2.exceptions.ProtocolError` raised.
        """
        if (self.incoming_buffer._headers_buffer
                or self.state_machine.state is ConnectionState.CLOSED):
            return False
        try:
            self.state_machine.process_input(ConnectionInputs.RECV_SETTINGS)
            self._local_settings_acked()
        except h2.exceptions.ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise
        return True

    def accept_data(self, stream_id: int, length: int, end_stream: bool) -> bool:
        """Account for a received unpadded DATA frame whose payload the caller handles.

        Consumes ``length`` bytes of the connection's and the stream's receive windows, as h2
        does for the frames it parses, and half-closes the stream on ``end_stream``.  Returns
        False, touching nothing, when h2 must see the frame itself: the stream is not open, a
        header block is in progress, or the frame breaks the request's content-length.
        Raises :class:`h2.exceptions.FlowControlError` (after queueing GOAWAY, as h2 does)
        when the frame overruns a window.
        """
        stream = self._open_stream_for_data(stream_id)
        if stream is None:
            return False
        expected = stream._expected_content_length
        if expected is not None:
            received = stream._actual_content_length + length
            if received > expected or (end_stream and received != expected):
                return False
        try:
            self._inbound_flow_control_window_manager.window_consumed(length)
            stream._inbound_window_manager.window_consumed(length)
        except h2.exceptions.FlowControlError:
            self._terminate_connection(h2.errors.ErrorCodes.FLOW_CONTROL_ERROR)
            raise
        stream._actual_content_length += length
        if end_stream:
            receive_end_stream(stream)
        return True

    def data_allowance(self, stream_id: int) -> int:
        """How many bytes of DATA without END_STREAM :meth:`accept_data` takes on ``stream_id``.

        The least of the connection's and the stream's receive windows: frames within it can
        be accounted together, with one :meth:`accept_data` for their summed length.  0 when
        the frames must be accounted one by one (or seen by h2): :meth:`accept_data` would
        refuse them, or the request declared a content-length.
        """
        stream = self._open_stream_for_data(stream_id)
        if stream is None or stream._expected_content_length is not None:
            return 0
        return min(self._inbound_flow_control_window_manager.current_window_size,
                   stream._inbound_window_manager.current_window_size)

    def _open_stream_for_data(self, stream_id: int) -> h2.stream.H2Stream | None:
        """``stream_id``'s stream if DATA on it can be accounted without h2's frame path.

        None when h2 must see the frame: no such stream, the stream is not open, the
        connection is closed, or a header block is in progress.
        """
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or stream.state_machine.state is not StreamState.OPEN
            or self.state_machine.state is ConnectionState.CLOSED
            or self.incoming_buffer._headers_buffer
        ):
            return None
        return stream

    def ignore_data(self, stream_id: int, length: int) -> bool:
        """Account for a DATA frame on a stream we reset, which RFC 9113 5.1 says to ignore.

        It consumes ``length`` bytes of the connection's window (the caller credits them back).
        h2 would answer each such frame with RST_STREAM(STREAM_CLOSED): a client that sent a
        request's DATA before it read our reset would get one reset per frame in flight.
        Returns False, touching nothing, when h2 must see the frame itself.
        """
        if (
            self._stream_closed_by(stream_id) is not StreamClosedBy.SEND_RST_STREAM
            or self.state_machine.state is ConnectionState.CLOSED
            or self.incoming_buffer._headers_buffer
        ):
            return False
        try:
            self._inbound_flow_control_window_manager.window_consumed(length)
        except h2.exceptions.FlowControlError:
            self._terminate_connection(h2.errors.ErrorCodes.FLOW_CONTROL_ERROR)
            raise
        return True

    def return_credit(self, credit: dict[int, int]) -> None:
        """Acknowledge received bytes, ``{stream_id: size}``, as h2's acknowledge_received_data.

        Batched: the connection window is credited once for the total (one WINDOW_UPDATE at
        most); streams closed or forgotten meanwhile only count towards the connection.
        """
        if self.state_machine.state is ConnectionState.CLOSED:
            return  # the connection failed: nothing more is sent after our GOAWAY
        frames: list[Any] = []
        increment = self._inbound_flow_control_window_manager.process_bytes(sum(credit.values()))
        if increment:
            update = hyperframe.frame.WindowUpdateFrame(0)
            update.window_increment = increment
            frames.append(update)
        for stream_id, size in credit.items():
            stream = self.streams.get(stream_id)
            if stream is not None and stream.open:
                frames.extend(stream.acknowledge_received_data(size))
        self._prepare_for_sending(frames)

    def finish_stream(self, stream_id: int, error_code: int) -> None:
        """A call is over: reset its stream if still open, then forget it as h2 forgets.

        h2 drops closed streams (remembering how each closed, to judge frames that still come
        on it) whenever it counts the open ones; done here, once per stream, the stream table
        holds only open streams and counting them (:attr:`open_inbound_streams`) costs no scan.
        Nothing is forgotten while the connection cannot send the reset.
        """
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.closed:
            try:
                self.reset_stream(stream_id, error_code)
            except h2.exceptions.ProtocolError:  # the connection is closed
                return
        del self.streams[stream_id]
        self._closed_streams[stream_id] = stream.closed_by

    def refuse_overlong_frame(self, length: int) -> None:
        """Fail the connection for a frame declared longer than our maximum frame size.

        Called from the frame header alone: h2 itself only checks once the whole body has
        arrived, after buffering up to 16 MiB of it.  Queues GOAWAY FRAME_SIZE_ERROR and raises
        :class:`h2.exceptions.FrameTooLargeError`.
        """
        self._terminate_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
        msg = f"{length}-byte frame exceeds the maximum frame size {self.max_inbound_frame_size}"
        raise h2.exceptions.FrameTooLargeError(msg)

    def terminate(self, error_code: int, debug: bytes) -> None:
        """End the connection: queue GOAWAY ``error_code`` with ``debug`` data, as h2 does.

        Like h2's own connection errors, this moves h2 to its closed state: nothing else is
        sent after the GOAWAY.
        """
        goaway = hyperframe.frame.GoAwayFrame(0)
        goaway.last_stream_id = self.highest_inbound_stream_id
        goaway.error_code = error_code
        goaway.additional_data = debug
        self.state_machine.process_input(ConnectionInputs.SEND_GOAWAY)
        self._prepare_for_sending([goaway])

    def send_header_block(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        """Send response headers or trailers, as h2's ``send_headers`` would on a server.

        The stream makes the same state transitions first (so an invalid send raises h2's
        :class:`~h2.exceptions.ProtocolError` before the HPACK context changes); the block is
        then written as HEADERS (and CONTINUATION frames if it exceeds the peer's frame size).
        """
        stream = self.streams.get(stream_id)
        if stream is None or self.state_machine.state is ConnectionState.CLOSED:
            raise h2.exceptions.StreamClosedError(stream_id)
        send_headers(stream, end_stream)
        block = self.encoder.encode(headers)
        limit = self.max_outbound_frame_size
        out = self._data_to_send
        pack = _FRAME_HEADER.pack
        flags = _END_STREAM if end_stream else 0
        if len(block) <= limit:
            out += pack(len(block) >> 16, len(block) & 0xFFFF, _HEADERS_TYPE,
                        flags | _END_HEADERS, stream_id)
            out += block
            return
        frame_type = _HEADERS_TYPE
        for offset in range(0, len(block), limit):
            fragment = block[offset : offset + limit]
            if offset + limit >= len(block):
                flags |= _END_HEADERS
            out += pack(len(fragment) >> 16, len(fragment) & 0xFFFF, frame_type, flags, stream_id)
            out += fragment
            frame_type, flags = _CONTINUATION_TYPE, 0

    def send_data_frames(self, stream_id: int, queue: SendQueue) -> int:
        """Send as much of ``stream_id``'s queued DATA as the send windows allow.

        ``queue`` writes the frames (at most the peer's maximum frame size, without flags)
        straight to h2's output buffer; both send windows shrink as h2's ``send_data`` would
        shrink them.  Returns how many bytes were sent.  Raises
        :class:`h2.exceptions.StreamClosedError` when the stream can no longer send.
        """
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or stream.state_machine.state not in _SENDING_STATES
            or self.state_machine.state is ConnectionState.CLOSED
        ):
            raise h2.exceptions.StreamClosedError(stream_id)
        size = min(queue.queued(stream_id), self.outbound_flow_control_window,
                   stream.outbound_flow_control_window)
        if size <= 0:
            return 0
        self.data_frames_sent += queue.frame(
            stream_id, size, self.max_outbound_frame_size, self._data_to_send, self._buffers
        )
        self.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        return size

    def send_raw_frame(self, frame: bytes) -> None:
        """Queue a frame built by the caller, after everything queued so far."""
        self._data_to_send += frame

    def buffers_to_send(self) -> list[bytes | memoryview]:
        """Everything queued for the wire, in order, as buffers for ``writelines``."""
        buffers, self._buffers = self._buffers, []
        if self._data_to_send:
            buffers.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        return buffers

    def data_to_send(self, amount: int | None = None) -> bytes:
        """Like h2's: up to ``amount`` queued bytes (all if None), large payloads included."""
        if self._buffers:
            self._data_to_send[:0] = b"".join(self._buffers)
            self._buffers = []
        return super().data_to_send(amount)

    def clear_outbound_data_buffer(self) -> None:
        """Drop everything queued (h2 does before its GOAWAY when the connection fails)."""
        self._buffers = []
        super().clear_outbound_data_buffer()

    @property
    def open_inbound_streams(self) -> int:
        """An upper bound of the open inbound streams, exact when it matters.

        h2 counts by scanning (and pruning) every stream on each new one.  While the stream
        table holds fewer entries than the limit, the open count cannot reach the limit either,
        so the scan is only done when the table is full; calls that end take their streams out
        at once (:meth:`finish_stream`), streams closed otherwise are pruned in batches.
        """
        if len(self.streams) < self.local_settings.max_concurrent_streams:
            return len(self.streams)
        return super().open_inbound_streams
