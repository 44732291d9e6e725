"""What ``pip install fastinject`` needs at run time: h2, not protobuf (nor the interop fixture)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc

import fastinject

SERVE_ONE_CALL = """
import asyncio, importlib.util, sys

import fastinject

async def main():
    server = fastinject.Server()
    answered = asyncio.Event()

    async def echo(request, context):
        answered.set()
        return request

    server.add_registered_method_handlers(
        "test.Echo", {"Unary": fastinject.unary_unary_rpc_method_handler(echo)}
    )
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await answered.wait()
    await server.stop(5)
    watched = ("google.protobuf", "fastinject.interop")
    loaded = sorted(m for m in sys.modules if m.startswith(watched))
    print("loaded:", ",".join(loaded))
    # Proves the check above could fail: protobuf is installed where this test runs.
    print("protobuf installed:", importlib.util.find_spec("google.protobuf") is not None)

asyncio.run(main())
"""


async def test_serving_a_servicer_never_imports_protobuf() -> None:
    """A server started, serving a grpcio client's call and stopped has not loaded protobuf."""
    env = dict(os.environ)
    package_root = str(Path(fastinject.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVE_ONE_CALL, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), 60))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary("/test.Echo/Unary")(b"ping", timeout=30) == b"ping"
        output, errors = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, errors.decode()
    assert output.decode().splitlines() == ["loaded: ", "protobuf installed: True"]
