"""Finds which systems/<name>.yaml describes this machine (GPU product and count, or CPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from harness.config.loader import ConfigError, repo_root

logger = logging.getLogger(__name__)
CPU_SYSTEM = "cpu-default"


def detect_accelerators() -> tuple[str, int]:
    """(product name, count) of the CUDA devices, or ("cpu", 0)."""
    try:
        import torch
    except ImportError:
        return "cpu", 0
    if not torch.cuda.is_available():
        return "cpu", 0
    return torch.cuda.get_device_name(0), torch.cuda.device_count()


def match_system(accelerator: str, count: int, systems_dir: Path | None = None) -> str:
    if accelerator == "cpu":
        return CPU_SYSTEM
    systems_dir = systems_dir or repo_root() / "systems"
    for path in sorted(systems_dir.glob("*.yaml")):
        facts = (yaml.safe_load(path.read_text()) or {}).get("system") or {}
        if facts.get("num_accelerators") == count and accelerator.startswith(
            str(facts.get("accelerator", "\0"))
        ):
            return path.stem
    raise ConfigError(
        f"no systems/*.yaml describes this machine ({count}x '{accelerator}'). Copy the closest "
        f"systems/*.yaml to systems/<name>.yaml, set `accelerator: {accelerator}` and "
        f"`num_accelerators: {count}`, tune its knobs, or pass --system_name=<existing name>"
    )


def detect_system() -> str:
    accelerator, count = detect_accelerators()
    name = match_system(accelerator, count)
    logger.info("detected system %s (%dx %s)", name, count, accelerator)
    return name
