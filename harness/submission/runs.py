"""Find harness run directories under build/logs and pick, per (system, benchmark, scenario),
the newest valid performance, accuracy and TEST06 runs. Reads files only; writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.submission.errors import StageError, SubmissionError
from harness.submission.logparse import DetailLog, read_run_info
from harness.submission.rounds import CLOSED_MODEL_OPTS, REFERENCE_MODEL

logger = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (system, benchmark dir, scenario)


@dataclass
class Run:
    """One run directory: build/logs/<timestamp>/<system>/<benchmark>/<scenario>/."""

    path: Path
    info: dict[str, Any]

    @property
    def benchmark_dir(self) -> str:
        suffix = "99.9" if self.info.get("config_ver") == "high_accuracy" else "99"
        return f"{self.info['benchmark']}-{suffix}"

    @property
    def key(self) -> Key:
        return (self.info["system"], self.benchmark_dir, self.info["scenario"])

    @property
    def is_test_run(self) -> bool:
        return bool(self.info.get("test_run"))

    @property
    def is_audit(self) -> bool:
        return bool(self.info.get("audit_test"))

    @property
    def started(self) -> datetime:
        try:
            when = datetime.fromisoformat(str(self.info.get("started_at", "")))
        except ValueError:
            when = datetime.fromtimestamp((self.path / "run_info.json").stat().st_mtime)
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)

    def has(self, *names: str) -> bool:
        return all((self.path / n).is_file() for n in names)


@dataclass
class Selection:
    """The runs chosen for one staged scenario directory."""

    key: Key
    division: str
    perf: Run
    accuracy: Run
    audit: Run | None = None
    perf_invalid_reasons: list[str] = field(default_factory=list)  # only for a test run

    @property
    def is_test_run(self) -> bool:
        return self.perf.is_test_run or self.accuracy.is_test_run


def discover(log_dir: Path) -> list[Run]:
    """Every directory under `log_dir` holding a run_info.json."""
    if not log_dir.is_dir():
        raise StageError(
            str(log_dir), "log directory not found", "run the harness first, or pass --log_dir"
        )
    runs = []
    for info_path in sorted(log_dir.rglob("run_info.json")):
        try:
            runs.append(Run(info_path.parent, read_run_info(info_path.parent)))
        except SubmissionError as exc:
            logger.warning("skipped %s", exc)
    if not runs:
        raise StageError(
            str(log_dir),
            "no run directories with run_info.json",
            "run the harness (make run_harness) before staging",
        )
    return runs


def division_for(info: dict[str, Any], requested: str) -> str:
    """closed for Dense/FP8 of the reference model, open otherwise; `requested` may force it."""
    eligible = (
        info.get("benchmark") == REFERENCE_MODEL and info.get("model_opt") in CLOSED_MODEL_OPTS
    )
    if requested == "auto":
        return "closed" if eligible else "open"
    if requested == "closed" and not eligible:
        raise StageError(
            "--division",
            f"closed is not allowed for {info.get('benchmark')} {info.get('model_opt')}",
            "use --division open (or auto)",
        )
    if requested not in ("closed", "open"):
        raise StageError("--division", f"unknown {requested!r}", "use auto, closed or open")
    return requested


def _newest_first(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: r.started, reverse=True)


def _pick_perf(runs: list[Run]) -> tuple[Run | None, list[str], list[str]]:
    """(chosen, invalid reasons if it is an invalid test run, notes on rejected runs)."""
    notes: list[str] = []
    candidates = []
    for run in _newest_first(runs):
        if not run.has("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
            notes.append(f"{run.path}: LoadGen logs missing (run interrupted?)")
            continue
        detail = DetailLog(run.path / "mlperf_log_detail.txt")
        if detail.errors:
            notes.append(f"{run.path}: LoadGen errors {detail.errors[:2]}")
            continue
        if detail.is_valid:
            return run, [], notes
        reasons = detail.invalid_reasons() or [str(detail.get("result_invalid_reason", "?"))]
        notes.append(f"{run.path}: INVALID ({', '.join(reasons)})")
        candidates.append((run, reasons))
    # A test run is too short to be VALID; stage the newest one and let validation say so.
    for run, reasons in candidates:
        if run.is_test_run:
            return run, reasons, [n for n in notes if not n.startswith(f"{run.path}:")]
    return None, [], notes


def _pick_accuracy(runs: list[Run]) -> tuple[Run | None, list[str]]:
    notes = []
    for run in _newest_first(runs):
        needed = (
            "mlperf_log_summary.txt",
            "mlperf_log_detail.txt",
            "mlperf_log_accuracy.json",
            "accuracy.txt",
        )
        missing = [n for n in needed if not (run.path / n).is_file()]
        if missing:
            notes.append(f"{run.path}: missing {missing}")
            continue
        errors = DetailLog(run.path / "mlperf_log_detail.txt").errors
        if errors:
            notes.append(f"{run.path}: LoadGen errors {errors[:2]}")
            continue
        return run, notes
    return None, notes


def select(runs: list[Run], division: str = "auto") -> list[Selection]:
    """One Selection per (system, benchmark, scenario); raises StageError listing every gap."""
    groups: dict[Key, list[Run]] = {}
    for run in runs:
        if run.info.get("dummy_weights"):
            logger.warning("skipped %s: dummy weights measure speed only, never a result", run.path)
            continue
        groups.setdefault(run.key, []).append(run)
    selections, problems = [], []
    for key, group in sorted(groups.items()):
        plain = [r for r in group if not r.is_audit]
        perf_runs = [r for r in plain if r.info["test_mode"] == "PerformanceOnly"]
        acc_runs = [r for r in plain if r.info["test_mode"] == "AccuracyOnly"]
        audit_runs = [
            r
            for r in group
            if r.info.get("audit_test") == "TEST06" and r.has("mlperf_log_accuracy.json")
        ]
        perf, reasons, perf_notes = _pick_perf(perf_runs)
        acc, acc_notes = _pick_accuracy(acc_runs)
        label = "/".join(key)
        if perf is None:
            problems.append(
                f"{label}: no VALID performance run ({'; '.join(perf_notes) or 'none'})"
                "; re-run with --test_mode=PerformanceOnly"
            )
        if acc is None:
            problems.append(
                f"{label}: no complete accuracy run ({'; '.join(acc_notes) or 'none'})"
                "; re-run with --test_mode=AccuracyOnly"
            )
        if perf is None or acc is None:
            continue
        audit = _newest_first(audit_runs)[0] if audit_runs else None
        for note in perf_notes + acc_notes:
            logger.info("not staged: %s", note)
        selections.append(
            Selection(key, division_for(perf.info, division), perf, acc, audit, reasons)
        )
    if problems:
        raise StageError("build/logs", " | ".join(problems), "run the missing modes, then stage")
    return selections
