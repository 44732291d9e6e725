"""CPU time of a process and its descendants, and of a whole CPU, read from Linux ``/proc``.

``/proc/<pid>/stat`` reports user and system time of every thread of the process (fields 14
and 15) plus that of its children it has waited for (fields 16 and 17), in clock ticks.
Descendants still running are found through their parent pid and added, so a server that
forks workers is measured whole.  ``/proc/stat`` gives the busy time of each CPU, from which
the harness tells how much of the server's CPU other processes took during a round.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Return the fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ")".
    return text[text.rindex(")") + 2 :].split()


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds used so far by ``pid`` and all its descendants.

    Raises ProcessLookupError if ``pid`` no longer exists.
    """
    children = _children_of()
    total_ticks = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        fields = _stat_fields(current)
        if fields is None:
            if current == pid:
                raise ProcessLookupError(f"process {pid} has exited")
            continue
        # After the command name: state, ppid, ..., utime is the 12th, cstime the 15th.
        total_ticks += sum(int(value) for value in fields[11:15])
        pending.extend(children.get(current, ()))
    return total_ticks / _TICKS_PER_SECOND


def waited_children_cpu_seconds() -> float:
    """Return user + system CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_busy_seconds(cpu: int) -> tuple[float, float]:
    """Return (busy, steal) seconds of logical CPU ``cpu`` since boot, from ``/proc/stat``.

    Busy is user + nice + system + irq + softirq time of every process on that CPU; steal is
    time the hypervisor ran something else while this virtual CPU wanted to run.
    """
    prefix = f"cpu{cpu} "
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith(prefix):
            user, nice, system, _idle, _iowait, irq, softirq, steal = (
                int(value) for value in line.split()[1:9]
            )
            busy = user + nice + system + irq + softirq
            return busy / _TICKS_PER_SECOND, steal / _TICKS_PER_SECOND
    raise ValueError(f"/proc/stat has no line for CPU {cpu}")


@dataclass(frozen=True)
class CoreSample:
    """Busy and steal seconds of some CPUs at one moment (monotonic clock ``at``)."""

    at: float
    busy: dict[int, float]
    steal: dict[int, float]


def sample_cores(cores: Iterable[int]) -> CoreSample:
    """Return the busy and steal seconds of ``cores`` now."""
    readings = {core: cpu_busy_seconds(core) for core in cores}
    return CoreSample(
        at=time.monotonic(),
        busy={core: busy for core, (busy, _) in readings.items()},
        steal={core: steal for core, (_, steal) in readings.items()},
    )


def interference(
    before: CoreSample, after: CoreSample, own: Mapping[int, float]
) -> tuple[float, float] | None:
    """Return how much of the sampled CPUs was not ours between two samples.

    ``own`` maps each CPU to the CPU seconds our own processes used on it.  The result is
    (others, steal): the largest share of any of the CPUs that other processes used, and the
    largest share the hypervisor stole; None when no CPU was sampled.
    """
    wall = after.at - before.at
    if not before.busy or wall <= 0:
        return None
    others = max(
        max(0.0, after.busy[core] - before.busy[core] - own.get(core, 0.0)) / wall
        for core in before.busy
    )
    steal = max((after.steal[core] - before.steal[core]) / wall for core in before.steal)
    return others, steal
