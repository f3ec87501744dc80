"""Run device-side code under real MicroPython 1.27 (the WebAssembly port, driven by Node).

`run()` hands a script and a set of files to tools/micropython/run.mjs and returns what it printed;
`device_files()` builds the on-device file layout (/lib/lifeline/<part>/...) from the repository;
`measure_memory()` reports what one cycle of device code allocates.

One property of this port shapes every memory figure: it never collects garbage while Python code runs
(the WebAssembly stack cannot be scanned for roots), so `gc.collect()` inside a script only marks a
collection as pending and the heap grows instead of collecting. The collection happens when control
returns to JavaScript, which is between two steps of a multi-step run. `heapsize` is the initial heap,
not a limit: a device-RAM budget has to be checked on the figures `measure_memory()` returns.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TOOLS = Path(__file__).resolve().parent
_REPO = _TOOLS.parent
RUNNER = _TOOLS / "micropython" / "run.mjs"
_RUNTIME_ENTRY = (
    _TOOLS / "micropython" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
)

DEVICE_ROOT = "/lib/lifeline"
DEFAULT_HEAPSIZE = 262144
# run.mjs exit statuses that are the runner's own, not the script's.
_EXIT_BAD_JOB = 2
_EXIT_RUNTIME = 3
_EXIT_TIMEOUT = 124
# Node startup and loading the WebAssembly module, on top of the script's own time limit.
_STARTUP_GRACE_S = 15.0
# Files under firmware/ that never go onto a node when no manifest says otherwise.
_HOST_ONLY_NAMES = frozenset({"conftest.py", "manifest.py"})
HOST_ONLY_MARKER = "# lifeline: host-only"
_MANIFEST_LISTS = ("FILES", "DEVICE_FILES", "MODULES", "DEVICE_MODULES")


class MicroPythonError(RuntimeError):
    """The script failed under MicroPython (uncaught exception, non-zero SystemExit, time-out) or the
    runtime could not run it. `traceback` holds MicroPython's stderr (the traceback text)."""

    def __init__(self, message: str, *, stdout: str = "", stderr: str = "", exit_code: int | None = None) -> None:
        detail = stderr.strip()
        super().__init__(f"{message}\n{detail}" if detail else message)
        self.stdout = stdout
        self.traceback = stderr
        self.exit_code = exit_code


class MicroPythonUnavailable(MicroPythonError):
    """Node or the MicroPython WebAssembly package is missing on this machine."""


@dataclass(frozen=True, slots=True)
class RunResult:
    stdout: str
    stderr: str


def _node() -> str:
    override = os.environ.get("LIFELINE_NODE")
    node = override or shutil.which("node") or shutil.which("nodejs")
    if not node:
        raise MicroPythonUnavailable("Node.js is not installed (needed for MicroPython); run tools/bootstrap.sh setup")
    return node


def _check_runtime() -> None:
    if not RUNNER.is_file():
        raise MicroPythonUnavailable(f"the MicroPython runner {RUNNER} is missing")
    if not _RUNTIME_ENTRY.is_file():
        raise MicroPythonUnavailable(
            f"MicroPython WebAssembly is not installed ({_RUNTIME_ENTRY.parent} is missing); "
            "run tools/bootstrap.sh setup"
        )


