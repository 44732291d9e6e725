"""Installing grpc-js for the benchmark: ``npm ci`` of ``grpcjs/`` into a cache, once.

The grpc-js server (``grpcjs/server.js``) needs ``@grpc/grpc-js`` and ``@grpc/proto-loader``
at the versions pinned by the committed ``grpcjs/package-lock.json``.  The harness installs
them on first use with ``npm ci`` into ``$XDG_CACHE_HOME/fastinject-e2e`` (``~/.cache`` by
default), in a directory named after a hash of the manifest and lock file, so a changed pin
installs afresh and an unchanged one is reused without touching the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GRPCJS_DIR = Path(__file__).resolve().parent / "grpcjs"
"""The grpc-js server's script, ``package.json`` and ``package-lock.json``."""

MANIFESTS = ("package.json", "package-lock.json")
"""The files ``npm ci`` installs from; their hash names the cache directory."""

INSTALL_TIMEOUT_S = 600.0
"""Time limit of one ``npm ci``."""

INSTALLED_MARKER = ".fastinject-installed"
"""Written into ``node_modules`` once ``npm ci`` succeeded; a directory without it is redone."""


class NodeSetupError(Exception):
    """node or npm is missing, or ``npm ci`` failed."""


def cache_root() -> Path:
    """Return the directory the harness keeps its installed node modules in."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastinject-e2e"


def lock_key(source: Path = GRPCJS_DIR) -> str:
    """Return a short hash of the manifest and lock file under ``source``."""
    digest = hashlib.sha256()
    for name in MANIFESTS:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def install_grpcjs(cache: Path | None = None, source: Path = GRPCJS_DIR) -> Path:
    """Return the ``node_modules`` directory of grpc-js, running ``npm ci`` on first use.

    Raises NodeSetupError, with npm's output, if npm is missing or the install fails.
    """
    target = (cache or cache_root()) / f"grpcjs-{lock_key(source)}"
    modules = target / "node_modules"
    if (modules / INSTALLED_MARKER).is_file():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise NodeSetupError("npm not found (Debian: apt install npm)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Install beside the target and rename it into place, so an interrupted or concurrent
    # install never leaves a half-filled directory that looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        for name in MANIFESTS:
            shutil.copyfile(source / name, staging / name)
        command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            completed = subprocess.run(
                command,
                cwd=staging,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeSetupError(f"npm ci did not finish within {INSTALL_TIMEOUT_S:.0f} s") from exc
        if completed.returncode != 0:
            raise NodeSetupError(
                f"npm ci failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}"
            )
        (staging / "node_modules" / INSTALLED_MARKER).write_text("npm ci succeeded\n")
        if (modules / INSTALLED_MARKER).is_file():
            return modules  # another run finished first
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return modules
