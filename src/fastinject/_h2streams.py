"""h2 stream state for a gRPC call's common case, without h2's per-call work.

Every unary call opens a stream from a request header block, sends response headers and ends
with trailers.  h2 builds the stream with three constructors, then runs four state-machine
transitions (each a dict lookup that hashes two Python enums), header validation flags,
content-length and informational-response scans; a fifth of a small call's h2 time.

:func:`open_request_stream` builds the stream h2's ``receive_headers`` would leave for a plain
request (no content-length, no ``:status``) as a copy of one h2 built itself at import, and
:func:`send_headers` makes the transitions of a server's response headers and trailers, and
:func:`receive_end_stream` the client's half-close of an open stream, directly when the stream
is in a state where they are plain assignments.  Anything else goes
through h2.  :func:`check_stream_paths` runs both ways on streams h2 builds and reports any
difference: it is part of the import-time check of the h2 internals
(:func:`fastinject._h2tuning.check_h2_internals`).
"""

from __future__ import annotations

import enum
import itertools
from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import h2.stream
import h2.windows

from ._hpack import HeaderBlock

# The configuration fastinject's connections have: received headers are kept as they came.
_CONFIG = h2.config.H2Configuration(
    client_side=False, header_encoding=None, validate_inbound_headers=False,
    normalize_inbound_headers=False,
)
# The header block the templates are made from: a plain request.
_PLAIN_REQUEST = [(b":method", b"POST"), (b":path", b"/s/m"), (b"te", b"trailers")]
# The members of a stream that are objects of their own, made afresh for each stream.
_MACHINE, _WINDOW, _STREAM_CONFIG = "state_machine", "_inbound_window_manager", "config"
NO_LENGTH = -1
"""A :func:`request_length`: a request without content-length."""
H2_ONLY = -2
"""A :func:`request_length`: the stream is h2's to open."""

_new = object.__new__
_H2Stream = h2.stream.H2Stream
_Machine = h2.stream.H2StreamStateMachine
_Window = h2.windows.WindowManager
_StreamState = h2.stream.StreamState
_StreamInputs = h2.stream.StreamInputs
_INITIAL_WINDOW_SIZE = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE

# What h2 leaves in a new stream's (stream, state machine, window manager) after receiving a
# plain request, by END_STREAM; values other than numbers, flags and enums are replaced per
# stream.  Made by h2 itself, by the import-time check (check_stream_paths).
_Templates = dict[bool, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]
_templates: _Templates = {}


def _connection(local_window: int, remote_window: int, frame_size: int) -> Any:
    """A server connection with these initial windows and (inbound, outbound) frame size."""
    connection = h2.connection.H2Connection(config=_CONFIG)
    connection.initiate_connection()
    codes = h2.settings.SettingCodes
    connection.local_settings = h2.settings.Settings(
        client=False, initial_values={codes.INITIAL_WINDOW_SIZE: local_window}
    )
    connection.remote_settings = h2.settings.Settings(
        client=True, initial_values={codes.INITIAL_WINDOW_SIZE: remote_window}
    )
    connection.max_inbound_frame_size = frame_size
    connection.max_outbound_frame_size = frame_size + 1
    return connection


def _h2_request_stream(
    connection: Any, stream_id: int, end_stream: bool, headers: list[tuple[bytes, bytes]]
) -> h2.stream.H2Stream:
    """The stream h2 opens for a request, with ``_begin_new_stream`` and ``receive_headers``."""
    stream = connection._begin_new_stream(stream_id, h2.connection.AllowedStreamIDs.ODD)
    stream.receive_headers(headers, end_stream, None)
    return stream  # type: ignore[no-any-return]


def _made_by_h2() -> _Templates:
    templates: _Templates = {}
    for end_stream in (False, True):
        connection = _connection(65_535, 65_535, 16_384)
        stream = _h2_request_stream(connection, 1, end_stream, _PLAIN_REQUEST)
        templates[end_stream] = (
            dict(vars(stream)), dict(vars(stream.state_machine)),
            dict(vars(stream._inbound_window_manager)),
        )
    return templates


def request_length(headers: HeaderBlock) -> int:
    """What h2 would do with a new stream's request ``headers``, kept on them.

    The request's content-length, :data:`NO_LENGTH` without one (both: h2 only opens the
    stream), or :data:`H2_ONLY` when h2 must receive them itself (a ``:status``, or a
    content-length that is repeated or not only digits).
    """
    known = headers.request_length
    if known is None:
        known = headers.request_length = _request_length(headers)
    return known


