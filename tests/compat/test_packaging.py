"""What ``pip install fastinject`` needs at run time: h2, not protobuf, not grpcio.

Each test runs a server in a subprocess (so that what it imports is its own) and calls it with
grpcio's client from here.
"""

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
if BLOCK_GRPCIO:
    sys.modules["grpc"] = None  # as if grpcio were not installed: importing it fails

import fastinject

grpc_imported_by_import = sys.modules.get("grpc") is not None

async def main():
    server = fastinject.Server()
    answered = asyncio.Event()

    async def join(requests, context):
        parts = []
        while (request := await context.read()) is not fastinject.EOF:
            parts.append(request)
        answered.set()
        return b"|".join(parts)

    server.add_registered_method_handlers(
        "test.Echo", {"Join": fastinject.stream_unary_rpc_method_handler(join)}
    )
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await answered.wait()
    await server.stop(5)
    watched = ("google.protobuf", "fastinject.interop")
    print("loaded:", ",".join(sorted(m for m in sys.modules if m.startswith(watched))))
    # Proves the check above could fail: protobuf is installed where this test runs.
    print("protobuf installed:", importlib.util.find_spec("google.protobuf") is not None)
    print("grpc imported by import fastinject:", grpc_imported_by_import)
    if not BLOCK_GRPCIO:
        import grpc.aio
        print("EOF is grpc.aio.EOF:", fastinject.EOF is grpc.aio.EOF)
    else:
        print("EOF:", fastinject.EOF)

asyncio.run(main())
"""


async def serve_one_call(block_grpcio: bool) -> list[str]:
    """Run :data:`SERVE_ONE_CALL` in a subprocess, make its one call; its report lines."""
    env = dict(os.environ)
    package_root = str(Path(fastinject.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    script = f"BLOCK_GRPCIO = {block_grpcio}\n{SERVE_ONE_CALL}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), 60))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            join = channel.stream_unary("/test.Echo/Join")
            assert await join(iter([b"a", b"b"]), timeout=30) == b"a|b"
        output, errors = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, errors.decode()
    return output.decode().splitlines()


async def test_serving_a_servicer_never_imports_protobuf() -> None:
    """A server started, serving a grpcio client's call and stopped has not loaded protobuf.

    ``import fastinject`` does not import grpcio either; with grpcio installed, the EOF that
    ``context.read()`` returns is ``grpc.aio.EOF`` and ``fastinject.EOF`` is that object.
    """
    assert await serve_one_call(block_grpcio=False) == [
        "loaded: ",
        "protobuf installed: True",
        "grpc imported by import fastinject: False",
        "EOF is grpc.aio.EOF: True",
    ]


async def test_serves_without_grpcio() -> None:
    """Without grpcio, servers work and ``context.read()`` ends with fastinject's own EOF."""
    assert await serve_one_call(block_grpcio=True) == [
        "loaded: ",
        "protobuf installed: True",
        "grpc imported by import fastinject: False",
        "EOF: <fastinject.EOF>",
    ]
