"""The Python API: a Supervisor in this event loop, the one-port router, and reload()."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from fastinject.router import ConnectionRouter, Rule
from fastinject.workers import Supervisor, TlsFiles
from fastinject.workers.supervisor import PLATFORM_SUPPORTED
from tls_material import TlsMaterial
from workers.supervised import APP_DIR, CHANNEL_OPTIONS, GET, TIMEOUT

pytestmark = pytest.mark.skipif(not PLATFORM_SUPPORTED, reason="the worker pool is Linux-only")


@contextlib.asynccontextmanager
async def running(supervisor: Supervisor) -> AsyncIterator[Supervisor]:
    """Start ``supervisor``; at the end stop it, and kill any worker it left behind."""
    pids: set[int] = set()
    try:
        await supervisor.start()
        pids.update(supervisor.worker_pids)
        yield supervisor
        pids.update(supervisor.worker_pids)
    finally:
        with contextlib.suppress(Exception):
            await supervisor.shutdown(0.0)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def worker_pid(channel: grpc.aio.Channel) -> int:
    """The pid of the worker serving ``channel``."""
    return int(await channel.unary_unary(GET)(b"", timeout=TIMEOUT))


async def test_router_rules_run_in_the_supervisor(tls: TlsMaterial, tmp_path: Path) -> None:
    """One port, TLS and plaintext: the router picks the target, a worker serves it."""
    files = tls.write(tmp_path)
    supervisor = Supervisor("pid_app:make_server", [], workers=2, sys_path=[str(APP_DIR)])
    secure = supervisor.add_target(TlsFiles(files["server_cert_pem"], files["server_key_pem"]))
    plain = supervisor.add_target()
    supervisor.add_router("127.0.0.1:0", ConnectionRouter([
        Rule(secure, transport="tls"), Rule(plain, transport="plaintext"),
    ]))
    async with running(supervisor):
        address = f"127.0.0.1:{supervisor.router_ports[0]}"
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
        options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "localhost")]
        async with grpc.aio.secure_channel(address, credentials, options=options) as chan:
            assert await worker_pid(chan) in supervisor.worker_pids
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as chan:
            assert await worker_pid(chan) in supervisor.worker_pids


async def test_reload_api_starts_a_new_generation() -> None:
    """reload() replaces every worker; calls on an open channel go on being served."""
    supervisor = Supervisor("pid_app:make_server", [], workers=2, sys_path=[str(APP_DIR)])
    plain = supervisor.add_target()
    supervisor.add_router("127.0.0.1:0", ConnectionRouter(default=plain))
    async with running(supervisor):
        old = set(supervisor.worker_pids)
        address = f"127.0.0.1:{supervisor.router_ports[0]}"
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as chan:
            assert await worker_pid(chan) in old
            assert await supervisor.reload() is True
            assert supervisor.generation == 2
            new = set(supervisor.worker_pids)
            assert not new & old
            # The old worker's GOAWAY moves the channel to a new connection, on a new worker.
            for _ in range(1000):
                if await worker_pid(chan) in new:
                    break
            else:
                pytest.fail("the channel never reached the new generation")


async def test_reload_with_broken_factory_keeps_serving() -> None:
    """If the new generation cannot boot, reload() says so and the old workers still serve."""
    supervisor = Supervisor("pid_app:make_server", [], workers=2, sys_path=[str(APP_DIR)])
    plain = supervisor.add_target()
    supervisor.add_router("127.0.0.1:0", ConnectionRouter(default=plain))
    async with running(supervisor):
        old = supervisor.worker_pids
        supervisor.factory = "pid_app:broken"
        assert await supervisor.reload() is False
        assert supervisor.worker_pids == old
        address = f"127.0.0.1:{supervisor.router_ports[0]}"
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as chan:
            assert await worker_pid(chan) in old
