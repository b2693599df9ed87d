"""Real LoadGen logs for the submission tests: a tiny in-process SUT, run dirs laid out as
the harness writes them (build/logs/<ts>/<system>/<benchmark>/<scenario>/), cached per process.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import yaml

from harness.submission.test06 import write_audit_config

EOS = 2
REPO_ROOT = Path(__file__).resolve().parents[2]
ACC_LINE = (
    "{'rouge1': 44.604, 'rouge2': 22.1267, 'rougeL': 28.7704, 'rougeLsum': 42.1576, "
    "'gen_len': 28388763, 'gen_num': 24576, 'gen_tok_len': 7174519, "
    "'tokens_per_sample': 291.9}"
)
SUBMISSION_FIELDS = {
    "host_memory_configuration": "2x 12 GB",
    "host_networking": "Ethernet",
    "host_networking_topology": "N/A",
    "cooling": "air",
    "host_storage_type": "SSD",
    "host_network_card_count": 1,
    "host_processor_frequency": "2400 MHz",
}
_CACHE: dict[str, Path] = {}


def run_loadgen(
    outdir: Path,
    scenario: str,
    mode: str,
    *,
    audit: Path | None = None,
    n: int = 8,
    min_duration_ms: int = 0,
    variant: str = "ok",
) -> None:
    """One LoadGen test over an echo SUT; `variant` breaks one TEST06 rule on purpose."""
    outdir.mkdir(parents=True, exist_ok=True)
    keep = []  # response buffers must outlive the completion calls

    def issue(samples: list) -> None:
        for s in samples:
            toks = [100 + s.index, 5, 6, 7, EOS] + ([EOS] if variant == "dup_eos" else [])
            out = np.array(toks, dtype=np.int32)
            n_tokens = len(out) + (1 if variant == "bad_count" else 0)
            if scenario != "Offline":
                first = np.array([9 if variant == "bad_first" else out[0]], dtype=np.int32)
                buf = array.array("B", first.tobytes())
                keep.append(buf)
                info = buf.buffer_info()
                lg.FirstTokenComplete([lg.QuerySampleResponse(s.id, info[0], info[1])])
            buf = array.array("B", out.tobytes())
            keep.append(buf)
            info = buf.buffer_info()
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, info[0], info[1], n_tokens)])

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(n, n, lambda s: None, lambda s: None)
    user_conf = outdir / "user.conf"
    user_conf.write_text(
        f"*.{scenario}.target_qps = 2000\n"
        f"*.{scenario}.min_duration = {min_duration_ms}\n"
        f"*.{scenario}.min_query_count = {n}\n"
    )
    settings = lg.TestSettings()
    settings.FromConfig(str(user_conf), "llama2-70b", scenario)
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = getattr(lg.TestMode, mode)
    settings.use_token_latencies = True
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(outdir)
    log_settings.log_output.copy_summary_to_stdout = False
    audit_path = str(audit) if audit else str(outdir / "no-audit.config")
    lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, audit_path)
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)


def raw_run(scenario: str, mode: str, *, audit: bool = False, variant: str = "ok") -> Path:
    """Cached LoadGen output of one (scenario, mode, audit, variant), each in its own process:
    LoadGen logs "Multiple conf files are used" when a process calls FromConfig twice."""
    key = f"{scenario}-{mode}-{audit}-{variant}"
    if key not in _CACHE:
        outdir = Path(tempfile.mkdtemp(prefix=f"lg-{key}-"))
        audit_file = write_audit_config(outdir) if audit else None
        args = [scenario, mode, str(outdir), str(audit_file or ""), variant]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        subprocess.run([sys.executable, __file__, *args], check=True, timeout=120, env=env)
        (outdir / "mlperf_log_trace.json").unlink(missing_ok=True)
        _CACHE[key] = outdir
    return _CACHE[key]


def make_run(
    logs: Path,
    stamp: str,
    *,
    scenario: str,
    mode: str,
    system: str = "cpu-default",
    benchmark: str = "smollm2-135m",
    config_ver: str = "default",
    model_opt: str = "Dense",
    test_run: bool = True,
    audit: str = "",
    variant: str = "ok",
    started_at: str = "",
) -> Path:
    """A run dir as the harness writes it, holding real LoadGen logs."""
    run_dir = logs / stamp / system / benchmark / scenario
    shutil.copytree(raw_run(scenario, mode, audit=bool(audit), variant=variant), run_dir)
    info = {
        "benchmark": benchmark,
        "scenario": scenario,
        "system": system,
        "test_mode": mode,
        "config_ver": config_ver,
        "model_opt": model_opt,
        "backend": "torch",
        "dummy_weights": False,
        "test_run": test_run,
        "audit_test": audit,
        "command": f"python -m harness run --benchmarks={benchmark} --scenarios={scenario} "
        f"--test_mode={mode}" + (" --test_run" if test_run else ""),
        "started_at": started_at or f"2026-01-01T{stamp[-6:-4]}:{stamp[-4:-2]}:{stamp[-2:]}",
        "eos_token_id": EOS,
        "model_path": f"build/models/{benchmark}",
        "reference_model": benchmark == "llama2-70b",
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"benchmark": benchmark}))
    if mode == "AccuracyOnly":
        (run_dir / "accuracy.txt").write_text(ACC_LINE + "\n")
    return run_dir


def write_system_yaml(systems: Path, name: str = "cpu-default", extra: dict | None = None) -> Path:
    systems.mkdir(parents=True, exist_ok=True)
    data = {
        "name": name,
        "description": f"{name} test system",
        "accelerator": None,
        "num_accelerators": 0,
        "host_processor": "Test CPU",
        "submitter": "Acme",
        "benchmarks": {},
        "submission": dict(SUBMISSION_FIELDS if extra is None else extra),
    }
    path = systems / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _build(benchmark: str, model_opt: str, config_ver: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"lg-{benchmark}-"))
    logs = root / "build" / "logs"
    for scenario, base in (("Offline", 10), ("Server", 20)):
        kw = dict(
            scenario=scenario, benchmark=benchmark, model_opt=model_opt, config_ver=config_ver
        )
        make_run(logs, f"20260101-{base}0000", mode="PerformanceOnly", **kw)
        make_run(logs, f"20260101-{base}1000", mode="AccuracyOnly", **kw)
        make_run(logs, f"20260101-{base}2000", mode="PerformanceOnly", audit="TEST06", **kw)
    write_system_yaml(root / "systems")
    return root


def logs_tree(
    benchmark: str = "smollm2-135m", model_opt: str = "Dense", config_ver: str = "default"
) -> Path:
    """A pristine copy of a cached project root with build/logs and systems/ (per call)."""
    key = f"{benchmark}-{model_opt}-{config_ver}"
    if key not in _CACHE:
        _CACHE[key] = _build(benchmark, model_opt, config_ver)
    copy = Path(tempfile.mkdtemp(prefix="stage-")) / "root"
    shutil.copytree(_CACHE[key], copy)
    return copy


def test_support_writes_real_loadgen_logs() -> None:
    root = logs_tree()
    runs = sorted(root.rglob("run_info.json"))
    assert len(runs) == 6
    for info in runs:
        assert (info.parent / "mlperf_log_detail.txt").is_file()


if __name__ == "__main__":
    _scenario, _mode, _out, _audit, _variant = sys.argv[1:6]
    run_loadgen(
        Path(_out), _scenario, _mode, audit=Path(_audit) if _audit else None, variant=_variant
    )
