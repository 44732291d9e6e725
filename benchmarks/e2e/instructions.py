"""The ``--instructions`` procedure: server instructions per call, counted by callgrind.

Time on a shared machine is noisy; the instructions a server executes for a call are not.
Every server runs under callgrind (:mod:`benchmarks.e2e.callgrind`), started, checked and fed
by the same plumbing as the throughput mode (:func:`benchmarks.e2e.runner.session`).  Per
workload, each server is first warmed up with one small batch of calls; then each sample posts
a small and a large batch at a fixed concurrency (the workload's ``instructions`` plan, which
may keep fewer calls in flight than the throughput mode).  Samples alternate between the
servers like throughput rounds.

Every batch is bracketed by two dumps, the second taken once the server is idle again, so its
count is what the server executed for that batch and nothing else.  The batches' fixed costs
cancel in the difference (see :mod:`benchmarks.e2e.instruction_report`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.e2e import callgrind, h2load, runner
from benchmarks.e2e.instruction_report import Sample, format_count
from benchmarks.e2e.servers import ServerProcess
from benchmarks.e2e.workloads import Workload

FIRST_BATCH_TIMEOUT_S = 600.0
"""Time limit of a server's warm-up batch, before its speed under callgrind is known."""

READY_TIMEOUT_S = 300.0
"""Time limit for a server to start under callgrind (importing grpcio takes a while)."""

STOP_TIMEOUT_S = 120.0
"""Time a server under callgrind gets to exit on SIGTERM (callgrind writes a last dump)."""

CHECK_TIMEOUT_S = 600.0
"""Deadline of the grpcio check calls, which run under callgrind too."""

IDLE_PROBE_S = 0.2
"""Interval between two looks at the server's CPU time while waiting for it to go idle."""

IDLE_SHARE = 0.1
"""A server using less than this share of a CPU over one probe interval is idle."""

MAX_IDLE_PROBES = 50
"""Give up waiting for a server to go idle after this many probes."""


@dataclass
class InstructionOutcome:
    """Every sample measured, and what went wrong for which (workload, server)."""

    samples: list[Sample] = field(default_factory=list)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)


def adapt(options: runner.Options) -> runner.Options:
    """Return ``options`` with every server started under callgrind, and time limits to suit."""
    return dataclasses.replace(
        options,
        server_prefix=callgrind.command_prefix,
        ready_timeout_s=READY_TIMEOUT_S,
        stop_timeout_s=STOP_TIMEOUT_S,
        check_timeout_s=CHECK_TIMEOUT_S,
    )


def wait_until_idle(server: ServerProcess) -> bool:
    """Wait until ``server`` uses (almost) no CPU; return False if it never did in the limit.

    After h2load has every response the server may still be closing the connections; that
    work belongs to the batch, so the count waits for it.
    """
    before = server.cpu_seconds()
    for _ in range(MAX_IDLE_PROBES):
        time.sleep(IDLE_PROBE_S)
        after = server.cpu_seconds()
        if after - before < IDLE_SHARE * IDLE_PROBE_S:
            return True
        before = after
    return False


class _Counting:
    """The instructions procedure over one session's servers."""

    def __init__(self, started: runner.Session) -> None:
        self.session = started
        self.counters = {
            name: callgrind.Counter(server.pid, started.work_dir)
            for name, server in started.servers.items()
        }
        self.outcome = InstructionOutcome(failures=started.failures, exit_codes=started.exit_codes)
        self.seconds_per_call: dict[str, float] = {}

    def _timeout(self, name: str, calls: int) -> float:
        per_call = self.seconds_per_call.get(name)
        if per_call is None:
            return FIRST_BATCH_TIMEOUT_S
        return max(runner.MIN_RUN_TIMEOUT_S, runner.RUN_TIMEOUT_FACTOR * calls * per_call)

    def count(self, name: str, workload: Workload, body: Path, calls: int) -> tuple[int, float]:
        """Post one batch; return the instructions ``name`` executed for it and its duration.

        Raises H2loadError if a call failed, CallgrindError if the count cannot be read.
        """
        counter = self.counters[name]
        # Whatever the server did since its last count (idling, other servers' batches) is
        # not this batch's: start counting afresh.
        counter.read()
        result = self.session.post(name, workload, body, calls, self._timeout(name, calls))
        try:
            idle = wait_until_idle(self.session.servers[name])
        except ProcessLookupError as exc:
            raise callgrind.CallgrindError(f"{name} exited after its batch") from exc
        if not idle:
            self.session.log(
                f"  {name} was still busy {MAX_IDLE_PROBES * IDLE_PROBE_S:.0f} s "
                "after its batch; counting anyway"
            )
        return counter.read(), result.elapsed_s

    def warm_up(self, workload: Workload, body: Path) -> None:
        """Post one small batch to every server, which also times its calls."""
        small = workload.instructions.small
        for name in self.session.active(workload):
            try:
                _, elapsed_s = self.count(name, workload, body, small)
            except (h2load.H2loadError, callgrind.CallgrindError) as error:
                self.session.fail(workload, name, f"warm-up: {error}")
                continue
            self.seconds_per_call[name] = elapsed_s / small
            self.session.log(f"  {name}: warmed up, {elapsed_s / small * 1e3:.1f} ms per call")

    def sample(self, workload: Workload, body: Path, name: str, index: int) -> Sample:
        """Count a small then a large batch on ``name`` (H2loadError, CallgrindError)."""
        plan = workload.instructions
        small_count, _ = self.count(name, workload, body, plan.small)
        large_count, _ = self.count(name, workload, body, plan.large)
        return Sample(
            workload=workload.name,
            server=name,
            index=index,
            small_calls=plan.small,
            small_instructions=small_count,
            large_calls=plan.large,
            large_instructions=large_count,
        )

    def measure_workload(self, workload: Workload) -> None:
        """Warm every server up on ``workload``, then take the alternating samples."""
        plan = workload.instructions
        self.session.log(f"{workload.name}: {workload.description}; {plan.describe()}")
        body = self.session.body(workload)
        # The same calls, at the plan's concurrency.
        driven = dataclasses.replace(workload, clients=plan.clients, streams=plan.streams)
        self.seconds_per_call.clear()
        self.warm_up(driven, body)
        rounds = self.session.options.rounds
        for index in range(rounds):
            for name in self.session.active(driven):
                try:
                    sample = self.sample(driven, body, name, index)
                except (h2load.H2loadError, callgrind.CallgrindError) as error:
                    self.session.fail(driven, name, f"sample {index + 1}: {error}")
                    continue
                self.outcome.samples.append(sample)
                self.session.log(
                    f"  sample {index + 1}/{rounds} {name}: "
                    f"{format_count(sample.per_call)} instructions/call, "
                    f"{format_count(sample.per_batch)} per batch"
                )


def run(options: runner.Options, log: runner.Log = runner.stderr_log) -> InstructionOutcome:
    """Count every server's instructions per call; all servers are stopped before this returns.

    ``options`` should come from :func:`adapt`.
    """
    with runner.session(options, log) as started:
        counting = _Counting(started)
        started.check_all()
        for workload in options.workloads:
            counting.measure_workload(workload)
    return counting.outcome
