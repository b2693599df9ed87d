"""Accuracy targets of a benchmark: the `accuracy:` section (fields of
config.schema.AccuracyTargets) of configs/<name>/benchmark.yaml (or configs/benchmark/<name>.yaml),
or given explicitly; llama2-70b has built-ins. A tiny YAML read: no config layering here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import AccuracyInputError, TargetsNotSetError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Targets:
    """Reference scores; pass at target x fraction (tokens per sample: inside the bounds)."""

    rouge1: float
    rouge2: float
    rougeL: float
    tokens_per_sample: float
    fraction_default: float = 0.99
    fraction_high_accuracy: float = 0.999
    tokens_lower_fraction: float = 0.9
    tokens_upper_fraction: float = 1.1


# MLCommons llama2-70b reference (FP16, DGX-H100), used when no benchmark YAML is present.
BUILTIN_TARGETS = {
    "llama2-70b": Targets(rouge1=44.4312, rouge2=22.0352, rougeL=28.6162, tokens_per_sample=294.45),
}
_FIELDS = tuple(f.name for f in dataclasses.fields(Targets))


def targets_from_mapping(values: dict, source: str) -> Targets:
    """Targets from a dict of AccuracyTargets fields; unknown keys and non-numbers are errors."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise AccuracyInputError(
            f"{source}: unknown accuracy key(s) {unknown}; allowed keys: {list(_FIELDS)}"
        )
    required = ("rouge1", "rouge2", "rougeL", "tokens_per_sample")
    if not any(values.get(k) for k in required):
        raise TargetsNotSetError(
            f"{source}: no accuracy targets recorded yet (all zero); fix: run "
            "`make record_accuracy_targets` or pass --benchmark_config"
        )
    missing = [k for k in required if not values.get(k)]
    if missing:
        raise AccuracyInputError(f"{source}: accuracy target(s) {missing} missing or zero")
    try:
        return Targets(**{k: float(v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise AccuracyInputError(f"{source}: accuracy targets must be numbers ({exc})") from None


def benchmark_yaml_path(benchmark: str, repo_root: Path = REPO_ROOT) -> Path:
    """configs/<name>/benchmark.yaml (the project's layout), else configs/benchmark/<name>.yaml."""
    layout = repo_root / "configs" / benchmark / "benchmark.yaml"
    flat = repo_root / "configs" / "benchmark" / f"{benchmark}.yaml"
    return flat if flat.is_file() and not layout.is_file() else layout


def load_targets(benchmark: str, config_path: str | os.PathLike[str] | None = None) -> Targets:
    """The `accuracy:` section of the benchmark YAML (`benchmark_yaml_path` unless config_path
    is given); without that file, the built-in reference targets if known.
    Raises TargetsNotSetError when the file's targets are all zero (not recorded yet)."""
    path = Path(config_path) if config_path is not None else benchmark_yaml_path(benchmark)
    if not path.is_file():
        if config_path is None and benchmark in BUILTIN_TARGETS:
            logger.info("%s not found; using the built-in %s reference targets", path, benchmark)
            return BUILTIN_TARGETS[benchmark]
        raise AccuracyInputError(
            f"{path}: benchmark config not found; fix: pass --benchmark_config or one of the "
            f"built-in benchmarks {sorted(BUILTIN_TARGETS)}"
        )
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AccuracyInputError(f"{path}: cannot read the benchmark YAML ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("benchmark"), dict):
        doc = doc["benchmark"]
    section = doc.get("accuracy") if isinstance(doc, dict) else None
    if not isinstance(section, dict):
        raise AccuracyInputError(f"{path}: no 'accuracy:' section with the targets")
    return targets_from_mapping(section, str(path))
