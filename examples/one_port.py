"""One port, two security policies: plaintext for loopback clients, mutual TLS for everyone else.

This is the per-connection security of gRFC A29 on top of connection injection (gRFC L114): a
:class:`fastinject.router.ConnectionRouter` listens on the port, peeks at what each new
connection sends first, and hands it to one of two connection injectors of the same server:

* cleartext HTTP/2 from ``127.0.0.0/8`` or ``::1`` -> the plaintext injector;
* a TLS ClientHello from anywhere -> the mTLS injector (client certificate required);
* anything else (cleartext from another host, garbage) -> closed without a byte sent.

Run a server (throwaway certificates are written to a temporary directory unless you pass
``--cert/--key/--ca``; generating them needs the ``cryptography`` package)::

    python examples/one_port.py --address '[::]:50051'

or see it work (needs ``grpcio`` too): ``python examples/one_port.py --demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import fastinject
from fastinject.injector import ConnectionInjector
from fastinject.router import ConnectionRouter, Rule

SERVICE = "demo.OnePort"


# -- the service ---------------------------------------------------------------------------


async def whoami(request: bytes, context: Any) -> bytes:
    """Tell the caller how its call arrived: peer address, transport security, identity."""
    security = context.auth_context().get("transport_security_type", [b"none"])[0].decode()
    identities = context.peer_identities()
    identity = identities[0].decode() if identities else "-"
    return (
        f"hello {request.decode()}: peer={context.peer()} security={security} "
        f"client-identity={identity}"
    ).encode()


def make_server() -> fastinject.Server:
    """A server with the demo service and no listening port of its own."""
    server = fastinject.Server()
    server.add_registered_method_handlers(
        SERVICE, {"WhoAmI": fastinject.unary_unary_rpc_method_handler(whoami)}
    )
    return server


# -- the router ----------------------------------------------------------------------------


def routing_table(plaintext: ConnectionInjector, mtls: ConnectionInjector) -> list[Rule]:
    """Loopback cleartext -> plaintext; TLS from anywhere -> mTLS; nothing else matches."""
    return [
        Rule(plaintext, source="127.0.0.0/8", transport="plaintext"),
        Rule(plaintext, source="::1/128", transport="plaintext"),
        Rule(mtls, transport="tls"),
    ]


async def start(
    address: str, cert: bytes, key: bytes, ca: bytes
) -> tuple[fastinject.Server, ConnectionRouter, int]:
    """Start the server, its two injectors and the router on ``address``; return the port."""
    server = make_server()
    await server.start()
    plaintext = server.create_connection_injector(fastinject.ServerCredentials.insecure())
    mtls = server.create_connection_injector(
        fastinject.ServerCredentials.ssl(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
    )
    router = ConnectionRouter(routing_table(plaintext, mtls))
    port = await router.start(address)
    return server, router, port


# -- throwaway certificates -----------------------------------------------------------------


def make_certificates(directory: Path) -> dict[str, Path]:
    """Write a CA, a server certificate (localhost, 127.0.0.1, ::1) and a client one; PEM."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        sys.exit("generating certificates needs 'cryptography' (or pass --cert, --key and --ca)")

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "one_port demo CA")])

    def certificate(common_name: str, key: Any, issuer_key: Any, *extensions: Any) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    def key_pem(key: Any) -> bytes:
        return bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))

    ca = certificate("one_port demo CA", ca_key, ca_key,
                     (x509.BasicConstraints(ca=True, path_length=None), True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate("localhost", server_key, ca_key, (x509.SubjectAlternativeName([
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]), False))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = certificate("demo-client", client_key, ca_key)
    pem = serialization.Encoding.PEM
    return {
        "ca": write("ca.pem", ca.public_bytes(pem)),
        "cert": write("server.pem", server.public_bytes(pem)),
        "key": write("server.key", key_pem(server_key)),
        "client_cert": write("client.pem", client.public_bytes(pem)),
        "client_key": write("client.key", key_pem(client_key)),
    }


# -- the demo --------------------------------------------------------------------------------


def non_loopback_address() -> str | None:
    """This host's address on its default route, if it has one (nothing is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if ipaddress.ip_address(address).is_loopback else address


async def demo() -> None:
    """Serve on one port and make a call each way (plus two that must be refused)."""
    # grpcio logs each refused handshake at ERROR level; the demo prints the outcome instead.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        import grpc
    except ImportError:
        sys.exit("--demo needs grpcio")

    with tempfile.TemporaryDirectory() as directory:
        files = make_certificates(Path(directory))
        pems = {name: path.read_bytes() for name, path in files.items()}
    server, router, port = await start("[::]:0", pems["cert"], pems["key"], pems["ca"])

    async def call(label: str, channel: Any) -> None:
        async with channel:
            whoami = channel.unary_unary(f"/{SERVICE}/WhoAmI")
            try:
                reply = await whoami(label.encode(), timeout=10)
            except grpc.aio.AioRpcError as error:
                print(f"{label}: refused ({error.code().name})")
            else:
                print(f"{label}: OK: {reply.decode()}")

    def tls(with_client_cert: bool) -> Any:
        return grpc.ssl_channel_credentials(
            root_certificates=pems["ca"],
            private_key=pems["client_key"] if with_client_cert else None,
            certificate_chain=pems["client_cert"] if with_client_cert else None,
        )

    print(f"serving on port {port}")
    try:
        await call("plaintext-from-loopback", grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        await call("mtls-with-client-cert",
                   grpc.aio.secure_channel(f"localhost:{port}", tls(True)))
        await call("tls-without-client-cert",
                   grpc.aio.secure_channel(f"localhost:{port}", tls(False)))
        outside = non_loopback_address()
        if outside is None:
            print("plaintext-from-non-loopback: skipped (this host has no such address)")
        else:
            await call("plaintext-from-non-loopback",
                       grpc.aio.insecure_channel(f"{outside}:{port}"))
    finally:
        await router.close()
        await server.stop(1)


async def serve(address: str, cert: bytes, key: bytes, ca: bytes) -> None:
    """Serve until interrupted."""
    server, router, port = await start(address, cert, key, ca)
    print(f"serving {SERVICE} on port {port}: plaintext for loopback, mTLS for the rest")
    try:
        await server.wait_for_termination()
    finally:
        await router.close()
        await server.stop(5)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the server or the demo."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="serve and call it each way")
    parser.add_argument("--address", default="[::]:50051", help="host:port to listen on")
    parser.add_argument("--cert", type=Path, help="server certificate chain (PEM)")
    parser.add_argument("--key", type=Path, help="server private key (PEM)")
    parser.add_argument("--ca", type=Path, help="CA that signs client certificates (PEM)")
    args = parser.parse_args(argv)
    if args.demo:
        asyncio.run(demo())
        return
    paths = (args.cert, args.key, args.ca)
    if any(paths) and not all(paths):
        parser.error("--cert, --key and --ca go together")
    if not all(paths):
        directory = Path(tempfile.mkdtemp(prefix="one_port-"))
        files = make_certificates(directory)
        print(f"throwaway certificates in {directory} (client.pem/client.key for clients)")
        paths = (files["cert"], files["key"], files["ca"])
    cert, key, ca = (path.read_bytes() for path in paths)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.address, cert, key, ca))


if __name__ == "__main__":
    main()
