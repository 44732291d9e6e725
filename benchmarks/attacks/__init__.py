"""Hostile-peer benchmark: each attack of issue 9 against fastinject, grpc.aio and grpc-js.

Run ``python -m benchmarks.attacks`` (``--help`` for options).  For every attack and server it
starts a fresh server (``benchmarks.e2e.servers``), measures a paced legitimate grpcio client
alone, then again while the attack runs, and prints per attack: the legitimate client's goodput
during the attack as a percentage of its baseline, its p99 latency ratio, the server's RSS
growth and CPU, and what the attacker saw (GOAWAY codes, closed connections).

Adding an attack (for example a compression bomb) is adding an :class:`~.catalog.Attack` to
``catalog.ATTACKS``: a name, a description and an ``async def run(target: Target) -> None``
that attacks ``target`` (use ``target.connect()`` for connections, whose frames are parsed and
counted, and stop at ``target.deadline`` or once ``target.budget`` is spent).  The runner,
the table and ``--attacks NAME`` pick it up.  See ``benchmarks/README.md``.
"""
