"""Start the grpc-js server of the benchmark: ``python -m benchmarks.e2e.grpcjs_server``.

Run as ``python -m benchmarks.e2e.grpcjs_server --port 0 --node-modules DIR [--cert F --key F]``
where DIR is the ``node_modules`` the harness installed (:func:`benchmarks.e2e.nodejs.
install_grpcjs`).  It replaces itself (``exec``) with ``node grpcjs/server.js``, so the server
keeps this process's id and CPU pinning and keeps the contract of :mod:`benchmarks.e2e._serving`.
The protos are read from the installed ``fastinject`` package, the same ones every other server
serves.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from benchmarks.e2e import _serving
from benchmarks.e2e.nodejs import GRPCJS_DIR

NODE = "node"
"""The Node.js executable, looked up on PATH."""


def proto_root() -> Path:
    """Return the directory the interop protos' imports are relative to (holds ``fastinject``)."""
    spec = importlib.util.find_spec("fastinject.interop")
    if spec is None or spec.origin is None:
        raise SystemExit("fastinject.interop is not importable: cannot find the interop protos")
    return Path(spec.origin).resolve().parents[2]


def main() -> None:
    """Parse the command line and exec node."""
    parser = _serving.base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--node-modules", type=Path, required=True, help="installed node_modules")
    args = parser.parse_args()
    tls = _serving.tls_files(parser, args)
    node = shutil.which(NODE)
    if node is None:
        parser.error("node not found on PATH (Debian: apt install nodejs)")
    argv = [node, str(GRPCJS_DIR / "server.js"), "--port", str(args.port)]
    argv += ["--proto-root", str(proto_root())]
    if tls is not None:
        argv += ["--cert", tls[0], "--key", tls[1]]
    env = {**os.environ, "NODE_PATH": str(args.node_modules)}
    os.execve(node, argv, env)


if __name__ == "__main__":
    main()
