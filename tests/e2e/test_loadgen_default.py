"""Real LoadGen runs of the built-in default (short settings) through the CLI.

Asserts VALID results, no LoadGen errors (a completion before its first token, n_tokens < 2
and other protocol faults are LoadGen errors), n_tokens == len(data), the first token
reported through FirstTokenComplete equal to the first token of the final response (Server),
and at most one EOS, at the end.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import harness

pytestmark = pytest.mark.e2e
EOS = 2
SHORT = ["--backend=torch", "--sample_limit=16", "--max_new_tokens=24"]


def run_dir_of(log_dir: Path, scenario: str) -> Path:
    path = log_dir / "latest" / "cpu-default" / "smollm2-135m" / scenario
    assert path.is_dir(), f"no run directory {path}"
    return path


def detail(run_dir: Path) -> dict:
    values = {}
    for line in (run_dir / "mlperf_log_detail.txt").read_text().splitlines():
        if line.startswith(":::MLLOG"):
            entry = json.loads(line[len(":::MLLOG") :])
            values[entry["key"]] = entry["value"]
    return values


def check_responses(run_dir: Path, streams_first_token: bool) -> int:
    entries = json.loads((run_dir / "mlperf_log_accuracy.json").read_text())
    assert entries, "no responses logged"
    for e in entries:
        tokens = np.frombuffer(bytes.fromhex(e["data"]), dtype="<i4")
        assert e["token_count"] == len(tokens) >= 2
        assert EOS not in tokens[:-1].tolist()  # at most one EOS, and only at the end
        if streams_first_token:
            first = np.frombuffer(bytes.fromhex(e["token_data"]), dtype="<i4")
            assert first.tolist() == tokens[:1].tolist()
    return len(entries)


def test_offline_performance_and_accuracy(default_built, tmp_path):
    args = [*SHORT, "--scenarios=Offline", f"--log_dir={tmp_path}"]
    harness("run_harness", *args, "--min_query_count=16", "--min_duration_ms=0")
    run = run_dir_of(tmp_path, "Offline")
    d = detail(run)
    assert d["result_validity"] == "VALID"
    assert d["num_errors"] == 0
    assert d["result_tokens_per_second"] > 0
    info = json.loads((run / "run_info.json").read_text())
    assert info["test_mode"] == "PerformanceOnly" and info["backend"] == "torch"
    assert "smollm2-135m.Offline.min_query_count = 16" in (run / "user.conf").read_text()

    acc_dir = tmp_path / "acc"
    proc = harness(
        "run_harness", *args[:-1], f"--log_dir={acc_dir}", "--test_mode=AccuracyOnly", check=False
    )
    # 16 samples against whole-dataset targets may pass or fail; the verdict must be printed.
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    run = run_dir_of(acc_dir, "Offline")
    assert check_responses(run, streams_first_token=False) == 16
    assert "smollm2-135m-99: accuracy: [" in proc.stdout
    assert "TOKENS_PER_SAMPLE" in proc.stdout
    assert "'rouge1': " in (run / "accuracy.txt").read_text()


def test_server_streams_first_token_and_is_valid(default_built, tmp_path):
    harness(
        "run_audit_harness",
        *SHORT,
        "--scenarios=Server",
        f"--log_dir={tmp_path}",
        "--target_qps=1",
    )  # TEST06 settings: performance mode, 100 queries, ~100 responses logged
    run = run_dir_of(tmp_path, "Server")
    d = detail(run)
    assert d["result_validity"] == "VALID", d.get("result_invalid_reason")
    assert d["num_errors"] == 0
    assert d["requested_use_token_latencies"] is True
    assert d["result_first_token_mean_latency_ns"] > 0
    # TEST06 audit: performance mode that still logs ~100 responses with their first tokens
    assert check_responses(run, streams_first_token=True) > 0
    assert (run / "audit.config").is_file()


def test_an_engine_that_cannot_hold_one_kv_block_fails_before_loadgen(default_built, tmp_path):
    """Too little memory for the KV cache: one error line naming the knob, its value and the
    system file; the run folder keeps its config and nothing else."""
    proc = harness(
        "run_harness", *SHORT, "--scenarios=Offline", f"--log_dir={tmp_path}",
        "--gpu_memory_utilization=1e-9", check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: torch backend cannot start from "), error
    assert "no room for a KV block" in error
    assert "gpu_memory_utilization (now 1e-09)" in error
    assert "systems/cpu-default.yaml (benchmarks.smollm2-135m.Offline.engine)" in error
    run = run_dir_of(tmp_path, "Offline")
    assert [p.name for p in run.iterdir()] == ["config.yaml"]
