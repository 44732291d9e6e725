"""Generating the grpclib stubs of the interop service at harness start (never committed).

grpclib ships the ``protoc-gen-grpclib_python`` plugin; ``grpc_tools.protoc`` runs it on
``fastinject/interop/test.proto``.  The generated module imports the message classes from
``fastinject.interop.*_pb2``, so grpclib serves exactly the messages the other servers do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROTO = "fastinject/interop/test.proto"
"""The interop service definition, relative to the directory holding the fastinject package."""


class StubGenerationError(Exception):
    """protoc or the grpclib plugin failed, or produced no module."""


def generate_grpclib(proto_root: Path, out_dir: Path) -> Path:
    """Generate the grpclib module of :data:`PROTO` under ``out_dir`` and return its path.

    ``proto_root`` is the directory the proto imports are relative to (``src``).
    """
    plugin = shutil.which("protoc-gen-grpclib_python", path=str(Path(sys.executable).parent))
    if plugin is None:
        plugin = shutil.which("protoc-gen-grpclib_python")
    if plugin is None:
        raise StubGenerationError("protoc-gen-grpclib_python not found (is grpclib installed?)")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--plugin=protoc-gen-grpclib_python={plugin}",
        f"--grpclib_python_out={out_dir}",
        str(proto_root / PROTO),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if completed.returncode != 0:
        raise StubGenerationError(f"protoc failed: {completed.stderr.strip()}")
    module = out_dir / PROTO.replace(".proto", "_grpc.py")
    if not module.is_file():
        raise StubGenerationError(f"protoc succeeded but wrote no {module}")
    return module
