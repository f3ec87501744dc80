"""tools.mpy_runtime and tools/micropython/run.mjs against the real MicroPython WebAssembly build."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from lifeline.protocols import DEVICE_MODULES
from lifeline.tools import mpy_runtime
from lifeline.tools.mpy_runtime import MicroPythonError, MicroPythonUnavailable, RunResult, run

pytestmark = pytest.mark.micropython


def test_runs_code_and_returns_its_output() -> None:
    result = run("import sys\nprint('hello', 6 * 7)\nprint(sys.implementation.name)\nsys.stdout.write('tail')")
    assert result == RunResult(stdout="hello 42\nmicropython\ntail", stderr="")


def test_it_is_micropython_1_27() -> None:
    out = run("import sys\nprint(sys.implementation.version[:2])").stdout
    assert out == "(1, 27)\n"


def test_files_land_in_the_filesystem_and_lib_is_importable() -> None:
    files = {"/lib/pkg/__init__.py": b"", "/lib/pkg/mod.py": b"X = 42\n", "/data/blob.bin": bytes(range(256))}
    script = "from pkg import mod\nprint(mod.X)\nprint(open('/data/blob.bin', 'rb').read() == bytes(range(256)))"
    assert run(script, files).stdout == "42\nTrue\n"


def test_uncaught_exception_raises_with_the_traceback() -> None:
    with pytest.raises(MicroPythonError) as info:
        run("print('before')\ndef f():\n    raise ValueError('boom')\nf()\n")
    err = info.value
    assert err.exit_code == 1
    assert err.stdout == "before\n"
    assert 'File "<script>", line 4, in <module>' in err.traceback
    assert 'File "<script>", line 3, in f' in err.traceback
    assert err.traceback.rstrip().endswith("ValueError: boom")
    assert "<stdin>" not in err.traceback  # the runner's own frame is not shown
    assert "ValueError: boom" in str(err)


def test_traceback_names_the_device_module() -> None:
    files = {"/lib/broken.py": b"def go():\n    return 1 // 0\n"}
    with pytest.raises(MicroPythonError) as info:
        run("import broken\nbroken.go()", files)
    assert 'File "/lib/broken.py", line 2, in go' in info.value.traceback
    assert "ZeroDivisionError" in info.value.traceback


def test_syntax_error_is_reported() -> None:
    with pytest.raises(MicroPythonError) as info:
        run("def f(:\n    pass\n")
    assert "SyntaxError" in info.value.traceback
    assert info.value.exit_code == 1


@pytest.mark.parametrize(
    ("script", "status", "stderr"),
    [
        ("import sys\nsys.exit(3)", 3, ""),
        ("raise SystemExit(5)", 5, ""),
        ("raise SystemExit('no config')", 1, "no config\n"),
    ],
)
def test_system_exit_status_is_honoured(script: str, status: int, stderr: str) -> None:
    with pytest.raises(MicroPythonError) as info:
        run(script)
    assert info.value.exit_code == status
    assert info.value.traceback == stderr


@pytest.mark.parametrize("script", ["import sys\nsys.exit(0)", "raise SystemExit", "import sys\nsys.exit()"])
def test_system_exit_zero_is_success(script: str) -> None:
    run(script)


def test_steps_share_globals() -> None:
    assert run(["a = 20", "b = a + 1", "print(a + b)"]).stdout == "41\n"


def test_a_failing_step_stops_the_run() -> None:
    with pytest.raises(MicroPythonError) as info:
        run(["print('one')", "raise KeyError('two')", "print('three')"])
    assert info.value.stdout == "one\n"
    assert 'File "<step 2>", line 1' in info.value.traceback


def test_mem_alloc_counts_an_allocation_exactly() -> None:
    # On a 32-bit port a bytearray is a 16-byte object plus its data, both in 16-byte GC blocks.
    script = (
        "import gc\n"
        "def grab(n):\n"
        "    before = gc.mem_alloc()\n"
        "    data = bytearray(n)\n"
        "    return gc.mem_alloc() - before\n"
        "print(grab(10000), grab(100), grab(1))\n"
    )
    assert run(script).stdout == "10016 128 32\n"


def test_garbage_is_collected_between_steps_not_within_one() -> None:
    steps = [
        "import gc\nkeep = bytearray(50000)\ngc.collect()",
        "m0 = gc.mem_alloc()\ndel keep\ngc.collect()\nm1 = gc.mem_alloc()",  # collection only pending here
        "m2 = gc.mem_alloc()\nprint(m1 - m0, m1 - m2 >= 50000)",
    ]
    out = run(steps).stdout.split()
    assert int(out[0]) >= 0  # nothing freed inside the step
    assert out[1] == "True"  # freed once control returned to the runner


def test_heapsize_sets_the_initial_heap() -> None:
    script = "import micropython\nmicropython.mem_info()"
    small = run(script, heapsize=64 * 1024).stdout
    large = run(script, heapsize=512 * 1024).stdout
    total = [int(text.split("GC: total: ")[1].split(",")[0]) for text in (small, large)]
    assert 56 * 1024 < total[0] <= 64 * 1024
    assert 480 * 1024 < total[1] <= 512 * 1024


def test_a_runaway_script_is_stopped_by_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(MicroPythonError) as info:
        run("print('started')\nwhile True:\n    pass\n", timeout=1.5)
    elapsed = time.monotonic() - started
    assert "timed out after 1.5 s" in str(info.value)
    assert info.value.stdout == "started\n"  # output streamed before the stop is kept
    assert elapsed < 10


def test_runner_rejects_a_malformed_job() -> None:
    proc = subprocess.run(
        ["node", str(mpy_runtime.RUNNER)], input=b'{"files": {}}', capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    assert b'"script"' in proc.stderr


def test_missing_runtime_names_the_setup_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mpy_runtime, "_RUNTIME_ENTRY", tmp_path / "absent" / "micropython.mjs")
    with pytest.raises(MicroPythonUnavailable, match=r"tools/bootstrap\.sh setup"):
        run("print(1)")


def test_missing_node_names_the_setup_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LIFELINE_NODE", raising=False)
    with pytest.raises(MicroPythonUnavailable, match=r"tools/bootstrap\.sh setup"):
        run("print(1)")


# --- device layout ----------------------------------------------------------------------------------------


def test_protocols_layout() -> None:
    files = mpy_runtime.device_files()
    assert files["/lib/lifeline/__init__.py"] == b""
    expected = {"/lib/lifeline/__init__.py", "/lib/lifeline/protocols/__init__.py"} | {
        f"/lib/lifeline/protocols/{name}.py" for name in DEVICE_MODULES
    }
    assert set(files) == expected
    root = Path(mpy_runtime.__file__).resolve().parent.parent
    assert files["/lib/lifeline/protocols/schema.py"] == (root / "protocols" / "schema.py").read_bytes()


def test_every_protocols_device_module_imports_under_micropython() -> None:
    script = "".join(f"import lifeline.protocols.{name}\n" for name in DEVICE_MODULES) + "print('ok')"
    assert run(script, mpy_runtime.device_files()).stdout == "ok\n"


def test_firmware_layout_has_no_tests() -> None:
    # importing firmware modules is the firmware's own tests' job (hardware modules are absent here);
    # every firmware file is compiled by test_mpy_compile
    files = mpy_runtime.device_files(("protocols", "firmware"))
    assert files["/lib/lifeline/firmware/__init__.py"] == (mpy_runtime._REPO / "firmware" / "__init__.py").read_bytes()
    assert not any("/tests/" in path or path.endswith("conftest.py") for path in files)


def _tree(base: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text)


def test_firmware_without_manifest_leaves_out_host_only_files(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "__init__.py": "",
            "main.py": "",
            "hal/__init__.py": "",
            "hal/adc.py": "",
            "tests/test_x.py": "",
            "conftest.py": "",
            "bundle.py": "# Build the bundle.\n# lifeline: host-only\n",
        },
    )
    assert mpy_runtime._firmware_files(tmp_path) == ["__init__.py", "hal/__init__.py", "hal/adc.py", "main.py"]


@pytest.mark.parametrize(
    "manifest",
    [
        "FILES = ('main.py', 'hal.adc', 'radios')\n",
        "MODULES: tuple[str, ...] = ['main', 'hal/adc.py', 'radios']\n",
        "module('main.py')\nmodule('hal/adc.py')\npackage('radios')\n",
    ],
)
def test_firmware_manifest_is_honoured(tmp_path: Path, manifest: str) -> None:
    _tree(
        tmp_path,
        {
            "__init__.py": "",
            "main.py": "",
            "extra.py": "",
            "hal/__init__.py": "",
            "hal/adc.py": "",
            "radios/__init__.py": "",
            "radios/lora.py": "",
            "manifest.py": manifest,
        },
    )
    assert mpy_runtime._firmware_files(tmp_path) == [
        "__init__.py",
        "main.py",
        "hal/__init__.py",
        "hal/adc.py",
        "radios/__init__.py",
        "radios/lora.py",
    ]


def test_firmware_manifest_naming_a_missing_file_fails(tmp_path: Path) -> None:
    _tree(tmp_path, {"__init__.py": "", "manifest.py": "FILES = ('gone.py',)\n"})
    with pytest.raises(FileNotFoundError, match=r"gone\.py"):
        mpy_runtime._firmware_files(tmp_path)


def test_unknown_part_has_no_device_layout() -> None:
    with pytest.raises(ValueError, match="gateway"):
        mpy_runtime.device_files(("gateway",))


# --- memory -----------------------------------------------------------------------------------------------


def test_measure_memory_of_an_allocating_cycle() -> None:
    figures = mpy_runtime.measure_memory("kept = []", "kept.append(bytearray(1000))\nscratch = bytearray(500)")
    # object header (16) + data rounded up to 16-byte blocks, for each bytearray; the empty list already
    # has room for its first items, so the append itself allocates nothing
    assert figures["cycle_alloc"] == (16 + 1008) + (16 + 512)
    assert figures["cycle_in_use"] - figures["setup_in_use"] == 16 + 1008  # only what `kept` holds stays
    assert figures["setup_in_use"] >= figures["baseline_in_use"]
    json.dumps(figures)


def test_measure_memory_of_a_cycle_that_allocates_nothing() -> None:
    figures = mpy_runtime.measure_memory("x = bytearray(4000)", "x[0] = 1\nn = len(x)")
    assert figures["cycle_alloc"] == 0
    assert figures["cycle_in_use"] == figures["setup_in_use"]
    assert figures["setup_in_use"] - figures["baseline_in_use"] >= 4000


def test_measure_memory_reports_a_failing_setup() -> None:
    with pytest.raises(MicroPythonError, match="NameError"):
        mpy_runtime.measure_memory("undefined_name", "pass")
