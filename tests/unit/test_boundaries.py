"""The package boundaries of DESIGN.md, checked on the import statements of every module."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "harness"


def imports_of(package: str) -> dict[str, set[str]]:
    """module path -> every module name it imports (top-level or lazily inside functions)."""
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT.parent))] = names
    return found


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


OTHER_THAN_CONFIG = tuple(f"harness.{p.name}" for p in ROOT.iterdir() if p.name != "config")


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("config", OTHER_THAN_CONFIG),  # config imports nothing else from the package
        (
            "engine",
            (
                "harness.loadgen",
                "harness.backends",
                "harness.accuracy",
                "harness.submission",
                "mlperf_loadgen",
            ),
        ),  # fmt: skip
        ("accuracy", ("harness.engine", "harness.backends", "torch")),
        ("submission", ("torch", "harness.engine", "harness.backends")),
        ("backends", ("harness.loadgen", "mlperf_loadgen")),
    ],
)
def test_package_boundaries(package, forbidden):
    bad = [
        f"{module} imports {name}"
        for module, names in imports_of(package).items()
        for name in names
        if any(is_under(name, f) for f in forbidden)
    ]
    assert not bad, bad


def test_the_check_sees_lazy_imports():
    assert "harness.engine.builder" in imports_of("backends")["harness/backends/torch_backend.py"]


def test_only_loadgen_imports_mlperf_loadgen():
    users = [
        module
        for package in ("accuracy", "backends", "config", "engine", "serve", "submission")
        for module, names in imports_of(package).items()
        if "mlperf_loadgen" in names
    ]
    assert users == []


@pytest.mark.parametrize("module", ["request", "kv_cache", "scheduler", "outputs", "stats"])
def test_engine_bookkeeping_is_plain_python(module):
    names = imports_of("engine")[f"harness/engine/{module}.py"]
    assert not [n for n in names if is_under(n, "torch") or is_under(n, "numpy")], names
