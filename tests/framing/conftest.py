"""Fixtures that run every framing and stream-core test against both implementations."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

PYTHON_MODULE = "fastinject._framing_py"
CYTHON_MODULE = "fastinject._framing"


def _extensions_disabled() -> bool:
    # The documented rule (framing.py, setup.py): any value but "" or "0" disables them.
    return os.environ.get("FASTINJECT_NO_EXTENSIONS", "") not in ("", "0")


@pytest.fixture(scope="session")
def extensions_disabled() -> bool:
    """Whether FASTINJECT_NO_EXTENSIONS asks for the pure-Python implementation only."""
    return _extensions_disabled()


@pytest.fixture(scope="session")
def cython_impl(extensions_disabled: bool) -> ModuleType:
    """The compiled module; skipped only when FASTINJECT_NO_EXTENSIONS is set.

    Otherwise a missing or broken extension makes the test error instead of skipping.
    """
    if extensions_disabled:
        pytest.skip("FASTINJECT_NO_EXTENSIONS is set: the Cython module is not under test")
    return importlib.import_module(CYTHON_MODULE)


@pytest.fixture(scope="session")
def python_impl() -> ModuleType:
    """The pure-Python twin."""
    return importlib.import_module(PYTHON_MODULE)


def _implementation(request: pytest.FixtureRequest, python: str, cython: str) -> ModuleType:
    if request.param == "cython":
        if _extensions_disabled():
            pytest.skip("FASTINJECT_NO_EXTENSIONS is set: the Cython module is not under test")
        return importlib.import_module(cython)
    return importlib.import_module(python)


@pytest.fixture(scope="session", params=["python", "cython"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The framing implementation under test, once per implementation."""
    return _implementation(request, PYTHON_MODULE, CYTHON_MODULE)


@pytest.fixture(scope="session", params=["python", "cython"])
def stream_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The per-stream core (``_stream``) under test, once per implementation."""
    return _implementation(request, "fastinject._stream_py", "fastinject._stream")


@pytest.fixture(scope="session", params=["python", "cython"])
def frames_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The inbound frame splitter (``_frames``) under test, once per implementation."""
    return _implementation(request, "fastinject._frames_py", "fastinject._frames")
