"""The ``fastinject`` command (also ``python -m fastinject``).

``fastinject serve myapp.server:make_server --bind '[::]:50051' --workers 4`` runs a
supervisor and four worker processes; ``--workers 1`` serves in this process, without a
supervisor.  Exit status: 0 after a clean shutdown, 2 for usage errors, 3 when the server
cannot be built (bad factory, unreadable or invalid certificate files, address in use).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .binds import Bind, TlsFiles, load_credentials
from .factory import FactoryError, build_server
from .handle import WorkerBootError
from .loops import LOOPS, check_loop, run
from .supervisor import Supervisor, usable_cpus
from .worker import BOOT_FAILED, LOG_FORMAT, build_credentials

__all__ = ["main", "parser"]

logger = logging.getLogger("fastinject")

_LEVELS = ("critical", "error", "warning", "info", "debug")


def parser() -> argparse.ArgumentParser:
    """The command line parser (``fastinject --help``)."""
    top = argparse.ArgumentParser(
        prog="fastinject",
        description="Run a fastinject gRPC server on every core: a supervisor accepts each "
        "connection and hands it to the least-loaded worker process.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the fastinject.Server a factory builds",
        description="Serve the fastinject.Server that FACTORY builds, in --workers processes. "
        "Signals: SIGTERM/SIGINT drain and stop (a second one stops at once), SIGHUP reloads "
        "(new workers, re-read certificate files; the old workers drain). Balancing is per "
        "connection: set max_connection_age on the server to rebalance long-lived clients.",
    )
    serve.add_argument(
        "factory", metavar="FACTORY",
        help="'module:function' returning a configured fastinject.Server (the function may be "
        "async); it runs in every worker and must not bind ports",
    )
    serve.add_argument(
        "--bind", action="append", metavar="ADDRESS",
        help="address to listen on: host:port, [ipv6]:port or unix:path; repeat for several "
        "(default: [::]:50051)",
    )
    serve.add_argument(
        "--workers", type=_positive_int, default=usable_cpus(), metavar="N",
        help="worker processes (default: the usable CPUs, %(default)s here); 1 serves in this "
        "process without a supervisor",
    )
    serve.add_argument("--certfile", metavar="PEM", help="server certificate chain: serve TLS")
    serve.add_argument("--keyfile", metavar="PEM", help="server private key (with --certfile)")
    serve.add_argument(
        "--client-ca", metavar="PEM",
        help="CA certificates client certificates must chain to: mutual TLS (clients without "
        "such a certificate are refused); needs --certfile and --keyfile",
    )
    serve.add_argument(
        "--grace", type=_non_negative_float, default=30.0, metavar="SECONDS",
        help="how long running calls may go on at shutdown or reload before they are "
        "cancelled (default: %(default)s)",
    )
    serve.add_argument(
        "--log-level", choices=_LEVELS, default="info", help="log level (default: %(default)s)"
    )
    serve.add_argument(
        "--loop", choices=LOOPS, default="auto",
        help="event loop of the workers: uvloop when installed (auto, the default), or force "
        "one",
    )
    serve.add_argument(
        "--app-dir", default=".", metavar="DIR",
        help="directory put first on sys.path to import FACTORY from (default: the current "
        "directory)",
    )
    return top


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _binds(args: argparse.Namespace, usage: argparse.ArgumentParser) -> list[Bind]:
    if (args.certfile is None) != (args.keyfile is None):
        usage.error("--certfile and --keyfile go together")
    if args.client_ca is not None and args.certfile is None:
        usage.error("--client-ca needs --certfile and --keyfile")
    tls = None
    if args.certfile is not None:
        tls = TlsFiles(args.certfile, args.keyfile, args.client_ca)
    return [Bind(address, tls) for address in (args.bind or ["[::]:50051"])]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the process exit status."""
    top = parser()
    args = top.parse_args(argv)
    binds = _binds(args, top)
    loop_problem = check_loop(args.loop)
    if loop_problem is not None:
        top.error(f"--loop {args.loop}: {loop_problem}")
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    app_dir = os.path.abspath(args.app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        if args.workers == 1:
            return run(_serve_in_process(args.factory, binds, args.grace), args.loop)
        supervisor = Supervisor(
            args.factory, binds, workers=args.workers, grace=args.grace,
            log_level=args.log_level, sys_path=[app_dir], loop=args.loop,
        )
        return asyncio.run(_supervise(supervisor))
    except (OSError, ValueError, RuntimeError, FactoryError, WorkerBootError) as exc:
        logger.error("cannot serve: %s", exc)
        return BOOT_FAILED


async def _supervise(supervisor: Supervisor) -> int:
    supervisor.install_signal_handlers()
    await supervisor.start()
    await supervisor.wait_stopped()
    return 0


async def _serve_in_process(factory: str, binds: Sequence[Bind], grace: float) -> int:
    try:
        server = await build_server(factory)
    except FactoryError:
        raise
    except Exception:
        logger.exception("cannot serve: the factory %s failed", factory)
        return BOOT_FAILED
    for bind in binds:
        credentials = build_credentials(load_credentials(bind.tls))
        port = server.add_secure_port(bind.address, credentials)
        logger.info("listening on %s", _resolved(bind.address, port))
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_stop_signal(signum: int) -> None:
        logger.info("%s: shutting down", signal.Signals(signum).name)
        stopping.append(loop.create_task(server.stop(0.0 if stopping else grace)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum)
    loop.add_signal_handler(
        signal.SIGHUP, logger.warning, "SIGHUP: reloading needs --workers 2 or more; ignored"
    )
    logger.info("serving in process %d (--workers 1)", os.getpid())
    await server.wait_for_termination()
    logger.info("stopped")
    return 0


def _resolved(address: str, port: int) -> str:
    """``address`` with a port of 0 replaced by the port bound."""
    host, sep, _ = address.rpartition(":")
    return f"{host}:{port}" if sep and not address.startswith("unix:") else address
