"""The benchmark procedure: start the servers, check them, warm up, then alternate timed rounds.

:func:`session` starts the servers and posts checked batches of calls; every mode builds on it
(the ``--instructions`` mode in :mod:`benchmarks.e2e.instructions`).  For every workload, each
server is first warmed up (which also sizes a round so that it lasts about ``duration_s``),
then the rounds visit the servers in turn (A B C A B C ...), so slow drifts of the machine
spread evenly over all servers.  Each round posts a fixed number of calls with h2load, checks
that every one succeeded, and reads the server's CPU time before and after.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.e2e import certificate, h2load, nodejs, procstat, stubs
from benchmarks.e2e.grpcio_check import CALL_TIMEOUT_S, check_call
from benchmarks.e2e.report import Round, format_seconds, percentiles
from benchmarks.e2e.servers import ServerEntry, ServerProcess, child_environment
from benchmarks.e2e.workloads import Workload

MAX_WARMUP_RUNS = 16
"""Upper bound on h2load runs in one warm-up, whatever the rates."""

MIN_RUN_TIMEOUT_S = 60.0
"""No h2load run is killed sooner than this."""

RUN_TIMEOUT_FACTOR = 10.0
"""An h2load run is killed after this many times its expected duration (or the minimum)."""

REPOSITORY = Path(__file__).resolve().parents[2]
"""The repository root (this file is ``benchmarks/e2e/runner.py``)."""


class HarnessError(Exception):
    """The benchmark cannot run at all (as opposed to one server failing one workload)."""


@dataclass(frozen=True)
class Options:
    """What to run and how long: the parsed command line.

    Each round posts ``requests`` calls when it is set; otherwise as many as the warm-up rate
    says fit in ``duration_s`` (at least one call per stream in flight).
    """

    servers: tuple[ServerEntry, ...]
    workloads: tuple[Workload, ...]
    rounds: int
    duration_s: float
    requests: int | None
    warmup_s: float
    server_cpu: int | None
    client_cpu: int | None
    h2load_path: str = h2load.H2LOAD
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    check_timeout_s: float = CALL_TIMEOUT_S
    server_prefix: Callable[[Path], list[str]] | None = None
    """Command prefix of every server (e.g. valgrind), given the run's work directory."""
    tls: bool = False
    """Serve and call over TLS (ALPN h2) with a certificate generated for the run."""


@dataclass
class Outcome:
    """Everything a run measured, and what went wrong for which (workload, server)."""

    rounds: list[Round] = field(default_factory=list)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    calls_per_round: dict[tuple[str, str], int] = field(default_factory=dict)
    warmup_rates: dict[tuple[str, str], float] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)


Log = Callable[[str], None]


@dataclass
class Load:
    """CPU use during one h2load run.

    ``server`` is the server's CPU seconds; ``others`` the largest share of either pinned CPU
    (the server's or h2load's) that other processes used, ``steal`` the largest share the
    hypervisor took from either; both None when nothing is pinned.
    """

    server: float
    others: float | None = None
    steal: float | None = None


def stderr_log(message: str) -> None:
    """Print a progress message to stderr at once."""
    print(message, file=sys.stderr, flush=True)


def package_root() -> Path:
    """Return the directory holding the ``fastinject`` package (``src`` in a checkout)."""
    import fastinject

    if fastinject.__file__ is None:
        raise HarnessError("fastinject is a namespace package; cannot locate its sources")
    return Path(fastinject.__file__).resolve().parents[1]


def placeholder_values(
    entries: tuple[ServerEntry, ...], work_dir: Path, tls: bool
) -> dict[str, str]:
    """Values of the entries' argument placeholders (TLS files written under ``work_dir``)."""
    needed = set().union(*(entry.placeholders(tls) for entry in entries))
    values: dict[str, str] = {}
    if tls:
        cert, key = certificate.write_self_signed(work_dir / "tls")
        values.update(tls_cert=str(cert), tls_key=str(key))
    if "grpclib_stubs" in needed:
        values["grpclib_stubs"] = str(
            stubs.generate_grpclib(package_root(), work_dir / "grpclib_stubs")
        )
    if "grpcjs_modules" in needed:
        values["grpcjs_modules"] = str(nodejs.install_grpcjs())
    unknown = needed - values.keys()
    if unknown:
        raise HarnessError(f"no value for server argument placeholders {sorted(unknown)}")
    return values


