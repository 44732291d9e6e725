"""The ``fastinject`` command: help, in-process serving, and clear errors."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from fastinject.workers.supervisor import PLATFORM_SUPPORTED
from workers.conftest import Supervise
from workers.supervised import APP_DIR, TIMEOUT, channel, pid_of

pytestmark = pytest.mark.skipif(not PLATFORM_SUPPORTED, reason="the worker pool is Linux-only")

FLAGS = ("--bind", "--workers", "--certfile", "--keyfile", "--client-ca", "--grace",
         "--log-level", "--loop", "--app-dir")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m fastinject *args``, expected to end by itself."""
    return subprocess.run(
        [sys.executable, "-m", "fastinject", *args], capture_output=True, text=True,
        timeout=TIMEOUT, check=False, cwd=APP_DIR,
    )


def test_help_documents_every_flag() -> None:
    """``fastinject serve --help`` names every option; ``fastinject --help`` names serve."""
    assert "serve" in run("--help").stdout
    text = run("serve", "--help").stdout
    for flag in FLAGS:
        assert flag in text


def test_one_worker_serves_in_process(supervise: Supervise) -> None:
    """--workers 1: no supervisor, the process itself serves; SIGTERM stops it with status 0."""
    supervised = supervise("pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "1")
    address = supervised.wait_for(r"listening on (\S+)").group(1)
    supervised.wait_for(r"serving in process")
    with channel(address) as chan:
        assert pid_of(chan) == supervised.pid
    assert supervised.signal(signal.SIGTERM) == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_loop_chooses_the_event_loop(supervise: Supervise, loop: str, workers: str) -> None:
    """--loop runs the workers (or the in-process server) on the event loop named."""
    pytest.importorskip(loop)
    supervised = supervise("pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", workers,
                           "--loop", loop)
    address = supervised.wait_for(r"listening on (\S+)").group(1)
    supervised.wait_for(r"serving in process|generation 1 ready")
    with channel(address) as chan:
        module = chan.unary_unary("/pid.Pid/Loop")(b"", timeout=TIMEOUT).decode()
    assert module.split(".")[0] == loop


@pytest.mark.parametrize(("factory", "message"), [
    ("pid_app:broken", "broken on purpose"),
    ("no_such_module:make_server", "cannot import module 'no_such_module'"),
    ("pid_app:no_such_function", "has no attribute 'no_such_function'"),
    ("pid_app", "must be given as 'module:function'"),
])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_factory_exits_3_naming_the_problem(factory: str, message: str, workers: str) -> None:
    """A factory that cannot give a server: status 3 and a message saying why."""
    result = run("serve", factory, "--bind", "127.0.0.1:0", "--workers", workers)
    assert result.returncode == 3
    assert message in result.stderr


def test_usage_errors_exit_2() -> None:
    """Inconsistent TLS flags and bad numbers are usage errors."""
    for args in (["--keyfile", "k.pem"], ["--client-ca", "ca.pem"], ["--workers", "0"],
                 ["--grace", "-1"]):
        result = run("serve", "pid_app:make_server", *args)
        assert result.returncode == 2, args
        assert "error" in result.stderr


def test_unreadable_certificate_exits_3() -> None:
    """A certificate file that cannot be read is named."""
    result = run("serve", "pid_app:make_server", "--bind", "127.0.0.1:0", "--workers", "2",
                 "--certfile", "missing-cert.pem", "--keyfile", "missing-key.pem")
    assert result.returncode == 3
    assert "missing-key.pem" in result.stderr
