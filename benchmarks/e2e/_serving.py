"""The command-line contract the benchmark server scripts share with the fastinject interop server.

A server is started as ``python -m <module> --port 0 [more options]``, prints exactly
``listening on PORT`` on stdout once it accepts connections on 127.0.0.1, and exits 0 when it
receives SIGTERM (or SIGINT).  The harness relies on nothing else, so any server that keeps this
contract can be benchmarked.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

LISTEN_HOST = "127.0.0.1"
"""The only address the benchmark servers listen on."""


def base_parser(description: str) -> argparse.ArgumentParser:
    """Return an argument parser with the ``--port`` option every server script accepts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = pick a free one)"
    )
    parser.add_argument("--cert", help="PEM certificate chain: serve TLS (ALPN h2)")
    parser.add_argument("--key", help="PEM private key of --cert")
    return parser


def tls_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str] | None:
    """Return the ``--cert`` and ``--key`` paths, or None for plaintext (error if only one)."""
    if args.cert is None and args.key is None:
        return None
    if args.cert is None or args.key is None:
        parser.error("--cert and --key go together")
    return args.cert, args.key


def server_ssl_context(files: tuple[str, str]) -> ssl.SSLContext:
    """Return a server SSLContext for ``(cert, key)`` that offers only ALPN ``h2``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*files)
    context.set_alpn_protocols(["h2"])
    return context


def announce(port: int) -> None:
    """Tell the harness the server is ready: print ``listening on PORT`` and flush."""
    print(f"listening on {port}", flush=True)


async def wait_for_stop_signal() -> None:
    """Return once the process receives SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