class Session:
    """Started servers, a work directory and what went wrong so far: what every mode shares.

    A (workload, server) pair that failed once is left out of everything that follows.
    """

    def __init__(
        self,
        options: Options,
        servers: dict[str, ServerProcess],
        work_dir: Path,
        log: Log,
        root_certificate: bytes | None = None,
    ) -> None:
        """Wrap servers started by :func:`session`; they serve TLS with ``root_certificate``."""
        self.options = options
        self.servers = servers
        self.work_dir = work_dir
        self.log = log
        self.root_certificate = root_certificate
        self.failures: dict[tuple[str, str], str] = {}
        self.exit_codes: dict[str, int] = {}

    def fail(self, workload: Workload, server: str, reason: str) -> None:
        """Record that ``server`` failed ``workload``, and why."""
        self.failures[(workload.name, server)] = reason
        self.log(f"  FAILED {workload.name} on {server}: {reason}")

    def active(self, workload: Workload) -> list[str]:
        """Return the servers that have not failed ``workload``, in start order."""
        return [name for name in self.servers if (workload.name, name) not in self.failures]

    def check_all(self) -> None:
        """Make one grpcio call per workload against every server and check it."""
        for workload in self.options.workloads:
            for name, server in self.servers.items():
                problem = check_call(
                    server.port, workload, self.options.check_timeout_s, self.root_certificate
                )
                if problem is not None:
                    self.fail(workload, name, f"grpcio check: {problem}")
                else:
                    self.log(f"  {workload.name} on {name}: grpcio call OK")

    def body(self, workload: Workload) -> Path:
        """Write the request body of ``workload`` to a file and return its path."""
        body = self.work_dir / f"{workload.name}.body"
        body.write_bytes(workload.request_body())
        return body

    def h2load_runs(
        self, name: str, workload: Workload, body: Path, calls: int, log_file: Path | None
    ) -> list[list[str]]:
        """Return the h2load commands that post ``calls`` calls of ``workload`` to ``name``.

        One command, except for a workload with a connection per call: then runs of at most
        ``workload.clients`` connections, one call each.
        """
        sizes = [calls]
        if workload.connection_per_call:
            whole, rest = divmod(calls, workload.clients)
            sizes = [workload.clients] * whole + ([rest] if rest else [])
        return [
            h2load.command(
                self.servers[name].port,
                workload.path,
                body,
                size,
                size if workload.connection_per_call else workload.clients,
                workload.streams,
                h2load=self.options.h2load_path,
                cpu=self.options.client_cpu,
                tls=self.options.tls,
                log_file=log_file,
            )
            for size in sizes
        ]

    def execute(
        self, name: str, workload: Workload, body: Path, calls: int, timeout_s: float
    ) -> tuple[h2load.H2loadResult, tuple[float, ...]]:
        """Run h2load until ``calls`` calls were posted to ``name``; no check of the outcome.

        Returns the summary of the runs and, for a ``latency`` workload, the latency
        percentiles of the calls (:data:`benchmarks.e2e.report.PERCENTILES`), else ``()``.
        Each run is killed after ``timeout_s`` (H2loadError).
        """
        log_file = self.work_dir / f"{name}.latency" if workload.latency else None
        results, latencies = [], []
        for argv in self.h2load_runs(name, workload, body, calls, log_file):
            results.append(h2load.run(argv, timeout_s))
            if log_file is not None:
                latencies += h2load.read_latencies(log_file)
        return h2load.combine(results), percentiles(latencies) if latencies else ()

    def verify(
        self, name: str, workload: Workload, result: h2load.H2loadResult, calls: int
    ) -> None:
        """Raise H2loadError unless all ``calls`` succeeded and ``name`` is still running."""
        problems = h2load.problems(result, calls, workload.min_response_data())
        server = self.servers[name]
        if not server.alive():
            problems.append(f"server exited with {server.process.returncode}")
        if problems:
            raise h2load.H2loadError("; ".join(problems))

    def post(
        self, name: str, workload: Workload, body: Path, calls: int, timeout_s: float
    ) -> h2load.H2loadResult:
        """Post ``calls`` calls to ``name`` and check they all succeeded (else H2loadError)."""
        result, _ = self.execute(name, workload, body, calls, timeout_s)
        self.verify(name, workload, result, calls)
        return result

    def stop_all(self) -> None:
        """Stop every server, recording its exit code; show the stderr of any that failed."""
        failed = {server for _, server in self.failures}
        for name, server in self.servers.items():
            code = self.exit_codes[name] = server.stop()
            if code != 0 or name in failed:
                # The logs live in the temporary directory: show what may explain the failure.
                self.log(
                    f"{name} exited with {code}; the end of its stderr:\n{server.stderr_tail()}"
                )


