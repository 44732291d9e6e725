"""Fixtures that run every framing test against both implementations in one pytest run."""

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


@pytest.fixture(scope="session", params=["python", "cython"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The framing implementation under test, once per implementation."""
    if request.param == "cython":
        module: ModuleType = request.getfixturevalue("cython_impl")
        return module
    return importlib.import_module(PYTHON_MODULE)
