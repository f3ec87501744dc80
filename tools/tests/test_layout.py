"""The repository layout matches pyproject.toml: seven part folders, every package listed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("firmware", "gateway", "protocols", "provisioning", "hil_tests", "sim_devices", "tools")
SKIP = {"node_modules", "__pycache__"}


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _package_folders() -> set[str]:
    found: set[str] = set()
    for part in PARTS:
        for init in (ROOT / part).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            if SKIP.intersection(rel.parts) or any(p.startswith(".") for p in rel.parts):
                continue
            found.add("lifeline." + ".".join(rel.parts))
    return found


def test_every_part_folder_exists_as_a_package() -> None:
    for part in PARTS:
        assert (ROOT / part / "__init__.py").is_file(), f"{part}/ is missing or has no __init__.py"


def test_every_part_maps_to_its_lifeline_name() -> None:
    package_dir = _pyproject()["tool"]["setuptools"]["package-dir"]  # type: ignore[index]
    assert package_dir == {f"lifeline.{part}": part for part in PARTS}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])  # type: ignore[index]
    missing = sorted(_package_folders() - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_listed_package_exists() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])  # type: ignore[index]
    stale = sorted(listed - _package_folders())
    assert not stale, f"pyproject.toml lists packages without an __init__.py folder: {stale}"


def test_tests_folders_are_not_packages() -> None:
    # pytest runs with --import-mode=importlib; a tests/__init__.py would make the tests installable
    offenders = sorted(str(p.relative_to(ROOT)) for part in PARTS for p in (ROOT / part).rglob("tests/__init__.py"))
    assert not offenders, offenders


def test_runtime_data_files_are_package_data() -> None:
    """Non-Python files inside the parts (scenarios, vectors, unit file, dashboards, the MicroPython runner)
    must be declared as package data, or a wheel/.deb install runs without them."""
    import fnmatch

    root = Path(__file__).resolve().parents[2]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    declared = cfg.get("package-data", {})
    missing = []
    for pkg, folder in dirs.items():
        base = root / folder
        for path in base.rglob("*"):
            rel = path.relative_to(base).as_posix()
            if (not path.is_file() or path.suffix in (".py", ".pyc", ".md") or "tests/" in rel + "/"
                    or "node_modules" in rel or "__pycache__" in rel):
                continue
            if not any(fnmatch.fnmatch(rel, pat) for pat in declared.get(pkg, [])):
                missing.append(f"{pkg}: {rel}")
    assert not missing, f"declare in [tool.setuptools.package-data]: {missing}"
