"""PeerLog: at most one line per interval per peer, the rest counted and reported."""

from __future__ import annotations

import logging

import pytest

from fastinject.peerlog import PeerLog

LOGGER = logging.getLogger("fastinject.test_peerlog")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """The captured records as ``(level, message)``."""
    return [(record.levelno, record.getMessage()) for record in caplog.records]


def test_one_line_per_interval_and_the_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    """Lines within an interval of the last one are counted; the next line reports the count."""
    clock = Clock()
    log = PeerLog("ipv4:10.0.0.1:5000", 10.0, clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        for index in range(5):
            log.log(LOGGER, logging.ERROR, "failure %d", index)
        clock.now += 9.9
        log.log(LOGGER, logging.WARNING, "still within the interval")
        clock.now += 0.1
        log.log(LOGGER, logging.ERROR, "failure %d", 5)
    assert messages(caplog) == [
        (logging.ERROR, "failure 0"),
        (logging.ERROR, "failure 5 (5 more such lines from this peer were suppressed before "
                        "this one)"),
    ]


def test_close_reports_what_was_suppressed_since_the_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """close() logs the count at the highest suppressed level, naming the peer; only once."""
    clock = Clock()
    log = PeerLog("ipv4:10.0.0.1:5000", 10.0, clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        log.log(LOGGER, logging.WARNING, "first")
        log.log(LOGGER, logging.WARNING, "second")
        log.log(LOGGER, logging.ERROR, "third")
        log.close()
        log.close()  # nothing more to report
    assert messages(caplog) == [
        (logging.WARNING, "first"),
        (logging.ERROR, "peer ipv4:10.0.0.1:5000: 2 more log lines were suppressed (one per 10 s)"),
    ]


def test_traceback_of_the_written_line_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    """A line written with exc_info carries the traceback."""
    log = PeerLog("peer", 10.0, Clock())
    with caplog.at_level(logging.ERROR, logger=LOGGER.name):
        try:
            raise ValueError("boom")
        except ValueError:
            log.log(LOGGER, logging.ERROR, "handler raised", exc_info=True)
    assert "ValueError: boom" in caplog.text


def test_disabled_levels_are_neither_written_nor_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A line its logger would drop does not use up the interval or count as suppressed."""
    log = PeerLog("peer", 10.0, Clock())
    with caplog.at_level(logging.ERROR, logger=LOGGER.name):
        log.log(LOGGER, logging.WARNING, "below the level")
        log.log(LOGGER, logging.ERROR, "written")
        log.close()
    assert messages(caplog) == [(logging.ERROR, "written")]


def test_interval_zero_writes_every_line(caplog: pytest.LogCaptureFixture) -> None:
    """peer_log_interval=0 turns the limit off."""
    log = PeerLog("peer", 0.0, Clock())
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        for index in range(3):
            log.log(LOGGER, logging.WARNING, "line %d", index)
    assert [message for _, message in messages(caplog)] == ["line 0", "line 1", "line 2"]