def _request_length(headers: HeaderBlock) -> int:
    length = NO_LENGTH
    for name, value in headers:
        if name == b"content-length":
            if length != NO_LENGTH or not value.isdigit():
                return H2_ONLY
            length = int(value)
        elif name == b":status":
            return H2_ONLY
    return length


def open_request_stream(
    connection: h2.connection.H2Connection, stream_id: int, end_stream: bool, length: int
) -> None:
    """Open the stream of a request whose :func:`request_length` is ``length`` (not H2_ONLY).

    As h2's ``_begin_new_stream`` (for a new client stream, after its checks) and the new
    stream's ``receive_headers`` (half-closed on ``end_stream``), without the constructors,
    the transitions and the header scans.
    """
    stream_vars, machine_vars, window_vars = _templates[end_stream]
    machine = _new(_Machine)
    machine.__dict__.update(machine_vars)
    machine.stream_id = stream_id
    window = _new(_Window)
    window.__dict__.update(window_vars)
    # Settings' current values, read as its __getitem__ does (the check compares windows).
    window.max_window_size = window.current_window_size = (
        connection.local_settings._settings[_INITIAL_WINDOW_SIZE][0]
    )
    stream = _new(_H2Stream)
    state = stream.__dict__
    state.update(stream_vars)
    state["state_machine"] = machine
    state["_inbound_window_manager"] = window
    state["config"] = connection.config
    state["stream_id"] = stream_id
    state["outbound_flow_control_window"] = (
        connection.remote_settings._settings[_INITIAL_WINDOW_SIZE][0]
    )
    state["max_outbound_frame_size"] = connection.max_outbound_frame_size
    if "max_inbound_frame_size" in state:  # h2 before 4.2
        state["max_inbound_frame_size"] = connection.max_inbound_frame_size
    if length != NO_LENGTH:
        state["_expected_content_length"] = length
    connection.streams[stream_id] = stream
    connection.highest_inbound_stream_id = stream_id


def send_headers(stream: h2.stream.H2Stream, end_stream: bool) -> None:
    """Make the transitions of a server sending HEADERS (``end_stream``: with END_STREAM).

    The first HEADERS are the response's, the next its trailers, which must end the stream.
    Raises h2's :class:`~h2.exceptions.ProtocolError` as h2 would for an invalid send.
    """
    machine = stream.state_machine
    state = machine.state
    if (
        machine.client is False
        and not machine.trailers_sent
        and (state is _StreamState.HALF_CLOSED_REMOTE or state is _StreamState.OPEN)
    ):
        # h2's response_sent, then SEND_END_STREAM (send_end_stream when half-closed).
        if machine.headers_sent:
            machine.trailers_sent = True
        else:
            machine.headers_sent = True
        if not end_stream:
            if machine.trailers_sent:
                raise h2.exceptions.ProtocolError("trailers must end the stream")
        elif state is _StreamState.OPEN:
            machine.state = _StreamState.HALF_CLOSED_LOCAL
        else:
            machine.state = _StreamState.CLOSED
            machine.stream_closed_by = h2.stream.StreamClosedBy.SEND_END_STREAM
        return
    _h2_send_headers(stream, end_stream)


def receive_end_stream(stream: h2.stream.H2Stream) -> None:
    """The client half-closed ``stream``, which is OPEN (the caller checked): h2's transition.

    h2's ``process_input(RECV_END_STREAM)`` moves an OPEN stream to HALF_CLOSED_REMOTE and
    makes a ``StreamEnded`` event that nobody reads here.
    """
    stream.state_machine.state = _StreamState.HALF_CLOSED_REMOTE


def _h2_receive_end_stream(stream: h2.stream.H2Stream) -> None:
    """:func:`receive_end_stream` by h2's state machine."""
    stream.state_machine.process_input(_StreamInputs.RECV_END_STREAM)


def _h2_send_headers(stream: h2.stream.H2Stream, end_stream: bool) -> None:
    """:func:`send_headers` by h2's state machine."""
    machine = stream.state_machine
    machine.process_input(_StreamInputs.SEND_HEADERS)
    if machine.trailers_sent and not end_stream:
        raise h2.exceptions.ProtocolError("trailers must end the stream")
    if end_stream:
        machine.process_input(_StreamInputs.SEND_END_STREAM)


def _state(stream: h2.stream.H2Stream) -> dict[str, Any]:
    """A stream's state; its state machine and window manager by their own state."""
    state = dict(vars(stream))
    state[_MACHINE] = dict(vars(stream.state_machine))
    state[_WINDOW] = dict(vars(stream._inbound_window_manager))
    return state


