"""The import-time check of the h2 internals fastinject's h2 tuning relies on."""

from __future__ import annotations

from importlib import metadata

import h2.connection
import h2.stream
import pytest

from fastinject import _h2tuning


def test_the_installed_h2_has_every_internal_used() -> None:
    """The h2 this suite runs on passes the check (CI runs the oldest and newest supported)."""
    _h2tuning.check_h2_internals()


def test_a_missing_h2_method_is_named_with_the_h2_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """An h2 without a method we override fails the check, naming it and the version."""
    monkeypatch.delattr(h2.connection.H2Connection, "_receive_data_frame")
    with pytest.raises(_h2tuning.UnsupportedH2Error) as raised:
        _h2tuning.check_h2_internals()
    message = str(raised.value)
    assert "H2Connection._receive_data_frame" in message
    assert f"h2 {metadata.version('h2')}" in message
    assert _h2tuning.SUPPORTED_H2 in message
    assert isinstance(raised.value, ImportError)


def test_a_missing_instance_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attributes set in h2's constructors are checked on a real connection and stream."""
    original = h2.connection.H2Connection.__init__

    def without_window_manager(self: h2.connection.H2Connection, *args: object) -> None:
        original(self, *args)
        del self._inbound_flow_control_window_manager

    monkeypatch.setattr(h2.connection.H2Connection, "__init__", without_window_manager)
    with pytest.raises(_h2tuning.UnsupportedH2Error, match="_inbound_flow_control_window_manager"):
        _h2tuning.check_h2_internals()


def test_connection_state_unknown_to_the_copy_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection attribute h2 adds that the prototype copy would not know fails the check.

    New connections are copies of a started prototype: state they shared unknowingly would mix
    connections up.
    """
    original = h2.connection.H2Connection.__init__

    def with_more_state(self: h2.connection.H2Connection, *args: object) -> None:
        original(self, *args)
        self._pending = []  # type: ignore[attr-defined]

    monkeypatch.setattr(h2.connection.H2Connection, "__init__", with_more_state)
    with pytest.raises(_h2tuning.UnsupportedH2Error, match="_pending"):
        _h2tuning.check_h2_internals()


def test_a_changed_stream_transition_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Response HEADERS move a stream without h2's state machine: h2 doing more is caught.

    The check sends response headers and trailers both ways on streams h2 opened and compares
    every attribute.
    """
    key = (h2.stream.StreamState.HALF_CLOSED_REMOTE, h2.stream.StreamInputs.SEND_HEADERS)
    side_effect, target = h2.stream._transitions[key]

    def counting(machine: h2.stream.H2StreamStateMachine, previous: object) -> object:
        machine.sent_count = 1  # type: ignore[attr-defined]
        return side_effect(machine, previous)  # type: ignore[misc]

    monkeypatch.setitem(h2.stream._transitions, key, (counting, target))
    with pytest.raises(_h2tuning.UnsupportedH2Error, match=r"H2StreamStateMachine\(\).sent_count"):
        _h2tuning.check_h2_internals()


def test_stream_state_a_template_cannot_copy_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """New request streams are copies of one h2 built: state other than numbers fails the check."""
    original = h2.stream.H2Stream.__init__

    def with_more_state(self: h2.stream.H2Stream, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        self._pending = []  # type: ignore[attr-defined]

    monkeypatch.setattr(h2.stream.H2Stream, "__init__", with_more_state)
    with pytest.raises(_h2tuning.UnsupportedH2Error, match=r"H2Stream\(\)._pending"):
        _h2tuning.check_h2_internals()


def test_a_changed_connection_transition_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request on an open connection skips h2's connection transition, which must be a no-op."""
    machine = h2.connection.H2ConnectionStateMachine
    key = (h2.connection.ConnectionState.SERVER_OPEN, h2.connection.ConnectionInputs.RECV_HEADERS)
    monkeypatch.setitem(machine._transitions, key, (None, h2.connection.ConnectionState.CLOSED))
    with pytest.raises(_h2tuning.UnsupportedH2Error, match="SERVER_OPEN, RECV_HEADERS"):
        _h2tuning.check_h2_internals()
