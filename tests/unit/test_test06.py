"""TEST06: audit.config as LoadGen reads it, and our verification over real LoadGen logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.submission.cli import audit_verify_main
from harness.submission.logparse import DetailLog
from harness.submission.test06 import verify_entries, write_audit_config

try:
    from . import test_submission_support as support
except ImportError:
    import test_submission_support as support


def _verify(tmp_path: Path, scenario: str, variant: str = "ok") -> tuple[int, list[str]]:
    run_dir = support.raw_run(scenario, "PerformanceOnly", audit=True, variant=variant)
    out = tmp_path / scenario
    rc = audit_verify_main(
        [
            "--run_dir",
            str(run_dir),
            "--output_dir",
            str(out),
            "--scenario",
            scenario,
            "--eos_token_id",
            "2",
        ]
    )
    assert (out / "TEST06/accuracy/mlperf_log_accuracy.json").is_file()
    return rc, (out / "TEST06/verify_accuracy.txt").read_text().splitlines()


def test_audit_config_keys(tmp_path: Path) -> None:
    path = write_audit_config(tmp_path)
    assert path.name == "audit.config"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines == [
        "*.*.mode = 2",
        "*.*.accuracy_log_rng_seed = 720381539243781796",
        "*.*.accuracy_log_sampling_target = 100",
        "*.*.min_query_count = 100",
        "*.*.min_duration = 0",
        "*.*.sample_concatenate_permutation = 0",
    ]


def test_loadgen_applies_audit_config() -> None:
    log = DetailLog(
        support.raw_run("Server", "PerformanceOnly", audit=True) / "mlperf_log_detail.txt"
    )
    assert log.get("effective_test_mode") == "PerformanceOnly"
    assert log.get("effective_accuracy_log_rng_seed") == 720381539243781796
    assert log.get("effective_accuracy_log_sampling_target") == 100
    assert log.get("effective_min_query_count") == 100
    assert log.get("effective_min_duration_ms") == 0
    assert log.get("effective_sample_concatenate_permutation") is False
    assert not log.errors
    assert (
        "Found Audit Config file"
        in (
            support.raw_run("Server", "PerformanceOnly", audit=True) / "mlperf_log_detail.txt"
        ).read_text()
    )


def test_server_pass(tmp_path: Path) -> None:
    rc, lines = _verify(tmp_path, "Server")
    assert rc == 0
    assert lines == [
        "First token check pass: True",
        "EOS check pass: True",
        "Sample length check pass: True",
        "TEST06 verification complete",
    ]


def test_offline_skips_first_token(tmp_path: Path) -> None:
    rc, lines = _verify(tmp_path, "Offline")
    assert rc == 0
    assert lines[0] == "First token check pass: Skipped"


@pytest.mark.parametrize(
    ("variant", "failing"),
    [
        ("dup_eos", "EOS check pass: False"),
        ("bad_first", "First token check pass: False"),
        ("bad_count", "Sample length check pass: False"),
    ],
)
def test_failures(tmp_path: Path, variant: str, failing: str, capsys) -> None:
    rc, lines = _verify(tmp_path, "Server", variant)
    assert rc == 1
    assert failing in lines
    assert sum(line.endswith("False") for line in lines) == 1
    assert "qsl_idx" in capsys.readouterr().out


def test_single_trailing_eos_ok_and_missing_token_data() -> None:
    data = (b"\x05\x00\x00\x00" + b"\x02\x00\x00\x00").hex().upper()
    ok = verify_entries(
        [{"seq_id": 0, "qsl_idx": 0, "data": data, "token_count": 2, "token_data": "05000000"}],
        "Server",
        2,
    )
    assert ok.passed
    bad = verify_entries(
        [{"seq_id": 0, "qsl_idx": 0, "data": data, "token_count": 2}], "Interactive", 2
    )
    assert bad.first_token is False and not bad.passed


def test_user_errors_exit_2(tmp_path: Path, capsys) -> None:
    rc = audit_verify_main(
        ["--run_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--scenario", "Server"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mlperf_log_accuracy.json" in err
    (tmp_path / "mlperf_log_accuracy.json").write_text(json.dumps([]))
    assert (
        audit_verify_main(
            [
                "--run_dir",
                str(tmp_path),
                "--output_dir",
                str(tmp_path / "o"),
                "--scenario",
                "Server",
            ]
        )
        == 2
    )