def _after_sends(stream: h2.stream.H2Stream, sends: tuple[bool, ...], send: Any) -> Any:
    """A stream's state after HEADERS sent with these END_STREAM flags, and the error if any."""
    error = None
    for end_stream in sends:
        try:
            send(stream, end_stream)
        except h2.exceptions.ProtocolError as exc:
            error = type(exc)
            break
    return _state(stream), error


def check_stream_paths() -> list[str]:
    """What this module does differently from h2 on the installed h2 (nothing, if supported).

    Streams are opened and sent on both ways (a plain request, with and without END_STREAM;
    response headers, trailers, trailers-only, and invalid sends), and their state compared.
    """
    try:
        templates = _made_by_h2()
    except Exception as exc:  # any failure here means the internals moved
        return [f"H2Stream.receive_headers of a plain request ({exc!r})"]
    problems = sorted({
        f"{part}().{name} (state other than numbers)"
        for parts in templates.values()
        for part, values in zip(("H2Stream", "H2StreamStateMachine", "WindowManager"), parts,
                                strict=True)
        for name, value in values.items()
        if name not in (_MACHINE, _WINDOW, _STREAM_CONFIG)
        and not (value is None or isinstance(value, int | bytes | enum.Enum))
    })
    if problems:
        return problems
    installed = dict(_templates)
    _templates.update(templates)
    problems = _differences()
    if problems:  # keep what was there (nothing, at import: the import fails)
        _templates.clear()
        _templates.update(installed)
    return problems


def _differences() -> list[str]:
    """Where streams opened and sent on by this module differ from h2's own."""
    problems = []
    requests = (_PLAIN_REQUEST, [*_PLAIN_REQUEST, (b"content-length", b"10")])
    for headers, end_stream in itertools.product(requests, (False, True)):
        case = f"request {headers[-1][0]!r}, END_STREAM {end_stream}"
        block = HeaderBlock(headers)

        def h2_stream(headers: Any = headers, end_stream: bool = end_stream) -> Any:
            connection = _connection(1_000, 2_000, 30_000)
            return _h2_request_stream(connection, 7, end_stream, headers), connection

        def our_stream(block: HeaderBlock = block, end_stream: bool = end_stream) -> Any:
            connection = _connection(1_000, 2_000, 30_000)
            open_request_stream(connection, 7, end_stream, request_length(block))
            return connection.streams[7], connection

        try:
            (ours, our_connection), (theirs, connection) = our_stream(), h2_stream()
            differing = _differing(_state(ours), _state(theirs))
            if vars(our_connection).keys() != vars(connection).keys() or (
                our_connection.streams.keys(), our_connection.highest_inbound_stream_id
            ) != (connection.streams.keys(), connection.highest_inbound_stream_id):
                differing += " H2Connection().streams"
        except Exception as exc:  # any failure here means the internals moved
            problems.append(f"H2Stream.receive_headers ({case}: {exc!r})")
            continue
        if differing:
            problems.append(f"H2Stream.receive_headers ({case}: {differing.strip()})")
            continue
        for half_closed, sends in itertools.product(
            (False, True) if not end_stream else (False,),
            ((False, True), (True,), (False, False), (True, True), (False,), ()),
        ):
            ours, theirs = our_stream()[0], h2_stream()[0]
            if half_closed:  # the client's END_STREAM comes in a DATA frame
                receive_end_stream(ours)
                _h2_receive_end_stream(theirs)
            (mine, our_error) = _after_sends(ours, sends, send_headers)
            (other, error) = _after_sends(theirs, sends, _h2_send_headers)
            differing = _differing(mine, other) or (
                f"raises {error}" if our_error is not error else ""
            )
            if differing:
                what = "RECV_END_STREAM, then SEND_HEADERS" if half_closed else "SEND_HEADERS"
                problems.append(
                    f"H2StreamStateMachine.process_input({what}) ({case}, sends {sends}: "
                    f"{differing})"
                )
                break
    return problems


def _differing(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """The attributes whose values differ between two :func:`_state` results."""
    names = [
        f"H2Stream().{name}" for name in sorted(ours.keys() | theirs.keys())
        if name not in (_MACHINE, _WINDOW) and ours.get(name, ours) != theirs.get(name, ours)
    ]
    for member, part in ((_MACHINE, "H2StreamStateMachine"), (_WINDOW, "WindowManager")):
        mine, other = ours[member], theirs[member]
        names += [
            f"{part}().{name}" for name in sorted(mine.keys() | other.keys())
            if mine.get(name, mine) != other.get(name, mine)
        ]
    return ", ".join(names)
