"""TEST06 (LLM output consistency) for the harness: the audit.config and our own verification.

Checks, per logged sample: first token equals `token_data` (not in Offline), at most one trailing
EOS, and `len(data) == token_count`. Writes TEST06/verify_accuracy.txt in the official wording.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.submission.errors import AuditError
from harness.submission.rounds import TEST06_RNG_SEED

logger = logging.getLogger(__name__)

AUDIT_CONFIG_NAME = "audit.config"  # LoadGen's default audit file name
# `model.scenario.key = value`, wildcards for both; mode 2 is TestMode.PerformanceOnly.
TEST06_SETTINGS = (
    ("mode", "2"),
    ("accuracy_log_rng_seed", str(TEST06_RNG_SEED)),
    ("accuracy_log_sampling_target", "100"),
    ("min_query_count", "100"),
    ("min_duration", "0"),
    ("sample_concatenate_permutation", "0"),
)
DTYPES = {"int32": np.int32, "int64": np.int64}


def write_audit_config(path: Path | str) -> Path:
    """Write TEST06's audit.config; `path` is the file or the run directory to put it in."""
    path = Path(path)
    if path.is_dir():
        path = path / AUDIT_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"*.*.{key} = {value}" for key, value in TEST06_SETTINGS]
    path.write_text(
        "# TEST06: LLM output consistency (written by harness.submission)\n"
        + "\n".join(lines)
        + "\n"
    )
    logger.info("wrote %s", path)
    return path


@dataclass
class Test06Result:
    """Outcome of the three TEST06 checks over one accuracy log."""

    first_token: bool | None  # None: skipped (Offline has no token_data)
    eos: bool
    length: bool
    num_samples: int
    failures: list[str] = field(default_factory=list)  # one line per failing sample

    @property
    def passed(self) -> bool:
        return self.first_token is not False and self.eos and self.length

    def lines(self) -> list[str]:
        first = "Skipped" if self.first_token is None else str(self.first_token)
        return [
            f"First token check pass: {first}",
            f"EOS check pass: {self.eos}",
            f"Sample length check pass: {self.length}",
            "TEST06 verification complete",
        ]


def _tokens(hex_data: str, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_data), dtype=dtype)


def verify_entries(
    entries: list[dict], scenario: str, eos_token_id: int, dtype: str = "int32"
) -> Test06Result:
    """Run the three checks over the entries of mlperf_log_accuracy.json."""
    if dtype not in DTYPES:
        raise AuditError("--dtype", f"unsupported {dtype!r}", f"use one of {sorted(DTYPES)}")
    np_dtype = np.dtype(DTYPES[dtype]).newbyteorder("<")
    check_first = scenario != "Offline"
    first_ok, eos_ok, length_ok = True, True, True
    failures: list[str] = []
    for entry in entries:
        where = f"qsl_idx {entry.get('qsl_idx')} (seq_id {entry.get('seq_id')})"
        data = _tokens(entry.get("data", ""), np_dtype)
        if check_first:
            if "token_data" not in entry:
                first_ok = False
                failures.append(f"{where}: no token_data (FirstTokenComplete not called?)")
            else:
                first = _tokens(entry["token_data"], np_dtype)
                if (
                    len(first) == 0
                    or len(data) < len(first)
                    or not np.array_equal(data[: len(first)], first)
                ):
                    first_ok = False
                    failures.append(
                        f"{where}: data starts {data[:3].tolist()}, "
                        f"first token was {first.tolist()}"
                    )
        trailing = 0
        for tok in data[::-1]:
            if int(tok) != eos_token_id:
                break
            trailing += 1
        if trailing > 1:
            eos_ok = False
            failures.append(f"{where}: {trailing} trailing EOS ({eos_token_id}); keep at most one")
        if "token_count" not in entry or int(entry["token_count"]) != len(data):
            length_ok = False
            failures.append(
                f"{where}: token_count={entry.get('token_count')} but data has {len(data)} tokens"
            )
    return Test06Result(
        first_ok if check_first else None, eos_ok, length_ok, len(entries), failures
    )


def verify_test06(
    run_dir: Path, output_dir: Path, scenario: str, eos_token_id: int = 2, dtype: str = "int32"
) -> Test06Result:
    """Verify a TEST06 run dir; write `<output_dir>/TEST06/verify_accuracy.txt` and copy the
    accuracy json to `<output_dir>/TEST06/accuracy/`. `output_dir` is the staged scenario dir."""
    acc_path = run_dir / "mlperf_log_accuracy.json"
    if not acc_path.is_file():
        raise AuditError(str(acc_path), "missing", "run LoadGen with the TEST06 audit.config")
    try:
        entries = json.loads(acc_path.read_text())
    except json.JSONDecodeError as exc:
        raise AuditError(str(acc_path), f"not JSON ({exc})", "re-run TEST06") from exc
    if not entries:
        raise AuditError(
            str(acc_path),
            "no logged responses",
            "copy audit.config into the run dir so LoadGen samples ~100 responses",
        )
    result = verify_entries(entries, scenario, eos_token_id, dtype)
    test_dir = output_dir / "TEST06"
    (test_dir / "accuracy").mkdir(parents=True, exist_ok=True)
    shutil.copy2(acc_path, test_dir / "accuracy" / "mlperf_log_accuracy.json")
    (test_dir / "verify_accuracy.txt").write_text("\n".join(result.lines()) + "\n")
    for line in result.failures[:20]:
        logger.error("TEST06 %s", line)
    logger.info(
        "TEST06 over %d samples: %s", result.num_samples, "pass" if result.passed else "FAIL"
    )
    return result
