"""Build script: everything is in pyproject.toml except the optional Cython extension.

The extensions ``fastinject._framing`` (message framing), ``fastinject._stream`` (the
per-stream core) and ``fastinject._frames`` (the inbound frame splitter) are compiled from
``src/fastinject/<name>.pyx``.  Rules:

* ``FASTINJECT_NO_EXTENSIONS`` set to anything but ``""``/``"0"`` at build time: no extension,
  the pure-Python twins (``fastinject._framing_py``, ``_stream_py``, ``_frames_py``) are used.
* No C compiler, or the C compiler fails: the install still succeeds as pure Python and a
  warning says why (the msgpack/aiohttp convention).  Under cibuildwheel (``CIBUILDWHEEL=1``)
  a failed compile is an error, so no pure-Python wheel is ever published by mistake.
* Errors in the ``.pyx`` itself (Cython compile errors) always fail the build: they are bugs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_EXTENSIONS = _flag("FASTINJECT_NO_EXTENSIONS")
REQUIRE_EXTENSIONS = _flag("CIBUILDWHEEL")
C_BUILD_ERRORS = (CCompilerError, ExecError, PlatformError, OSError, ValueError)


def _warn(reason: object) -> None:
    bar = "*" * 75
    print(
        f"\n{bar}\nWARNING: the C extensions of fastinject could not be built "
        f"({reason}).\nfastinject is installed as pure Python and works, but its message "
        f"framing and streams are several times slower.\n{bar}\n",
        file=sys.stderr,
    )


class OptionalBuildExt(build_ext):
    """build_ext that cythonizes lazily and degrades to pure Python if C compilation fails."""

    def run(self) -> None:
        try:
            from Cython.Build import cythonize
        except ImportError as exc:  # only without build isolation: Cython is a build requirement
            if REQUIRE_EXTENSIONS:
                raise
            _warn(exc)
            return
        for ext in self.extensions:
            # Keep setuptools' Extension objects (finalize_options annotated them); take only
            # the generated C sources from cythonize.
            (cythonized,) = cythonize([ext], compiler_directives=CYTHON_DIRECTIVES, quiet=True)
            ext.sources = cythonized.sources
        try:
            super().run()
        except C_BUILD_ERRORS as exc:
            if REQUIRE_EXTENSIONS:
                raise
            _warn(exc)

    def build_extension(self, ext: Any) -> None:
        if self.compiler.compiler_type == "msvc":
            ext.extra_compile_args = ["/O2"]
        else:
            ext.extra_compile_args = ["-O3"]
        try:
            super().build_extension(ext)
        except C_BUILD_ERRORS as exc:
            if REQUIRE_EXTENSIONS:
                raise
            _warn(exc)


EXTENSIONS = ("_framing", "_stream", "_frames")

ext_modules = (
    []
    if NO_EXTENSIONS
    else [Extension(f"fastinject.{name}", [f"src/fastinject/{name}.pyx"]) for name in EXTENSIONS]
)

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
