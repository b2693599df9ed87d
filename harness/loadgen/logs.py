"""Log directories (build/logs/<timestamp>/<system>/<benchmark>/<scenario>/) and log parsing."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any


def new_timestamp_dir(log_root: Path) -> Path:
    """A fresh build/logs/<timestamp>/ (never reused) and the build/logs/latest link to it."""
    stamp = datetime.now().strftime("%Y.%m.%d-%H.%M.%S")
    path = log_root / stamp
    n = 1
    while path.exists():
        n += 1
        path = log_root / f"{stamp}-{n}"
    path.mkdir(parents=True)
    latest = log_root / "latest"
    tmp = log_root / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    tmp.replace(latest)
    return path


def parse_detail(run_dir: Path) -> dict[str, Any]:
    """:::MLLOG lines of mlperf_log_detail.txt -> {key: value} (last value wins)."""
    values: dict[str, Any] = {}
    path = run_dir / "mlperf_log_detail.txt"
    if not path.is_file():
        return values
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(":::MLLOG"):
            try:
                entry = json.loads(line[len(":::MLLOG") :])
            except json.JSONDecodeError:
                continue
            values[entry.get("key")] = entry.get("value")
    return values


def count_errors(run_dir: Path) -> int:
    path = run_dir / "mlperf_log_detail.txt"
    if not path.is_file():
        return 0
    return sum(
        1 for line in path.read_text(errors="replace").splitlines() if '"key": "error' in line
    )
