"""Runs one LoadGen test (one scenario, one mode) over a Backend and writes its log directory."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mlperf_loadgen as lg

from harness.backends.base import Backend
from harness.config.loader import config_hash, to_yaml
from harness.config.schema import HarnessConfig
from harness.dataset import Dataset
from harness.loadgen.logs import count_errors, parse_detail
from harness.loadgen.settings import (
    make_log_settings,
    make_test_settings,
    user_conf_text,
)
from harness.loadgen.sut import SUT

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    scenario: str
    test_mode: str
    valid: bool
    tokens_per_second: float
    num_errors: int
    detail: dict[str, Any]


def write_run_files(cfg: HarnessConfig, run_dir: Path, command: str, num_samples: int) -> Path:
    """config.yaml, run_info.json and user.conf; returns the user.conf path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"# config hash {config_hash(cfg)}\n{to_yaml(cfg)}")
    info = {
        "benchmark": cfg.benchmark.name,
        "scenario": cfg.scenario.scenario,
        "system": cfg.system.name,
        "test_mode": cfg.run.test_mode,
        "config_ver": cfg.run.config_ver,
        "model_opt": cfg.engine.model_opt,
        "backend": cfg.engine.backend,
        "dummy_weights": cfg.engine.dummy_weights,
        "test_run": cfg.run.test_run,
        "audit_test": "TEST06" if cfg.run.audit_config else "",
        "command": command,
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "eos_token_id": cfg.benchmark.eos_token_id,
        "model_path": cfg.benchmark.model_path,
        "reference_model": cfg.benchmark.name == "llama2-70b",
        "num_samples": num_samples,
        "config_hash": config_hash(cfg),
    }
    if dense := cfg.engine.fp8_dense_layers_applied():
        info["fp8_dense_layers"] = dense  # decoder layers not quantized
    if cfg.engine.dummy_weights:
        info["note"] = "DUMMY WEIGHTS: random weights of the real shape; speed only, never accuracy"
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    user_conf = run_dir / "user.conf"
    user_conf.write_text(user_conf_text(cfg, num_samples))
    return user_conf


def run_loadgen(
    cfg: HarnessConfig, backend: Backend, dataset: Dataset, run_dir: Path, command: str
) -> RunResult:
    user_conf = write_run_files(cfg, run_dir, command, len(dataset))
    if cfg.engine.dummy_weights:
        logger.warning("DUMMY WEIGHTS: this run measures speed only, never accuracy")
    settings = make_test_settings(cfg, user_conf)
    sut = SUT(cfg, backend, dataset)
    backend.start(sut)
    audit = run_dir / "audit.config"  # present only for compliance (TEST06) runs
    logger.info(
        "LoadGen %s %s: %d samples, logs in %s",
        cfg.scenario.scenario,
        cfg.run.test_mode,
        len(dataset),
        run_dir,
    )
    try:
        lg.StartTestWithLogSettings(
            sut.sut, sut.qsl, settings, make_log_settings(run_dir), str(audit)
        )
    finally:
        try:
            backend.stop()  # raises if the backend failed (the SUT has let LoadGen end)
        finally:
            sut.destroy()
    detail = parse_detail(run_dir)
    if cfg.scenario.loadgen_scenario == "Offline":
        tps = detail.get("result_tokens_per_second")
    else:
        tps = detail.get("result_completed_tokens_per_second")
    result = RunResult(
        run_dir=run_dir,
        scenario=cfg.scenario.scenario,
        test_mode=cfg.run.test_mode,
        valid=detail.get("result_validity") == "VALID",
        tokens_per_second=float(tps or 0.0),
        num_errors=count_errors(run_dir),
        detail={k: v for k, v in detail.items() if k.startswith(("result_", "effective_"))},
    )
    summary = {k: v for k, v in asdict(result).items() if k != "detail"}
    summary["run_dir"] = str(run_dir)
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result