@contextlib.contextmanager
def session(options: Options, log: Log = stderr_log) -> Iterator[Session]:
    """Start every server of ``options`` and yield them; all are stopped when this exits."""
    with (
        tempfile.TemporaryDirectory(prefix="fastinject-e2e-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work_dir = Path(tmp)
        values = placeholder_values(options.servers, work_dir, options.tls)
        env = child_environment([str(package_root()), str(REPOSITORY)])
        prefix = [] if options.server_prefix is None else options.server_prefix(work_dir)
        servers: dict[str, ServerProcess] = {}
        for entry in options.servers:
            server = ServerProcess.start(
                entry.name,
                [*prefix, *entry.argv(sys.executable, values, options.tls)],
                log_dir=work_dir / "logs" / entry.name,
                env={**env, **dict(entry.env)},
                cpu=options.server_cpu,
                ready_timeout_s=options.ready_timeout_s,
                stop_timeout_s=options.stop_timeout_s,
            )
            stack.enter_context(server)
            servers[entry.name] = server
            log(f"started {entry.name} (pid {server.pid}) on 127.0.0.1:{server.port}")
        root = Path(values["tls_cert"]).read_bytes() if options.tls else None
        opened = Session(options, servers, work_dir, log, root)
        yield opened
        opened.stop_all()


class _Bench:
    """The throughput procedure over one session's servers."""

    def __init__(self, started: Session) -> None:
        self.session = started
        self.options = started.options
        self.outcome = Outcome(failures=started.failures, exit_codes=started.exit_codes)

    def _run(
        self, workload: Workload, name: str, body: Path, calls: int, expected_s: float | None
    ) -> tuple[h2load.H2loadResult, Load, tuple[float, ...]]:
        """Post ``calls`` calls; return h2load's summary, the CPU it took and the latencies."""
        server = self.session.servers[name]
        timeout = MIN_RUN_TIMEOUT_S
        if expected_s is not None:
            timeout = max(timeout, RUN_TIMEOUT_FACTOR * expected_s)
        server_core, client_core = self.options.server_cpu, self.options.client_cpu
        cores = [core for core in (server_core, client_core) if core is not None]
        cores_before = procstat.sample_cores(cores)
        children_before = procstat.waited_children_cpu_seconds()
        cpu_before = server.cpu_seconds()
        result, latency = self.session.execute(name, workload, body, calls, timeout)
        load = Load(server=server.cpu_seconds() - cpu_before)
        # h2load has been waited for, so its CPU time is now in the children's account.
        h2load_cpu = procstat.waited_children_cpu_seconds() - children_before
        own = {
            core: cpu
            for core, cpu in ((server_core, load.server), (client_core, h2load_cpu))
            if core is not None
        }
        shares = procstat.interference(cores_before, procstat.sample_cores(cores), own)
        if shares is not None:
            load.others, load.steal = shares
        self.session.verify(name, workload, result, calls)
        return result, load, latency

    def warm_up(self, workload: Workload, name: str, body: Path) -> tuple[int, float]:
        """Warm ``name`` up on ``workload``; return the calls per round and the last rate."""
        wave = workload.clients * workload.streams
        calls, spent, rate = wave, 0.0, 0.0
        for _ in range(MAX_WARMUP_RUNS):
            result, _, _ = self._run(
                workload, name, body, calls, calls / rate if rate else None
            )
            spent += result.elapsed_s
            rate = calls / result.elapsed_s
            remaining = self.options.warmup_s - spent
            if remaining <= 0:
                break
            calls = max(wave, min(2 * calls, math.ceil(rate * remaining)))
        if self.options.requests is not None:
            return self.options.requests, rate
        calls = max(wave, round(rate * self.options.duration_s))
        return math.ceil(calls / workload.clients) * workload.clients, rate

    def bench_workload(self, workload: Workload) -> None:
        """Warm every server up on ``workload``, then run the alternating timed rounds."""
        body = self.session.body(workload)
        self.session.log(f"{workload.name}: {workload.description}")
        for name in self.session.active(workload):
            try:
                calls, rate = self.warm_up(workload, name, body)
            except h2load.H2loadError as error:
                self.session.fail(workload, name, f"warm-up: {error}")
                continue
            self.outcome.calls_per_round[(workload.name, name)] = calls
            self.outcome.warmup_rates[(workload.name, name)] = rate
            self.session.log(f"  {name}: warmed up, {calls} calls per round")
        for index in range(self.options.rounds):
            for name in self.session.active(workload):
                calls = self.outcome.calls_per_round[(workload.name, name)]
                expected_s = calls / self.outcome.warmup_rates[(workload.name, name)]
                try:
                    result, load, latency = self._run(workload, name, body, calls, expected_s)
                except h2load.H2loadError as error:
                    self.session.fail(workload, name, f"round {index + 1}: {error}")
                    continue
                measured = Round(
                    workload=workload.name,
                    server=name,
                    index=index,
                    calls=calls,
                    elapsed_s=result.elapsed_s,
                    cpu_s=load.server,
                    others_load=load.others,
                    steal=load.steal,
                    latency_s=latency,
                )
                self.outcome.rounds.append(measured)
                self.session.log(
                    f"  round {index + 1}/{self.options.rounds} {name}: "
                    f"{measured.rate:,.1f} calls/s, "
                    f"{format_seconds(measured.cpu_per_call)} CPU/call"
                    + ("" if load.others is None else f", others {load.others:.0%}")
                )


def run(options: Options, log: Log = stderr_log) -> Outcome:
    """Run the throughput benchmark; every server started is stopped before this returns."""
    with session(options, log) as started:
        bench = _Bench(started)
        started.check_all()
        for workload in options.workloads:
            bench.bench_workload(workload)
    return bench.outcome
