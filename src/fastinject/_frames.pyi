"""Cython inbound frame splitter of a server connection (compiled from ``_frames.pyx``).

Same API and behaviour as the pure-Python twin :mod:`fastinject._frames_py`; use
:mod:`fastinject.frames`, which picks this module when it is available.  Sans-IO: bytes in,
calls on the subclass's hooks out; h2 keeps the authoritative windows and stream states.
"""

from typing import Any, Final

from fastinject import _framing_py
from fastinject._framing import Deframer
from fastinject._h2tuning import TunedH2Connection
from fastinject.errors import FramingError

HEADERS_FRAME_COST: Final[int]
"""Frames of a turn's budget a HEADERS frame spends (8): a call it starts costs the loop that
much more than other frames (with the default budget, 32 new calls per connection and turn,
grpc core's ``max_requests_per_read``)."""

def data_run(
    buf: bytes | bytearray | memoryview,
    pos: int,
    end: int,
    stream_id: int,
    allowance: int,
    max_length: int,
    budget: int,
) -> tuple[int, int]:
    """Where the consecutive DATA frames of ``stream_id`` from ``pos`` end, and how many.

    The run is the whole frames of ``buf`` before ``end`` that follow each other from ``pos``
    with type DATA, no flags, this stream, a payload of 1 to ``max_length`` bytes; at most
    ``budget`` of them and ``allowance`` payload bytes together.  Any other frame, or one that
    would cross ``allowance``, ends it.  Returns ``(run_end, frames)``: where the last frame of
    the run ends (``pos`` if none qualifies) and how many frames it has.  Raises ``ValueError``
    unless ``0 <= pos <= end <= len(buf)``.  A ``stream_id`` no frame header can hold, or a
    negative limit, makes an empty run.
    """

def deframe_data_run(
    deframer: Deframer | _framing_py.Deframer,
    buf: bytes | bytearray | memoryview,
    pos: int,
    end: int,
) -> tuple[list[tuple[bytes, bool]], int, FramingError | None]:
    """Feed the payloads of the DATA frames from ``pos`` to ``end`` of ``buf`` to ``deframer``.

    The frames must lie whole between ``pos`` and ``end`` (as :func:`data_run` found them;
    otherwise ``ValueError``); their headers are not checked again.  A deframer of the compiled
    module is fed from ``buf`` directly, any other with its ``feed``.  Returns ``(messages, fed,
    error)``: the messages completed, in order, the payload bytes fed, and ``None``; or, when
    a frame's payload makes the deframer fail, the messages of the frames before it, their
    payload bytes and the :class:`~fastinject.errors.FramingError` (the deframer is poisoned,
    the frames after it are not fed).
    """

class FrameSplitter:
    """The frame walk of a server connection's received bytes (``ServerProtocol``'s base).

    :meth:`_scan` walks the frame headers of whole frames: it spends ``_frames_left`` (a HEADERS
    frame :data:`HEADERS_FRAME_COST`, any other 1) and stops when it runs out; refuses an
    overlong frame from its header (``h2.refuse_overlong_frame``); accounts an unpadded DATA
    frame of a live call (in ``_streams``, not failed) with ``h2.accept_data`` and feeds it, or
    the run of that call's consecutive DATA frames within ``h2.data_allowance``, to the call's
    deframer (:meth:`_deframe`, :meth:`_on_data`); opens a new call from a whole request header
    block with ``h2.receive_request`` (queued in ``_opened``, started by :meth:`_feed_h2`); takes
    the client's SETTINGS ACK, first SETTINGS, connection WINDOW_UPDATE and GOAWAY with h2's
    tuned entry points; polices the other frames (:meth:`_police`); and hands every frame it
    did not take, in order and in runs, to :meth:`_feed_h2`.

    The subclass sets the attributes below and overrides the hooks (the methods after
    :meth:`_scan`, which raise ``NotImplementedError`` here); the walk calls them in the order
    the frames arrived.
    """

    _h2: TunedH2Connection
    _streams: dict[int, Any]
    _opened: list[tuple[int, list[tuple[bytes, bytes]], bool]]
    _preface_left: int
    _frames_left: int
    settings_received: bool

    def _scan(self, buf: bytes | bytearray | memoryview, events: list[Any]) -> int:
        """Handle the whole frames in ``buf`` (events appended to ``events``).

        Returns where the rest starts: an incomplete frame, or the first frame beyond the
        budget.  A client preface that does not come whole in the first read is h2's to check.
        """
    def _feed_h2(self, frames: memoryview, events: list[Any]) -> None:
        """Hand a run of frames to h2 and start the calls in ``_opened``."""
    def _police(self, frame_type: int, flags: int, length: int) -> None:
        """Count a frame other than DATA or a whole HEADERS block against the peer's budgets."""
    def _spend_useless(self, what: str) -> None:
        """Count a frame that carries no call against the peer's budget."""
    def _return_credit(self, stream_id: int, size: int) -> None:
        """Give ``size`` bytes of flow-control credit back to the peer at the next flush."""
    def _deframe(
        self,
        stream_id: int,
        state: Any,
        fed: tuple[list[tuple[bytes, bool]], int, FramingError | None],
        size: int,
        events: list[Any],
    ) -> None:
        """Account for ``size`` bytes of DATA payload of a live call fed to its deframer."""
    def _on_data(
        self,
        stream_id: int,
        state: Any,
        data: bytes | memoryview,
        flow_controlled_length: int,
        events: list[Any],
    ) -> None:
        """A DATA frame's payload for ``stream_id``, h2's windows already moved."""
    def _on_stream_ended(self, stream_id: int, events: list[Any]) -> None:
        """The client half-closed ``stream_id``."""
    def _on_remote_settings(self, events: list[Any]) -> None:
        """The client's SETTINGS were applied (and acknowledged)."""
    def _on_connection_window(self, events: list[Any]) -> None:
        """The client widened the connection's send window."""
    def _closed_by_peer(self, error_code: int, events: list[Any]) -> None:
        """The client sent GOAWAY with ``error_code``."""

__all__ = ["HEADERS_FRAME_COST", "FrameSplitter", "data_run", "deframe_data_run"]