def run(
    script: str | Sequence[str],
    files: Mapping[str, bytes] | None = None,
    heapsize: int = DEFAULT_HEAPSIZE,
    timeout: float = 60,
    *,
    pystack: int | None = None,
) -> RunResult:
    """Run `script` under MicroPython with `files` (absolute device paths -> content) in its filesystem.

    `script` may be a list of steps: they share __main__'s globals and garbage is collected between them.
    /lib is on sys.path, so `device_files()` output is importable as `lifeline.<part>.<module>`.
    Raises MicroPythonError on an uncaught exception, a non-zero SystemExit or after `timeout` seconds.
    """
    _check_runtime()
    steps = [script] if isinstance(script, str) else list(script)
    job: dict[str, object] = {
        "steps": steps,
        "files": {path: base64.b64encode(data).decode("ascii") for path, data in (files or {}).items()},
        "heapsize": heapsize,
        "timeout": timeout,
    }
    if pystack is not None:
        job["pystack"] = pystack
    try:
        proc = subprocess.run(
            [_node(), str(RUNNER)],
            input=json.dumps(job).encode(),
            capture_output=True,
            timeout=timeout + _STARTUP_GRACE_S,
            cwd=RUNNER.parent,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run.mjs stops itself first; this is the backstop
        raise MicroPythonError(
            f"MicroPython timed out after {timeout} s (runner killed)",
            stdout=_text(exc.stdout),
            stderr=_text(exc.stderr),
        ) from None
    stdout, stderr = _text(proc.stdout), _text(proc.stderr)
    if proc.returncode == 0:
        return RunResult(stdout=stdout, stderr=stderr)
    if proc.returncode == _EXIT_TIMEOUT and "run.mjs: timed out" in stderr:
        message = f"MicroPython timed out after {timeout} s"
    elif proc.returncode in (_EXIT_BAD_JOB, _EXIT_RUNTIME) and "run.mjs:" in stderr:
        message = f"the MicroPython runner failed (status {proc.returncode})"
    else:
        message = f"MicroPython script failed (exit status {proc.returncode})"
    raise MicroPythonError(message, stdout=stdout, stderr=stderr, exit_code=proc.returncode)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


# --- the on-device layout -------------------------------------------------------------------------------


def device_files(parts: Iterable[str] = ("protocols",)) -> dict[str, bytes]:
    """The files a node carries for `parts`: /lib/lifeline/__init__.py and /lib/lifeline/<part>/...

    protocols: its __init__.py and the modules named by lifeline.protocols.DEVICE_MODULES.
    firmware: the files firmware/manifest.py lists, or without a manifest every .py except tests/,
    conftest.py, manifest.py and files whose first lines carry `# lifeline: host-only`.
    """
    out: dict[str, bytes] = {f"{DEVICE_ROOT}/__init__.py": b""}
    for part in parts:
        base = _REPO / part
        if not (base / "__init__.py").is_file():
            raise FileNotFoundError(f"{base} is not a Lifeline part (no __init__.py)")
        if part == "protocols":
            relpaths = _protocols_files(base)
        elif part == "firmware":
            relpaths = _firmware_files(base)
        else:
            raise ValueError(f"no device-side layout is defined for part {part!r}")
        for rel in relpaths:
            out[f"{DEVICE_ROOT}/{part}/{rel}"] = (base / rel).read_bytes()
    return out


def _protocols_files(base: Path) -> list[str]:
    from lifeline.protocols import DEVICE_MODULES

    return _resolve(base, ["__init__.py", *DEVICE_MODULES], origin="lifeline.protocols.DEVICE_MODULES")


def _firmware_files(base: Path) -> list[str]:
    manifest = base / "manifest.py"
    if manifest.is_file():
        return _resolve(base, ["__init__.py", *_manifest_entries(manifest)], origin=str(manifest))
    found = [path.relative_to(base).as_posix() for path in sorted(base.rglob("*.py")) if not _host_only(path, base)]
    return found


def _host_only(path: Path, base: Path) -> bool:
    rel = path.relative_to(base)
    if any(part in ("tests", "__pycache__") for part in rel.parts[:-1]) or rel.name in _HOST_ONLY_NAMES:
        return True
    with path.open(encoding="utf-8") as handle:
        head = [handle.readline() for _ in range(5)]
    return any(line.strip().lower() == HOST_ONLY_MARKER for line in head)


def _manifest_entries(manifest: Path) -> list[str]:
    """Entries of firmware/manifest.py, read without executing it: a top-level list/tuple of strings
    named FILES, DEVICE_FILES, MODULES or DEVICE_MODULES, or micropython-lib style calls
    `module("x.py")` / `package("dir")` with a literal first argument."""
    tree = ast.parse(manifest.read_text(encoding="utf-8"), filename=str(manifest))
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if names & set(_MANIFEST_LISTS) and node.value is not None:
                value = ast.literal_eval(node.value)
                if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                    return list(value)
    calls = [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("module", "package")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]
    if calls:
        return calls
    raise ValueError(
        f"{manifest}: found no file list (expected e.g. FILES = ('main.py', ...) or module('main.py') calls)"
    )


def _resolve(base: Path, entries: Iterable[str], *, origin: str) -> list[str]:
    """Relative paths for entries that are file paths, dotted module names or package directories."""
    out: list[str] = []
    for entry in entries:
        candidates = [entry] if entry.endswith(".py") else [entry.replace(".", "/") + ".py", entry.replace(".", "/")]
        for candidate in candidates:
            path = base / candidate
            if path.is_file():
                rels = [candidate]
                break
            if path.is_dir() and (path / "__init__.py").is_file():
                rels = [p.relative_to(base).as_posix() for p in sorted(path.rglob("*.py")) if not _host_only(p, base)]
                break
        else:
            raise FileNotFoundError(f"{origin} names {entry!r}, but {base / candidates[0]} does not exist")
        # a module inside a sub-package needs the package's __init__.py on the device as well
        for rel in rels:
            parents = Path(rel).parents
            for parent in reversed(list(parents)[:-1]):
                init = (parent / "__init__.py").as_posix()
                if (base / init).is_file() and init not in out:
                    out.append(init)
            if rel not in out:
                out.append(rel)
    return out


# --- memory ---------------------------------------------------------------------------------------------

_MEASURE_PREPARE = """\
import gc, json
_lifeline_mem = [0, 0, 0, 0]
gc.collect()
"""
_MEASURE_BASELINE = "_lifeline_mem[0] = gc.mem_alloc()\n"
_MEASURE_DEFINE = """\
import gc
def _lifeline_measure():
    gc.disable()
    before = gc.mem_alloc()
    _lifeline_cycle()
    after = gc.mem_alloc()
    gc.enable()
    return after - before
def _lifeline_run():
    _lifeline_mem[1] = gc.mem_alloc()
    _lifeline_mem[2] = _lifeline_measure()
    gc.collect()
def _lifeline_end():
    _lifeline_mem[3] = gc.mem_alloc()
    print("@lifeline-memory " + json.dumps(_lifeline_mem))
gc.collect()
"""


def measure_memory(
    script_setup: str,
    script_cycle: str,
    files: Mapping[str, bytes] | None = None,
    *,
    heapsize: int = DEFAULT_HEAPSIZE,
    timeout: float = 60,
) -> dict[str, int]:
    """Run `script_setup` at module level, then `script_cycle` once with the GC disabled; figures in bytes.

    The cycle runs as the body of a function (its assignments are locals; setup's names are globals).
    Garbage is collected (for real, see the module docstring) before the cycle and after it.
      cycle_alloc      allocated by the cycle (gc.mem_alloc() delta; nothing is freed in between)
      setup_in_use     in use after setup and a collection
      cycle_in_use     in use after the cycle and a collection (cycle_in_use - setup_in_use = retained)
      baseline_in_use  in use before setup: interpreter plus runner, for reference
    """
    body = textwrap.indent(script_cycle, "    ")
    cycle = f"def _lifeline_cycle():\n{body}\n    pass\n"
    steps = [
        _MEASURE_PREPARE,
        _MEASURE_BASELINE,
        script_setup,
        cycle + _MEASURE_DEFINE,
        # two steps of the same size, so the code of each adds the same to the figure it reads
        "_lifeline_run()\n",
        "_lifeline_end()\n",
    ]
    result = run(steps, files, heapsize=heapsize, timeout=timeout)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("@lifeline-memory "):
            baseline, setup, cycle_alloc, after = json.loads(line.split(" ", 1)[1])
            return {
                "cycle_alloc": int(cycle_alloc),
                "setup_in_use": int(setup),
                "cycle_in_use": int(after),
                "baseline_in_use": int(baseline),
            }
    raise MicroPythonError("memory measurement printed no result", stdout=result.stdout, stderr=result.stderr)
