"""The selector module: which implementation is active, and both behave identically."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastinject.frames as frames
import fastinject.framing as framing
import fastinject.stream as stream

PUBLIC_NAMES = {"DEFAULT_MAX_MESSAGE_LENGTH", "Deframer", "frame_message", "frame_messages"}


def test_compiled_module_is_active_unless_disabled(extensions_disabled: bool) -> None:
    """The selector uses the Cython module unless FASTINJECT_NO_EXTENSIONS is set.

    This is the test that fails when the extension should have been built and was not.
    """
    if extensions_disabled:
        assert framing.IMPLEMENTATION == "python"
        assert framing.Deframer.__module__ == "fastinject._framing_py"
    else:
        assert framing.IMPLEMENTATION == "cython"
        assert framing.Deframer.__module__ == "fastinject._framing"
    assert framing.frame_message.__module__ == framing.Deframer.__module__


@pytest.mark.parametrize(
    ("selector", "name", "compiled"),
    [(stream, "SendQueue", "fastinject._stream"), (frames, "FrameSplitter", "fastinject._frames")],
)
def test_compiled_cores_are_active_unless_disabled(
    extensions_disabled: bool, selector: ModuleType, name: str, compiled: str
) -> None:
    """The stream core's and the frame splitter's selectors follow the framing selector's rule."""
    implementation, module = (
        ("python", f"{compiled}_py") if extensions_disabled else ("cython", compiled)
    )
    assert implementation == selector.IMPLEMENTATION
    assert getattr(selector, name).__module__ == module


def test_server_protocol_is_built_on_the_selected_splitter() -> None:
    """ServerProtocol's frame walk is the selected FrameSplitter's."""
    from fastinject.protocol import ServerProtocol

    assert ServerProtocol.__mro__[1] is frames.FrameSplitter
    assert frames.data_run.__module__ == frames.FrameSplitter.__module__


def test_both_frame_splitters_export_the_same_api(frames_impl: ModuleType) -> None:
    """Both twins of the frame splitter export the same names and the same HEADERS cost."""
    import fastinject._frames_py as python_twin

    assert set(frames_impl.__all__) == set(python_twin.__all__) == {
        "HEADERS_FRAME_COST", "FrameSplitter", "data_run", "deframe_data_run"
    }
    assert frames_impl.HEADERS_FRAME_COST == python_twin.HEADERS_FRAME_COST == 8


def _implementation_in_subprocess(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("FASTINJECT_NO_EXTENSIONS", None)
    if env_value is not None:
        env["FASTINJECT_NO_EXTENSIONS"] = env_value
    # Import the very same fastinject the tests use, wherever it is installed.
    root = str(Path(framing.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", "import fastinject.framing as f; print(f.IMPLEMENTATION)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize("value", ["1", "yes"])
def test_environment_variable_forces_the_python_twin(value: str) -> None:
    """FASTINJECT_NO_EXTENSIONS set to a non-empty value other than "0" selects Python."""
    assert _implementation_in_subprocess(value) == "python"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_unset_empty_or_zero_keeps_the_default(value: str | None, cython_impl: ModuleType) -> None:
    """With the variable unset, empty or "0", the compiled module is selected."""
    assert _implementation_in_subprocess(value) == "cython"


def test_both_implementations_export_the_same_api(
    python_impl: ModuleType, cython_impl: ModuleType
) -> None:
    """Both modules export exactly the documented names, with the same default limit."""
    assert set(python_impl.__all__) == set(cython_impl.__all__) == PUBLIC_NAMES
    assert python_impl.DEFAULT_MAX_MESSAGE_LENGTH == cython_impl.DEFAULT_MAX_MESSAGE_LENGTH
    assert framing.DEFAULT_MAX_MESSAGE_LENGTH == python_impl.DEFAULT_MAX_MESSAGE_LENGTH


def _run(module: ModuleType, limit: int, chunks: list[bytes]) -> list[object]:
    """Per feed call, the messages returned or the error raised; then the close outcome."""
    deframer = module.Deframer(max_message_length=limit)
    outcomes: list[object] = []
    for chunk in [*chunks, None]:
        try:
            result = deframer.close() if chunk is None else deframer.feed(chunk)
        except Exception as exc:
            outcomes.append((type(exc), vars(exc)))
        else:
            outcomes.append(result)
        outcomes.append(deframer.buffered)
    return outcomes


# Streams that are mostly plausible headers with small lengths, so that the random bytes
# exercise messages, bad flags, oversize lengths and truncation alike.
_header = st.builds(
    lambda flags, length: bytes([flags]) + length.to_bytes(4, "big"),
    st.sampled_from([0, 1, 0, 1, 2, 255]),
    st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)),
)
_stream = st.lists(st.one_of(_header, st.binary(max_size=40)), max_size=12).map(b"".join)


@settings(deadline=None, max_examples=300)
@given(stream=_stream, limit=st.integers(0, 64), data=st.data())
def test_cython_and_python_agree_on_arbitrary_input(
    python_impl: ModuleType,
    cython_impl: ModuleType,
    stream: bytes,
    limit: int,
    data: st.DataObject,
) -> None:
    """On any byte stream and cut, both implementations return and raise the same things."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert _run(python_impl, limit, chunks) == _run(cython_impl, limit, chunks)
