"""A call's trailers never overtake its DATA, even when the client shrinks its window.

RFC 9113 6.9.2 lets a client lower SETTINGS_INITIAL_WINDOW_SIZE at any time (grpc core does,
probing the bandwidth-delay product), which can leave response DATA queued behind a window
that is now shut.  If the handler ends meanwhile, its trailers must wait for that DATA: sent
at once, they would end the stream with ``grpc-status: 0`` and the message cut off.
"""

from __future__ import annotations

import h2.settings

from fastinject import StatusCode
from fastinject.framing import frame_message
from fastinject.protocol import CallStarted, ServerProtocol
from protocol.wire import H2Client, connected, exchange

BODY = frame_message(b"y" * 1000, False)


def call_with_data_held_back() -> tuple[H2Client, ServerProtocol, int]:
    """A call whose response message is queued, then held back by a window shrunk to 0."""
    client, server = connected()
    stream_id = client.start_call(messages=[b"x"])
    assert any(isinstance(e, CallStarted) for e in exchange(client, server))
    server.send_headers(stream_id, [], None)
    server.send_data(stream_id, BODY)  # fits the window: queued for the next flush
    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    server.receive(client.data_to_send())
    server.send_trailers(stream_id, StatusCode.OK, None, [])
    client.receive(server.data_to_send())
    return client, server, stream_id


def test_trailers_wait_for_data_held_back_by_a_shrunk_window() -> None:
    """Nothing ends the stream while its message waits; window given, message then status."""
    client, server, stream_id = call_with_data_held_back()
    response = client.response(stream_id)
    assert not response.done
    assert client.data_received(stream_id) == 0

    client.h2.increment_flow_control_window(len(BODY), stream_id)
    exchange(client, server)
    assert client.data_received(stream_id) == len(BODY)
    assert response.done
    assert response.status_map[b"grpc-status"] == b"0"


def test_a_reset_drops_the_waiting_trailers() -> None:
    """A client that resets the stream while its trailers wait gets nothing more on it."""
    client, server, stream_id = call_with_data_held_back()
    client.h2.reset_stream(stream_id)
    exchange(client, server)
    frames_before = len(client.frames_on(stream_id))

    client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    exchange(client, server)
    assert len(client.frames_on(stream_id)) == frames_before
    assert not server._final_headers
