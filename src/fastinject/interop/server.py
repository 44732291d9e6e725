"""Command line interop server: ``python -m fastinject.interop.server --port PORT``.

Serves :class:`~fastinject.interop.servicer.TestServiceServicer` with fastinject on
127.0.0.1, in plaintext, TLS (``--use_tls --cert FILE --key FILE``) or mutual TLS (add
``--client_ca FILE``).  It prints exactly one line, ``listening on PORT``, once it accepts
connections (with ``--port 0`` PORT is the port the system chose), logs nothing per RPC, and
exits with status 0 after a graceful stop on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import fastinject

from .servicer import TestServiceServicer, add_test_service

HOST = "127.0.0.1"
"""The interface the server listens on."""

MAX_RECEIVE_MESSAGE_LENGTH = 16 << 20
"""The largest request message the server accepts (16 MiB)."""

STOP_GRACE_SECONDS = 1.0
"""How long in-flight RPCs may run on after a stop signal before they are cancelled."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM contents of the server's TLS certificate chain, key and optional client CA."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


@dataclass(frozen=True)
class ServerConfig:
    """What the command line asked for."""

    port: int
    tls: TlsFiles | None
    transport: str
    loop: str = "auto"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean (true/false): {text!r}")


def _pem_file(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path!r}: {error.strerror}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line parser of the interop server."""
    parser = argparse.ArgumentParser(
        prog="python -m fastinject.interop.server",
        description="Serve the gRPC interop TestService with fastinject on 127.0.0.1.",
    )
    parser.add_argument("--port", type=_port, required=True, help="port to listen on (0: any)")
    parser.add_argument(
        "--use_tls",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="serve TLS (a bare flag or =true/false, as interop runners pass it)",
    )
    parser.add_argument("--cert", type=_pem_file, help="PEM certificate chain (with --use_tls)")
    parser.add_argument("--key", type=_pem_file, help="PEM private key (with --use_tls)")
    parser.add_argument(
        "--client_ca",
        type=_pem_file,
        help="PEM CA certificates; clients must present a certificate they signed (mTLS)",
    )
    parser.add_argument(
        "--transport",
        choices=("listen", "inject"),
        default="listen",
        help="listen: the server's own port; inject: a plain listener of this program hands "
        "each accepted socket to a ConnectionInjector with the same credentials "
        "(default: listen)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (auto, the default), or force one",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    """Parse and check the command line; exits with status 2 and a message on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tls: TlsFiles | None = None
    if args.use_tls:
        if args.cert is None or args.key is None:
            parser.error("--use_tls needs --cert and --key")
        tls = TlsFiles(cert=args.cert, key=args.key, client_ca=args.client_ca)
    elif args.cert is not None or args.key is not None or args.client_ca is not None:
        parser.error("--cert, --key and --client_ca need --use_tls")
    return ServerConfig(port=args.port, tls=tls, transport=args.transport, loop=args.loop)


def _credentials(tls: TlsFiles) -> fastinject.ServerCredentials:
    return fastinject.ServerCredentials.ssl(
        [(tls.key, tls.cert)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )


async def serve(config: ServerConfig) -> None:
    """Run the interop server until SIGINT or SIGTERM, then stop it gracefully."""
    server = fastinject.Server(
        options=[("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH)]
    )
    add_test_service(TestServiceServicer(), server)
    address = f"{HOST}:{config.port}"
    credentials = (
        fastinject.ServerCredentials.insecure() if config.tls is None
        else _credentials(config.tls)
    )
    loop = asyncio.get_running_loop()
    listener: socket.socket | None = None
    if config.transport == "inject":
        listener = socket.create_server((HOST, config.port), backlog=1024)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        injector = server.create_connection_injector(credentials)
        loop.add_reader(listener.fileno(), _inject_accepted, listener, injector)
    elif config.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)

    stop_requested = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)

    await server.start()
    # Everything made so far lives as long as the process: leave it out of garbage
    # collections, which a server's per-connection objects start often.
    gc.freeze()
    print(f"listening on {port}", flush=True)
    await stop_requested.wait()
    if listener is not None:
        loop.remove_reader(listener.fileno())
        listener.close()
    await server.stop(STOP_GRACE_SECONDS)


def _inject_accepted(listener: socket.socket, injector: fastinject.ConnectionInjector) -> None:
    """Accept one connection waiting on our own listener and inject it.

    ``--transport inject``: called when the listener is readable (no coroutine step or future
    per connection).  One connection per call, as uvloop's own listening servers take them
    under load: the next waits for the next loop turn, after the work of those accepted
    (taking a whole backlog at once made 64 new connections start together, their objects
    alive at once, and the garbage collector run).
    """
    try:
        # listener.accept() less its two enum conversions (family and type, per call)
        fd, _ = listener._accept()  # type: ignore[attr-defined]
    except (BlockingIOError, InterruptedError):
        return
    except OSError as exc:  # out of descriptors, say: try again when next readable
        print(f"accept failed: {exc}", file=sys.stderr, flush=True)
        return
    injector.inject_connection(socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, serve until signalled, return the exit status."""
    config = parse_args(argv)
    if config.loop == "asyncio":
        asyncio.run(serve(config))
        return 0
    try:
        import uvloop
    except ImportError:
        if config.loop == "uvloop":
            sys.exit("--loop uvloop: uvloop is not installed (pip install 'fastinject[uvloop]')")
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
