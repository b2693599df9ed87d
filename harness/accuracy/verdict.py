"""Pass/fail of an accuracy result against the benchmark's targets, the printed verdict line,
and accuracy.txt in the exact format the MLCommons submission checker parses (+ hash= line).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import AccuracyInputError
from .scorer import AccuracyResult
from .targets import Targets

CONFIG_VER_SUFFIX = {"default": "99", "high_accuracy": "99.9"}


@dataclass(frozen=True)
class MetricCheck:
    name: str  # as printed: ROUGE1, ROUGE2, ROUGEL, TOKENS_PER_SAMPLE
    value: float
    threshold: float  # the bound shown: the lower one, or the upper one when exceeded
    passed: bool

    def render(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        return f"[{status}] {self.name}: {self.value:.3f} (Threshold={self.threshold:.3f})"


@dataclass(frozen=True)
class Verdict:
    benchmark: str  # e.g. llama2-70b-99.9
    checks: tuple[MetricCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def line(self) -> str:
        return f"{self.benchmark}: accuracy: " + " | ".join(c.render() for c in self.checks)


def benchmark_label(benchmark_name: str, config_ver: str) -> str:
    """`<name>-99` for default, `<name>-99.9` for high_accuracy."""
    if config_ver not in CONFIG_VER_SUFFIX:
        raise AccuracyInputError(
            f"unknown config_ver {config_ver!r}; choose one of {list(CONFIG_VER_SUFFIX)}"
        )
    return f"{benchmark_name}-{CONFIG_VER_SUFFIX[config_ver]}"


def judge(
    result: AccuracyResult, targets: Targets, config_ver: str, benchmark_name: str
) -> Verdict:
    """ROUGE-1/2/L must reach target x fraction (equal passes); tokens per sample must lie in
    [lower, upper] x the reference value. `targets`: Targets or config.schema.AccuracyTargets."""
    label = benchmark_label(benchmark_name, config_ver)
    fraction = (
        targets.fraction_high_accuracy
        if config_ver == "high_accuracy"
        else targets.fraction_default
    )
    checks = []
    for name, key in (("ROUGE1", "rouge1"), ("ROUGE2", "rouge2"), ("ROUGEL", "rougeL")):
        value = float(getattr(result, key))
        threshold = float(getattr(targets, key)) * fraction
        checks.append(MetricCheck(name, value, threshold, value >= threshold))
    tps = float(result.tokens_per_sample)
    lower = float(targets.tokens_per_sample) * targets.tokens_lower_fraction
    upper = float(targets.tokens_per_sample) * targets.tokens_upper_fraction
    shown = upper if tps > upper else lower
    checks.append(MetricCheck("TOKENS_PER_SAMPLE", tps, shown, lower <= tps <= upper))
    return Verdict(label, tuple(checks))


def accuracy_txt(result: AccuracyResult) -> str:
    """The results dict line evaluate-accuracy.py prints, with plain floats/ints, e.g.
    {'rouge1': 44.604, ..., 'gen_len': 28388763, ..., 'tokens_per_sample': 291.9}"""
    return f"{result.as_dict()!r}\n"


def write_accuracy_txt(result: AccuracyResult, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(accuracy_txt(result), encoding="utf-8")
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def append_hash(accuracy_txt_path: str | os.PathLike[str], log_path: str | os.PathLike[str]) -> str:
    """Appends `hash=<sha256 of the full accuracy log>` (as truncate_accuracy_log.py does);
    an existing hash= line is replaced, so calling it twice leaves one. Returns the digest."""
    txt = Path(accuracy_txt_path)
    log = Path(log_path)
    if not log.is_file():
        raise AccuracyInputError(f"{log}: accuracy log not found (needed for its hash)")
    if not txt.is_file():
        raise AccuracyInputError(f"{txt}: accuracy.txt not found; score the log first")
    digest = sha256_file(log)
    lines = [
        ln for ln in txt.read_text(encoding="utf-8").splitlines() if not ln.startswith("hash=")
    ]
    txt.write_text("\n".join([*lines, f"hash={digest}"]) + "\n", encoding="utf-8")
    return digest
