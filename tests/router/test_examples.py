"""The router and injection examples run their ``--demo`` to completion and print real results."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import fastinject

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_TIMEOUT = 120  # seconds; bounds a hung demo, it normally takes a second or two


def run_demo(name: str) -> str:
    """Run ``examples/<name> --demo`` with this fastinject importable; return its stdout."""
    env = dict(os.environ)
    package_parent = str(Path(fastinject.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--demo"],
        capture_output=True, text=True, timeout=DEMO_TIMEOUT, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_one_port_demo() -> None:
    """one_port.py serves loopback cleartext and mTLS on one port and refuses TLS without a cert."""
    out = run_demo("one_port.py")
    assert re.search(r"^serving on port \d+$", out, re.M), out
    # The demo listens dual-stack, so the loopback client may be reported IPv4-mapped.
    assert re.search(
        r"^plaintext-from-loopback: OK: hello plaintext-from-loopback: "
        r"peer=ipv(4:|6:\[::ffff:)127\.0\.0\.1\]?:\d+ "
        r"security=\S+ client-identity=-$", out, re.M), out
    assert re.search(
        r"^mtls-with-client-cert: OK: hello mtls-with-client-cert: peer=ipv[46]:\S+ "
        r"security=ssl client-identity=demo-client$", out, re.M), out
    assert re.search(r"^tls-without-client-cert: refused \(UNAVAILABLE\)$", out, re.M), out
    assert re.search(
        r"^plaintext-from-non-loopback: (refused \(UNAVAILABLE\)|skipped .*)$", out, re.M), out


def test_reverse_tunnel_demo() -> None:
    """reverse_tunnel.py's call reaches a server that dialled out, over the connection it made."""
    out = run_demo("reverse_tunnel.py")
    ports = re.search(r"^rendezvous on port (\d+); grpcio calls via local port (\d+)$", out, re.M)
    assert ports is not None, out
    rendezvous = ports.group(1)
    # The server's peer is the rendezvous listener it dialled, not a client that dialled it.
    assert re.search(
        rf"^reply over the reverse tunnel: hello tunnel user, from a server that dialled out "
        rf"to ipv4:127\.0\.0\.1:{rendezvous}$", out, re.M), out
    assert re.search(r"^connections served by the injector: 1$", out, re.M), out
