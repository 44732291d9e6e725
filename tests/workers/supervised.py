"""``fastinject serve`` in a subprocess, its log read line by line, and grpcio clients for it.

Every wait is for something the supervisor logs (``listening on``, ``generation N ready``,
a worker's load report at debug level), bounded by :data:`TIMEOUT` only to end a hang.  The
supervisor runs in a session of its own, so :meth:`Supervised.kill` reaches its workers too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc

import fastinject

TIMEOUT = 120.0
"""Seconds any wait may take before the test fails as hung (a loaded 2-core machine)."""

APP_DIR = Path(__file__).resolve().parent
_SRC_DIR = Path(fastinject.__file__).resolve().parents[1]

GET = "/pid.Pid/Get"
SLEEP = "/pid.Pid/Sleep"

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
"""Without this, grpcio channels to one target share one connection."""


class Supervised:
    """A running ``python -m fastinject serve pid_app:FACTORY ...``."""

    def __init__(self, args: Sequence[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_SRC_DIR), env.get("PYTHONPATH")) if p
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastinject", "serve", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=APP_DIR, env=env,
            start_new_session=True, text=True,
        )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<EOF>")
            self._changed.notify_all()

    def wait_for(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first log line from index ``start`` on matching ``pattern`` (waits for it)."""
        regex = re.compile(pattern)
        index = start
        with self._changed:
            while True:
                while index < len(self.lines):
                    if self.lines[index] == "<EOF>":
                        raise AssertionError(f"exited without logging {pattern!r}:\n{self.log}")
                    found = regex.search(self.lines[index])
                    if found:
                        return found
                    index += 1
                if not self._changed.wait(TIMEOUT):
                    raise AssertionError(f"no {pattern!r} within {TIMEOUT}s:\n{self.log}")

    def mark(self) -> int:
        """The index of the next log line (a ``start`` for :meth:`wait_for`)."""
        with self._changed:
            return len(self.lines)

    @property
    def log(self) -> str:
        """Everything logged so far."""
        with self._changed:
            return "\n".join(self.lines)

    def serving(self) -> tuple[str, list[int]]:
        """Wait until the first generation serves: the address and the worker pids."""
        address = self.wait_for(r"listening on (\S+)").group(1)
        pids = self.wait_for(r"generation 1 ready: \d+ workers \(pids ([\d ]+)\)").group(1)
        return address, [int(pid) for pid in pids.split()]

    def signal(self, signum: int) -> int:
        """Send ``signum`` to the supervisor; its exit status once it has ended."""
        self.process.send_signal(signum)
        return self.process.wait(TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker (its process group), then reap."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()


def channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A grpcio channel with a connection of its own."""
    if credentials is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(
        address, credentials,
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "localhost")],
    )


def pid_of(chan: grpc.Channel, *, wait_for_ready: bool = False) -> int:
    """The pid of the worker process serving ``chan``'s connection."""
    return int(chan.unary_unary(GET)(b"", timeout=TIMEOUT, wait_for_ready=wait_for_ready))
