"""Tests of fastinject.options: ServerSettings validation and grpcio option mapping."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import grpc
import pytest

from fastinject.compression import Compression
from fastinject.options import GRPC_OPTIONS, UNLIMITED_MESSAGE_LENGTH, ServerSettings

INT_MAX = 2**31 - 1


def test_defaults_follow_grpc() -> None:
    """Defaults are grpc core's server defaults where grpc has one."""
    settings = ServerSettings()
    assert settings.max_receive_message_length == 4 * 1024 * 1024
    assert settings.keepalive_time == 2 * 60 * 60
    assert settings.keepalive_timeout == 20
    assert settings.keepalive_permit_without_calls is False
    assert settings.min_ping_interval_without_data == 5 * 60
    assert settings.max_ping_strikes == 2
    assert settings.max_connection_idle is None
    assert settings.max_connection_age is None
    assert settings.handshake_timeout == 120
    assert settings.default_compression is Compression.NoCompression
    assert settings.max_frame_size == 16384
    assert settings.max_partial_message_bytes == 32 * 1024 * 1024
    assert settings.max_server_partial_message_bytes == 32 * 1024 * 1024


def test_every_setting_and_option_is_documented() -> None:
    """The class docstring (the settings reference) names every field and grpcio option."""
    doc = ServerSettings.__doc__ or ""
    for field in dataclasses.fields(ServerSettings):
        assert f"``{field.name}``" in doc, field.name
    for option in GRPC_OPTIONS:
        assert f"``{option}``" in doc, option


@pytest.mark.parametrize(
    ("option", "value", "field", "expected"),
    [
        ("grpc.max_receive_message_length", 1234, "max_receive_message_length", 1234),
        (
            "grpc.max_receive_message_length",
            -1,
            "max_receive_message_length",
            UNLIMITED_MESSAGE_LENGTH,
        ),
        ("grpc.max_send_message_length", 99, "max_send_message_length", 99),
        ("grpc.max_send_message_length", -1, "max_send_message_length", UNLIMITED_MESSAGE_LENGTH),
        ("grpc.max_concurrent_streams", 7, "max_concurrent_streams", 7),
        ("grpc.max_metadata_size", 8192, "max_header_list_size", 8192),
        ("grpc.absolute_max_metadata_size", 32768, "max_header_list_size", 32768),
        ("grpc.http2.lookahead_bytes", 65536, "initial_stream_window_size", 65536),
        ("grpc.http2.max_frame_size", 65536, "max_frame_size", 65536),
        ("grpc.keepalive_time_ms", 30_000, "keepalive_time", 30.0),
        ("grpc.keepalive_time_ms", INT_MAX, "keepalive_time", math.inf),
        ("grpc.keepalive_timeout_ms", 1500, "keepalive_timeout", 1.5),
        ("grpc.keepalive_permit_without_calls", 1, "keepalive_permit_without_calls", True),
        ("grpc.keepalive_permit_without_calls", 0, "keepalive_permit_without_calls", False),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            10_000,
            "min_ping_interval_without_data",
            10.0,
        ),
        ("grpc.http2.max_ping_strikes", 0, "max_ping_strikes", 0),
        ("grpc.max_connection_idle_ms", 60_000, "max_connection_idle", 60.0),
        ("grpc.max_connection_idle_ms", INT_MAX, "max_connection_idle", None),
        ("grpc.max_connection_age_ms", 250, "max_connection_age", 0.25),
        ("grpc.max_connection_age_ms", INT_MAX, "max_connection_age", None),
        ("grpc.max_connection_age_grace_ms", 0, "max_connection_age_grace", 0.0),
        ("grpc.max_connection_age_grace_ms", INT_MAX, "max_connection_age_grace", None),
        ("grpc.default_compression_algorithm", 2, "default_compression", Compression.Gzip),
        (
            "grpc.default_compression_algorithm",
            grpc.Compression.Deflate,
            "default_compression",
            Compression.Deflate,
        ),
        ("grpc.server_handshake_timeout_ms", 5000, "handshake_timeout", 5.0),
        ("grpc.so_reuseport", 0, "so_reuseport", False),
    ],
)
def test_grpc_options_map_onto_settings(option: str, value: Any, field: str, expected: Any) -> None:
    """Each grpcio option sets its field, converting ms to s and grpc's "infinite" values."""
    assert getattr(ServerSettings.from_options([(option, value)]), field) == expected


def test_absolute_metadata_size_wins_over_the_soft_one() -> None:
    """With both metadata-size options, the absolute (hard) limit is used, whatever the order."""
    both = [("grpc.absolute_max_metadata_size", 20000), ("grpc.max_metadata_size", 9000)]
    assert ServerSettings.from_options(both).max_header_list_size == 20000
    assert ServerSettings.from_options(both[::-1]).max_header_list_size == 20000


def test_repeated_option_last_one_wins() -> None:
    """A repeated option takes its last value, as grpc channel args do."""
    options = [("grpc.max_concurrent_streams", 5), ("grpc.max_concurrent_streams", 9)]
    assert ServerSettings.from_options(options).max_concurrent_streams == 9


def test_keyword_settings_override_options() -> None:
    """Keyword settings win over grpcio options for the same field."""
    settings = ServerSettings.from_options(
        [("grpc.max_receive_message_length", 10)], max_receive_message_length=20
    )
    assert settings.max_receive_message_length == 20


