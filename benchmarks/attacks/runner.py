"""Runs each attack against each server: a fresh server, a baseline, the attack, the figures.

Timeline of one (attack, server) pair, on the monotonic clock all local processes share::

    server starts -> legit client starts -> warm-up -> baseline window -> gap -> attack window
    -> tail (calls started in the window finish) -> server sampled again once everyone left

The legitimate client is a process of its own (:mod:`.legit`); the attacker runs in this
process.  The server's RSS, peak RSS (``VmHWM``), fds and CPU come from ``/proc``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.attacks.catalog import Attack, Target
from benchmarks.attacks.measure import (
    AttackerView,
    Call,
    Outcome,
    ServerSample,
    Window,
    client_figures,
    sample_server,
)
from benchmarks.e2e.runner import REPOSITORY, package_root, placeholder_values
from benchmarks.e2e.servers import ServerEntry, ServerProcess, child_environment

WARM_UP_S = 1.0
GAP_S = 0.5
TAIL_S = 2.5
SETTLE_S = 1.0


@dataclass(frozen=True)
class Plan:
    """What to run and how hard."""

    attacks: Sequence[Attack]
    servers: Sequence[ServerEntry]
    seconds: float = 5.0  # length of the baseline and of the attack window
    rate: float = 200.0  # legitimate calls per second
    intensity: float = 1.0  # scales every attack's budget
    server_cpu: int | None = None


def run(plan: Plan, work_dir: Path, log: Callable[[str], None]) -> list[Outcome]:
    """Every attack of ``plan`` against every server; the outcomes in table order."""
    tls = any(attack.tls for attack in plan.attacks)
    values = placeholder_values(tuple(plan.servers), work_dir, tls)
    env = child_environment([str(package_root()), str(REPOSITORY)])
    outcomes = []
    for attack in plan.attacks:
        for entry in plan.servers:
            log(f"{attack.name} against {entry.name} ...")
            outcomes.append(_one(plan, attack, entry, values, env, work_dir))
    return outcomes


def _one(plan: Plan, attack: Attack, entry: ServerEntry, values: dict[str, str],
         env: dict[str, str], work_dir: Path) -> Outcome:
    with ServerProcess.start(
        entry.name,
        entry.argv(sys.executable, values, attack.tls),
        log_dir=work_dir / "logs" / attack.name / entry.name,
        env={**env, **dict(entry.env)},
        cpu=plan.server_cpu,
        ready_timeout_s=60.0,
    ) as server:
        legit_argv = [
            sys.executable, "-m", "benchmarks.attacks.legit", "--port", str(server.port),
            "--seconds", str(WARM_UP_S + 2 * plan.seconds + GAP_S), "--rate", str(plan.rate),
        ]
        if attack.tls:
            legit_argv += ["--root-cert", values["tls_cert"]]
        with subprocess.Popen(legit_argv, stdout=subprocess.PIPE, env=env, text=True) as legit:
            assert legit.stdout is not None
            first = legit.stdout.readline().split()
            if first[:1] != ["start"]:
                raise RuntimeError(f"the legitimate client did not start against {entry.name}")
            begin = float(first[1]) + WARM_UP_S
            baseline = Window(begin, begin + plan.seconds)
            attacked = Window(baseline.end + GAP_S, baseline.end + GAP_S + plan.seconds)
            view = AttackerView()
            before, after = asyncio.run(_attack(attack, server, attacked, plan, view))
            calls = [Call(*row) for row in json.loads(legit.stdout.read() or "[]")]
        time.sleep(SETTLE_S)
        settled = sample_server(server.pid)
    return Outcome(
        attack=attack.name,
        server=entry.name,
        baseline=client_figures(calls, baseline),
        attacked=client_figures(calls, attacked),
        before=before,
        after=after,
        settled=settled,
        seconds=attacked.seconds,
        attacker=view,
    )


async def _attack(attack: Attack, server: ServerProcess, window: Window, plan: Plan,
                  view: AttackerView) -> tuple[ServerSample, ServerSample]:
    """Wait for ``window``, sample the server, attack until its end, sample again."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, window.start - time.monotonic()))
    before = sample_server(server.pid)
    deadline = loop.time() + (window.end - time.monotonic())
    target = Target(server.port, attack.tls, deadline, plan.intensity, view)
    try:
        async with asyncio.timeout(max(0.0, deadline - loop.time()) + 1.0):
            await attack.run(target)
    except TimeoutError:
        pass  # the attack overran its window: it is stopped here
    await asyncio.sleep(max(0.0, window.end - time.monotonic()))
    return before, sample_server(server.pid)
