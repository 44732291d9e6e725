"""The worker pool through real grpcio clients: dispatch, balance, crashes, shutdown, reload."""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from fastinject.workers.supervisor import PLATFORM_SUPPORTED
from workers.conftest import Supervise
from workers.supervised import SLEEP, TIMEOUT, channel, pid_of

pytestmark = pytest.mark.skipif(not PLATFORM_SUPPORTED, reason="the worker pool is Linux-only")


def test_calls_are_served_by_every_worker(supervise: Supervise) -> None:
    """Connections land on different worker processes, none on the supervisor itself."""
    supervised = supervise("pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2")
    address, workers = supervised.serving()
    channels = [channel(address) for _ in range(6)]
    try:
        pids = {pid_of(chan) for chan in channels}
    finally:
        for chan in channels:
            chan.close()
    assert pids == set(workers)
    assert supervised.pid not in pids


def test_async_factory(supervise: Supervise) -> None:
    """An async setup function builds the server as well as a plain one."""
    supervised = supervise("pid_app:make_server_async", "--bind", "127.0.0.1:0", "--workers", "2")
    address, workers = supervised.serving()
    with channel(address) as chan:
        assert pid_of(chan) in workers


def test_connections_go_to_the_least_loaded_worker(supervise: Supervise) -> None:
    """Open connections are spread evenly; freed capacity is refilled first (not round-robin)."""
    supervised = supervise(
        "pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2", "--log-level", "debug"
    )
    address, (first, second) = supervised.serving()
    channels = [channel(address) for _ in range(20)]
    try:
        owner = {chan: pid_of(chan) for chan in channels}
        counts = collections.Counter(owner.values())
        assert abs(counts[first] - counts[second]) <= 2, counts
        # Close every connection of the first worker and wait until it has reported that.
        mark = supervised.mark()
        for chan in [c for c in channels if owner[c] == first]:
            chan.close()
            channels.remove(chan)
        supervised.wait_for(rf"worker {first} load: 0 connections", mark)
        # Round-robin would split the new connections; least-loaded sends them all to first.
        new = [channel(address) for _ in range(counts[second] - 1)]
        channels += new
        assert [pid_of(chan) for chan in new] == [first] * len(new)
    finally:
        for chan in channels:
            chan.close()


def test_killed_worker_is_replaced_and_others_keep_serving(supervise: Supervise) -> None:
    """SIGKILL of one worker: calls on the others never fail; a replacement takes new ones."""
    supervised = supervise("pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2")
    address, (victim, survivor) = supervised.serving()
    channels = [channel(address) for _ in range(6)]
    try:
        owner = {chan: pid_of(chan) for chan in channels}
        mark = supervised.mark()
        os.kill(victim, signal.SIGKILL)
        replaced = supervised.wait_for(rf"worker (\d+) ready \(generation 1\), replacing {victim}",
                                       mark)
        for chan in channels:
            if owner[chan] == survivor:
                for _ in range(10):
                    assert pid_of(chan) == survivor
        # The replacement has no connection yet: it is the least loaded.
        with channel(address) as fresh:
            assert pid_of(fresh) == int(replaced.group(1))
        # Clients of the dead worker reconnect and are served again.
        for chan in channels:
            if owner[chan] == victim:
                assert pid_of(chan, wait_for_ready=True) != victim
    finally:
        for chan in channels:
            chan.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_lets_running_calls_finish(supervise: Supervise, signum: int) -> None:
    """SIGTERM/SIGINT: a call running in a worker finishes within the grace; exit status 0."""
    supervised = supervise(
        "pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2", "--grace", "60",
        "--log-level", "debug",
    )
    address, workers = supervised.serving()
    with channel(address) as chan:
        mark = supervised.mark()
        call = chan.unary_unary(SLEEP).future(b"1.5", timeout=TIMEOUT)
        supervised.wait_for(r"load: 1 connections, 1 calls", mark)
        status = supervised.signal(signum)
        assert int(call.result()) in workers
    assert status == 0
    assert "stopped" in supervised.log


def test_calls_past_the_grace_are_cancelled(supervise: Supervise) -> None:
    """A call longer than the grace is cut short (the client sees an error) and all exit 0."""
    supervised = supervise(
        "pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2", "--grace", "0.5",
        "--log-level", "debug",
    )
    address, _ = supervised.serving()
    with channel(address) as chan:
        mark = supervised.mark()
        call = chan.unary_unary(SLEEP).future(b"600", timeout=TIMEOUT)
        supervised.wait_for(r"load: 1 connections, 1 calls", mark)
        assert supervised.signal(signal.SIGTERM) == 0
        with pytest.raises(grpc.RpcError) as error:
            call.result()
    assert error.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_reload_under_continuous_calls_fails_no_call(supervise: Supervise) -> None:
    """SIGHUP under a steady client load: a new generation takes over, not one call fails."""
    supervised = supervise("pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2")
    address, old = supervised.serving()
    served: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client(fresh_connections: bool) -> None:
        chan = channel(address)
        try:
            while not stop.is_set():
                if fresh_connections:
                    chan.close()
                    chan = channel(address)
                try:
                    served.append(pid_of(chan))
                except grpc.RpcError as exc:
                    failures.append(exc)
        finally:
            chan.close()

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client, fresh) for fresh in (False, False, True, True)]
        try:
            mark = supervised.mark()
            supervised.process.send_signal(signal.SIGHUP)
            new = supervised.wait_for(r"generation 2 ready: \d+ workers \(pids ([\d ]+)\)", mark)
            new_pids = {int(pid) for pid in new.group(1).split()}
            for pid in old:
                supervised.wait_for(rf"worker {pid} \(generation 1\) exited with status 0", mark)
            # Keep calling until the long-lived channels too have moved to the new generation.
            target = len(served) + 200
            while len(served) < target and not failures:
                threading.Event().wait(0.01)
        finally:
            stop.set()
            for future in clients:
                future.result(TIMEOUT)
    assert failures == []
    assert set(old) & set(served)
    assert new_pids & set(served[-50:])
    assert not set(old) & set(served[-50:])


def test_supervisor_keeps_no_fd_of_handed_off_connections(supervise: Supervise) -> None:
    """After thousands of connections the supervisor holds as many fds as it did at start."""
    supervised = supervise("pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2")
    address, _ = supervised.serving()
    host, _, port = address.rpartition(":")
    fd_dir = f"/proc/{supervised.pid}/fd"
    baseline = len(os.listdir(fd_dir))
    for _ in range(2000):
        with socket.create_connection((host, int(port)), timeout=TIMEOUT):
            pass
    # The listen backlog is served in order: once this call is answered, every connection
    # before it has been accepted and handed off.
    with channel(address) as chan:
        pid_of(chan)
    counts = []
    for _ in range(1000):
        counts.append(len(os.listdir(fd_dir)))
        if counts[-1] == baseline:
            break
        threading.Event().wait(0.05)
    assert counts[-1] == baseline, counts[-10:]