def test_from_options_without_anything_gives_defaults() -> None:
    """No options and no settings give the defaults."""
    assert ServerSettings.from_options() == ServerSettings()
    assert ServerSettings.from_options(None) == ServerSettings()


def test_unknown_keyword_is_a_type_error() -> None:
    """A misspelt keyword setting raises TypeError naming it."""
    with pytest.raises(TypeError, match="max_recieve_message_length"):
        ServerSettings.from_options(max_recieve_message_length=1)


@pytest.mark.parametrize("option", ["grpc.enable_retries", "grpc.primary_user_agent", "custom"])
def test_unknown_options_are_ignored_with_a_debug_log(
    option: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Options we do not use are ignored (as grpcio ignores them) and logged at debug level."""
    with caplog.at_level(logging.DEBUG, logger="fastinject.options"):
        settings = ServerSettings.from_options([(option, 1)])
    assert settings == ServerSettings()
    assert any(option in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("grpc.max_receive_message_length", "4MB"),
        ("grpc.max_receive_message_length", -2),
        ("grpc.keepalive_time_ms", 1.5),
        ("grpc.keepalive_time_ms", -1),
        ("grpc.http2.max_frame_size", 100),
        ("grpc.http2.max_frame_size", 1 << 24),
        ("grpc.default_compression_algorithm", 7),
        ("grpc.server_handshake_timeout_ms", 0),
        ("grpc.max_connection_idle_ms", 0),
    ],
)
def test_bad_option_values_raise_naming_the_option(option: str, value: Any) -> None:
    """A wrong type or out-of-range option value raises ValueError naming the option."""
    with pytest.raises(ValueError, match=option.replace(".", r"\.")):
        ServerSettings.from_options([(option, value)])


@pytest.mark.parametrize("item", [("grpc.so_reuseport",), ("a", 1, 2), "grpc.x", (1, 2)])
def test_malformed_option_items_raise(item: Any) -> None:
    """Options that are not (str, value) pairs raise ValueError."""
    with pytest.raises(ValueError, match="pairs"):
        ServerSettings.from_options([item])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_receive_message_length", -1),
        ("max_receive_message_length", 1.5),
        ("max_receive_message_length", "4"),
        ("max_partial_message_bytes", -1),
        ("max_server_partial_message_bytes", -1),
        ("max_server_partial_message_bytes", 2.5),
        ("max_concurrent_streams", True),
        ("max_concurrent_streams", 2**32),
        ("max_header_list_size", 0),
        ("initial_stream_window_size", 0),
        ("initial_stream_window_size", 2**31),
        ("initial_connection_window_size", 65534),
        ("initial_connection_window_size", 2**31),
        ("max_frame_size", 16383),
        ("max_frame_size", 16777216),
        ("keepalive_time", 0),
        ("keepalive_time", -1.0),
        ("keepalive_time", math.nan),
        ("keepalive_time", None),
        ("keepalive_timeout", 0.0),
        ("keepalive_permit_without_calls", 1),
        ("min_ping_interval_without_data", -0.5),
        ("max_ping_strikes", -1),
        ("max_connection_idle", 0),
        ("max_connection_age", -5),
        ("max_connection_age", "1h"),
        ("max_connection_age_grace", -1),
        ("default_compression", "brotli"),
        ("handshake_timeout", 0),
        ("so_reuseport", "yes"),
        ("stream_reset_burst", 0),
        ("stream_reset_rate", -1.0),
        ("stream_reset_rate", "33/s"),
        ("useless_frame_burst", 0),
        ("useless_frame_rate", math.nan),
        ("max_frames_per_turn", 0),
        ("min_frames_per_turn", 0),
        ("max_pending_control_frames", 0),
    ],
)
def test_invalid_settings_raise_naming_the_setting(field: str, value: Any) -> None:
    """A wrong type or out-of-range value raises ValueError naming the setting."""
    with pytest.raises(ValueError, match=field):
        ServerSettings(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_frame_size", 16384),
        ("max_frame_size", 16777215),
        ("initial_stream_window_size", 2**31 - 1),
        ("initial_connection_window_size", 65535),
        ("max_concurrent_streams", 0),
        ("max_receive_message_length", 0),
        ("min_ping_interval_without_data", 0),
        ("max_connection_age_grace", 0),
        ("stream_reset_burst", 1),
        ("stream_reset_rate", 0.0),
        ("useless_frame_burst", 1),
        ("max_frames_per_turn", 1),
        ("min_frames_per_turn", 1),
        ("max_pending_control_frames", 1),
    ],
)
def test_boundary_values_are_accepted(field: str, value: Any) -> None:
    """Values at the edge of each range are valid."""
    assert getattr(ServerSettings(**{field: value}), field) == value


def test_numbers_are_normalised() -> None:
    """Durations become floats, infinite optional durations None, compressions our enum."""
    settings = ServerSettings(
        keepalive_time=60,
        max_connection_idle=math.inf,
        default_compression=grpc.Compression.Gzip,
    )
    assert isinstance(settings.keepalive_time, float)
    assert settings.max_connection_idle is None
    assert settings.default_compression is Compression.Gzip


def test_settings_are_immutable_and_replace_validates() -> None:
    """Settings are frozen; dataclasses.replace builds checked copies."""
    settings = ServerSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_frame_size = 20000  # type: ignore[misc]
    assert dataclasses.replace(settings, max_frame_size=20000).max_frame_size == 20000
    with pytest.raises(ValueError, match="max_frame_size"):
        dataclasses.replace(settings, max_frame_size=1)
