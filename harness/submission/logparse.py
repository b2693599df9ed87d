"""Readers for LoadGen's mlperf_log_detail.txt / summary and the harness run_info.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harness.submission.errors import SubmissionError

logger = logging.getLogger(__name__)

_MLLOG = ":::MLLOG "


class DetailLog:
    """Key -> value of the `:::MLLOG {json}` lines (last one wins) plus the error entries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        self.errors: list[str] = []
        if not path.is_file():
            raise SubmissionError(str(path), "missing", "re-run the scenario with LoadGen")
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.startswith(_MLLOG):
                continue
            try:
                entry = json.loads(line[len(_MLLOG) :])
            except json.JSONDecodeError:
                logger.warning("%s:%d: unparsable MLLOG line skipped", path, line_no)
                continue
            key = entry.get("key", "")
            self.values[key] = entry.get("value")
            if entry.get("metadata", {}).get("is_error"):
                self.errors.append(f"{key}: {entry.get('value')}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.values

    @property
    def is_valid(self) -> bool:
        return self.values.get("result_validity") == "VALID"

    def invalid_reasons(self) -> list[str]:
        """Which of LoadGen's validity conditions failed, in the summary's words."""
        names = {
            "result_perf_constraints_met": "performance constraints",
            "result_min_duration_met": "min duration",
            "result_min_queries_met": "min queries",
            "early_stopping_met": "early stopping",
        }
        return [text for key, text in names.items() if self.values.get(key) is False]


RUN_INFO_KEYS = ("benchmark", "scenario", "system", "test_mode", "config_ver", "model_opt")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """run_info.json of one run directory, with the keys staging cannot do without checked."""
    path = run_dir / "run_info.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SubmissionError(str(path), "missing", "re-run with the harness") from exc
    except json.JSONDecodeError as exc:
        raise SubmissionError(str(path), f"not JSON ({exc})", "re-run with the harness") from exc
    missing = [k for k in RUN_INFO_KEYS if not info.get(k)]
    if missing:
        raise SubmissionError(str(path), f"keys {missing} missing or empty", "re-run the harness")
    return info
