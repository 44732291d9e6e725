"""The servers under test: the entry table and a handle on one running server process.

Every server is a Python module run as ``python -m MODULE --port 0 [ARGS]`` that keeps the
contract in :mod:`benchmarks.e2e._serving` (print ``listening on PORT``, exit 0 on SIGTERM).
Adding a server to the benchmark is adding a :class:`ServerEntry` to :data:`SERVER_ENTRIES`;
every workload then runs against it too.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from benchmarks.e2e import procstat


class ServerStartError(Exception):
    """A server process exited or stayed silent instead of announcing its port."""


@dataclass(frozen=True)
class ServerEntry:
    """How to start one server under test.

    ``args`` may contain ``{name}`` placeholders that the harness fills in at start (for
    example ``{grpclib_stubs}``); ``env`` is added to the server's environment.  The entry is
    available when module ``requires`` can be imported and every executable in ``programs`` is
    on PATH; a ``default`` entry runs when ``--servers`` is not given, the others only when
    named.  ``tls_args`` are added in a ``--tls`` run, with the ``{tls_cert}`` and ``{tls_key}``
    placeholders naming the PEM files.  ``callgrind`` says whether the ``--instructions`` mode
    can count its instructions (not for a server that execs another runtime, which callgrind
    would not follow).
    """

    name: str
    module: str
    description: str
    requires: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    default: bool = True
    programs: tuple[str, ...] = ()
    callgrind: bool = True
    tls_args: tuple[str, ...] = ("--cert", "{tls_cert}", "--key", "{tls_key}")

    def _args(self, tls: bool) -> tuple[str, ...]:
        return (*self.args, *self.tls_args) if tls else self.args

    def placeholders(self, tls: bool = False) -> set[str]:
        """Return the placeholder names used in its arguments (over TLS when ``tls``)."""
        return {
            field
            for arg in self._args(tls)
            for _, field, _, _ in string.Formatter().parse(arg)
            if field is not None
        }

    def argv(self, python: str, values: Mapping[str, str], tls: bool = False) -> list[str]:
        """Return the command line that starts this server on a free port (serving TLS)."""
        args = [arg.format_map(values) for arg in self._args(tls)]
        return [python, "-m", self.module, "--port", "0", *args]

    def missing(self) -> str | None:
        """Return why this server cannot run here, or None if it can."""
        try:
            found = importlib.util.find_spec(self.requires) is not None
        except ImportError as error:
            return f"module {self.requires} is not importable ({error})"
        if not found:
            return f"module {self.requires} does not exist"
        absent = [program for program in self.programs if shutil.which(program) is None]
        return f"{', '.join(absent)} not found on PATH" if absent else None


_INTEROP_TLS = ("--use_tls", "--cert", "{tls_cert}", "--key", "{tls_key}")

SERVER_ENTRIES: tuple[ServerEntry, ...] = (
    ServerEntry(
        name="fastinject",
        module="fastinject.interop.server",
        description="fastinject interop server, listening socket",
        requires="fastinject.interop.server",
        tls_args=_INTEROP_TLS,
    ),
    ServerEntry(
        name="fastinject-inject",
        module="fastinject.interop.server",
        description="fastinject interop server, connections injected by its own listener",
        requires="fastinject.interop.server",
        args=("--transport", "inject"),
        tls_args=_INTEROP_TLS,
    ),
    ServerEntry(
        name="fastinject-asyncio",
        module="fastinject.interop.server",
        description="fastinject interop server on asyncio's own loop (no uvloop)",
        requires="fastinject.interop.server",
        args=("--loop", "asyncio"),
        default=False,
        tls_args=_INTEROP_TLS,
    ),
    ServerEntry(
        name="fastinject-py",
        module="fastinject.interop.server",
        description="fastinject interop server with the pure-Python framing twin",
        requires="fastinject.interop.server",
        env=(("FASTINJECT_NO_EXTENSIONS", "1"),),
        default=False,
        tls_args=_INTEROP_TLS,
    ),
    ServerEntry(
        name="grpc.aio",
        module="benchmarks.e2e.grpcaio_server",
        description="grpcio grpc.aio server with the same interop servicer",
        requires="fastinject.interop.servicer",
    ),
    ServerEntry(
        name="grpclib",
        module="benchmarks.e2e.grpclib_server",
        description="grpclib server with an equivalent servicer of the benchmarked methods",
        requires="grpclib",
        args=("--stubs", "{grpclib_stubs}"),
    ),
    ServerEntry(
        name="grpc-js",
        module="benchmarks.e2e.grpcjs_server",
        description="grpc-js (Node) server of the benchmarked methods, installed by npm ci",
        requires="benchmarks.e2e.grpcjs_server",
        args=("--node-modules", "{grpcjs_modules}"),
        programs=("node", "npm"),
        callgrind=False,
    ),
)
"""Every server the harness knows, in the order each round visits them.

