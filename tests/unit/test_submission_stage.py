"""stage_results + check_submission over real LoadGen logs: layout, files, fields, overwrite."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from harness.submission import rounds as R
from harness.submission.cli import check_main, stage_main

try:
    from . import test_submission_support as support
except ImportError:
    import test_submission_support as support

SCEN = ("Offline", "Server")


def _stage(root: Path, *extra: str) -> int:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return stage_main(["--repo_root", str(Path(__file__).parents[2]), *extra])
    finally:
        os.chdir(cwd)


@pytest.fixture
def default_root(tmp_path: Path) -> Path:
    return support.logs_tree()


@pytest.fixture
def staged_default(default_root: Path) -> Path:
    assert _stage(default_root) == 0
    return default_root


def _scen_dir(root: Path, division: str, bench: str, scenario: str) -> Path:
    return root / "results" / division / "Acme" / "results" / "cpu-default" / bench / scenario


def test_default_test_run_stages_and_validates(staged_default: Path, capsys) -> None:
    capsys.readouterr()
    assert check_main(["--input", str(staged_default / "results")]) == 0
    out = capsys.readouterr().out
    assert "ACCEPTED AS A TEST RUN" in out
    assert "NOT MET (test run)" in out and "min_duration" in out
    assert "ERROR" not in out
    assert "NOT reproduced" in out and "power measurement" in out


def test_every_required_file_is_staged(staged_default: Path) -> None:
    sub = staged_default / "results" / "open" / "Acme"
    assert (sub / "src" / "README.md").is_file()
    assert (sub / "src" / "harness" / "harness" / "submission" / "stage.py").is_file()
    assert json.loads((sub / "model_mapping.json").read_text()) == {
        "smollm2-135m-99": "llama2-70b-99.9"
    }
    for scenario in SCEN:
        d = _scen_dir(staged_default, "open", "smollm2-135m-99", scenario)
        for name in R.PERF_FILES:
            assert (d / "performance" / "run_1" / name).is_file()
        for name in R.ACC_FILES:
            assert (d / "accuracy" / name).is_file()
        for name in R.MEASURE_FILES:
            assert (d / name).is_file()
        assert (d / "TEST06" / "verify_accuracy.txt").is_file()
        assert (d / "TEST06" / "accuracy" / "mlperf_log_accuracy.json").is_file()


def test_measurements_and_readme(staged_default: Path) -> None:
    d = _scen_dir(staged_default, "open", "smollm2-135m-99", "Server")
    meas = json.loads((d / "measurements.json").read_text())
    for key in R.MEASUREMENTS_FIELDS:
        assert meas[key], key
    readme = (d / "README.md").read_text()
    assert "harness_test_run: true" in readme
    assert "--test_mode=PerformanceOnly" in readme and "--test_mode=AccuracyOnly" in readme
    assert "TEST06" in readme
    assert (d / "user.conf").read_text().startswith("*.Server.target_qps")


def test_system_json_has_every_required_field(staged_default: Path) -> None:
    path = staged_default / "results/open/Acme/systems/cpu-default.json"
    desc = json.loads(path.read_text())
    for key in R.SYSTEM_REQUIRED_FIELDS:
        assert key in desc, key
    for key in R.SYSTEM_MEANINGFUL_FIELDS:
        assert desc[key], key
    assert desc["division"] == "open" and desc["submitter"] == "Acme"
    assert desc["accelerators_per_node"] == "0" and desc["accelerator_model_name"] == "N/A"
    assert desc["host_processor_model_name"] == "Test CPU"
    assert "Python" in desc["other_software_stack"]


def test_accuracy_log_truncated_with_hash_of_full_log(staged_default: Path) -> None:
    d = _scen_dir(staged_default, "open", "smollm2-135m-99", "Offline")
    full = next((staged_default / "build/full_results").rglob("Offline/accuracy/*.json"))
    digest = hashlib.sha256(full.read_bytes()).hexdigest()
    assert (d / "accuracy/accuracy.txt").read_text().splitlines()[-1] == f"hash={digest}"
    assert (d / "accuracy/mlperf_log_accuracy.json").stat().st_size <= R.MAX_ACCURACY_LOG_BYTES


def test_refuses_to_overwrite_then_force_keeps_both(staged_default: Path, capsys) -> None:
    capsys.readouterr()
    assert _stage(staged_default) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already staged" in err and "--force" in err
    assert _stage(staged_default, "--force") == 0
    kept = list((staged_default / "build/full_results/replaced").rglob("performance/run_1"))
    assert len(kept) == 2
    log = (staged_default / "build/full_results/staging.log").read_text()
    assert "--force=True: replaced staged" in log


def test_missing_system_fields_fail_with_list(default_root: Path, capsys) -> None:
    support.write_system_yaml(default_root / "systems", extra={})
    assert _stage(default_root) == 2
    err = capsys.readouterr().err
    assert "cooling" in err and "lacks" in err and "submission:" in err
    assert not (default_root / "results").exists()


def test_closed_reference_model(capsys) -> None:
    root = support.logs_tree("llama2-70b", "FP8", "high_accuracy")
    assert _stage(root) == 0
    d = _scen_dir(root, "closed", "llama2-70b-99.9", "Server")
    assert (d / "TEST06/verify_accuracy.txt").read_text().startswith("First token check pass: True")
    assert (root / "results/closed/Acme/documentation/calibration.md").is_file()
    assert not (root / "results/closed/Acme/model_mapping.json").exists()
    capsys.readouterr()
    assert check_main(["--input", str(root / "results")]) == 0
    out = capsys.readouterr().out
    assert "Offline samples_per_query" in out and "accuracy run over 8 samples" in out


def test_sparse_is_open_and_closed_is_refused(capsys) -> None:
    root = support.logs_tree("llama2-70b", "Sparse", "high_accuracy")
    assert _stage(root, "--division", "closed") == 2
    assert "closed is not allowed" in capsys.readouterr().err
    assert _stage(root) == 0
    assert (root / "results/open/Acme/results/cpu-default/llama2-70b-99.9/Offline").is_dir()


def test_llama2_99_warns_for_v61(capsys) -> None:
    root = support.logs_tree("llama2-70b", "FP8", "default")
    assert _stage(root) == 0
    assert "llama2-70b-99 is not a benchmark of round v6.1" in capsys.readouterr().out
    assert check_main(["--input", str(root / "results")]) == 1
    assert "not a closed benchmark of v6.1" in capsys.readouterr().out


def test_nested_system_yaml_like_the_project_files(default_root: Path) -> None:
    (default_root / "systems/cpu-default.yaml").write_text(
        "system:\n  name: cpu-default\n  description: Generic host, CPU only\n"
        "  accelerator: cpu\n  num_accelerators: 0\n  submission:\n    status: rdi\n"
        "    cooling: air\n    host_memory_configuration: 2x 12 GB\n"
        "    host_networking: Ethernet\n    host_storage_type: SSD\n"
        "    host_network_card_count: 1\n"
        "benchmarks: {}\n"
    )
    assert _stage(default_root, "--submitter", "Acme") == 0
    desc = json.loads((default_root / "results/open/Acme/systems/cpu-default.json").read_text())
    assert desc["status"] == "rdi" and desc["system_name"] == "Generic host, CPU only"
    assert desc["accelerator_model_name"] == "N/A"


def test_measurements_name_the_layers_fp8_left_dense() -> None:
    from types import SimpleNamespace

    from harness.submission.stage import _measurements

    run = SimpleNamespace(info={"model_opt": "FP8", "fp8_dense_layers": "0,-1", "model_path": ""})
    meas = _measurements(SimpleNamespace(perf=run), {})
    assert meas["weight_data_types"] == "fp8"
    assert meas["weight_transformations"] == "quantization; decoder layers 0,-1 not quantized"
    run.info.pop("fp8_dense_layers")
    assert _measurements(SimpleNamespace(perf=run), {})["weight_transformations"] == "quantization"
