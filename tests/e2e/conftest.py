"""End-to-end fixtures: the built-in default (SmolLM2-135M + its dataset), built once."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def harness(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"harness {args} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def default_built() -> Path:
    """`make preprocess_data` + the torch engine of the built-in default (idempotent)."""
    harness("preprocess_data")
    harness("generate_engines", "--backend=torch")
    return REPO