To benchmark another server mode, add an entry here (``fastinject-inject`` is the interop
server with ``--transport inject``: the same workloads over injected connections).
"""

SERVER_ENTRIES_BY_NAME: dict[str, ServerEntry] = {entry.name: entry for entry in SERVER_ENTRIES}
"""Server entries keyed by their command-line name."""

_LISTENING = re.compile(r"^listening on (\d+)$", re.MULTILINE)


class ServerProcess:
    """One running server, pinned to a CPU, with its stdout and stderr in files.

    Use as a context manager, or call :meth:`stop`; both are safe to repeat.
    """

    def __init__(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        log_dir: Path,
        stop_timeout_s: float = 10.0,
    ) -> None:
        """Wrap an already started ``process``; use :meth:`start` instead."""
        self.name = name
        self.process = process
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self.port = 0

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        *,
        log_dir: Path,
        env: Mapping[str, str],
        cpu: int | None,
        ready_timeout_s: float,
        stop_timeout_s: float = 10.0,
    ) -> ServerProcess:
        """Start ``argv`` (pinned to ``cpu`` with taskset) and wait until it announces its port.

        Raises ServerStartError, with the tail of its stderr, if it exits or stays silent for
        ``ready_timeout_s`` seconds; the process is stopped first.  :meth:`stop` waits up to
        ``stop_timeout_s`` for it to exit before killing it.
        """
        log_dir.mkdir(parents=True, exist_ok=True)
        command = ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv
        with (log_dir / "stdout").open("wb") as out, (log_dir / "stderr").open("wb") as err:
            # A session of its own: a Ctrl-C in the terminal reaches only the harness, which
            # then stops every server itself, in order.
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,
            )
        server = cls(name, process, log_dir, stop_timeout_s)
        try:
            server.port = server._wait_for_port(ready_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_for_port(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _LISTENING.search((self.log_dir / "stdout").read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {self.process.returncode} before listening:\n"
                    f"{self.stderr_tail()}"
                )
            time.sleep(0.05)
        raise ServerStartError(
            f"{self.name} did not print 'listening on PORT' within {timeout_s:.0f} s:\n"
            f"{self.stderr_tail()}"
        )

    @property
    def pid(self) -> int:
        """Process id of the server (taskset execs it, so it is the server itself)."""
        return self.process.pid

    def cpu_seconds(self) -> float:
        """Return the CPU seconds the server and its descendants have used so far."""
        return procstat.cpu_seconds(self.pid)

    def alive(self) -> bool:
        """Return whether the server process is still running."""
        return self.process.poll() is None

    def stderr_tail(self, limit: int = 2000) -> str:
        """Return the last ``limit`` characters the server wrote to stderr."""
        try:
            return (self.log_dir / "stderr").read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""

    def stop(self) -> int:
        """Send SIGTERM, wait up to the stop timeout, then SIGKILL; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        """Return the server itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()


def child_environment(python_path: list[str]) -> dict[str, str]:
    """Return this process's environment with ``python_path`` prepended to PYTHONPATH."""
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([*python_path, *([existing] if existing else [])])
    env["PYTHONUNBUFFERED"] = "1"
    return env
