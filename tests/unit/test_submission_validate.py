"""check_submission: each rule fails with the file and a fix on a broken staged tree."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from harness.submission import rounds as R
from harness.submission.cli import check_main, stage_main
from harness.submission.validate import ERROR, TEST_RUN, check_submission

try:
    from . import test_submission_support as support
except ImportError:
    import test_submission_support as support

BENCH = "llama2-70b-99.9"


@pytest.fixture(scope="module")
def staged_closed() -> Path:
    root = support.logs_tree("llama2-70b", "FP8", "high_accuracy")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert stage_main([]) == 0
    finally:
        os.chdir(cwd)
    return root / "results"


@pytest.fixture
def tree(staged_closed: Path, tmp_path: Path) -> Path:
    shutil.copytree(staged_closed, tmp_path / "results")
    return tmp_path / "results"


def _sdir(tree: Path, scenario: str = "Server") -> Path:
    return tree / "closed/Acme/results/cpu-default" / BENCH / scenario


def _errors(tree: Path) -> list[str]:
    return [f"{f.file}: {f.problem}" for f in check_submission(tree) if f.level == ERROR]


def _one_error(tree: Path, needle: str) -> None:
    errors = _errors(tree)
    assert len(errors) == 1, errors
    assert needle in errors[0], errors


def test_pristine_tree_has_no_errors(tree: Path) -> None:
    assert _errors(tree) == []


@pytest.mark.parametrize(
    "rel",
    [f"performance/run_1/{f}" for f in R.PERF_FILES]
    + [f"accuracy/{f}" for f in R.ACC_FILES if f != "mlperf_log_detail.txt"]
    + list(R.MEASURE_FILES),
)
def test_each_required_file(tree: Path, rel: str) -> None:
    (_sdir(tree) / rel).unlink()
    errors = _errors(tree)
    assert any(rel.split("/")[-1] in e and "required file missing" in e for e in errors), errors


@pytest.mark.parametrize("field", R.MEASUREMENTS_FIELDS)
def test_each_measurements_field(tree: Path, field: str) -> None:
    path = _sdir(tree) / "measurements.json"
    values = json.loads(path.read_text())
    values[field] = ""
    path.write_text(json.dumps(values))
    _one_error(tree, f"field {field} missing or empty")


@pytest.mark.parametrize("field", R.SYSTEM_REQUIRED_FIELDS)
def test_each_system_field(tree: Path, field: str) -> None:
    path = tree / "closed/Acme/systems/cpu-default.json"
    desc = json.loads(path.read_text())
    del desc[field]
    path.write_text(json.dumps(desc))
    errors = _errors(tree)
    assert any(f"field {field} is missing" in e for e in errors), errors


@pytest.mark.parametrize("field", R.SYSTEM_MEANINGFUL_FIELDS)
def test_each_meaningful_system_field(tree: Path, field: str) -> None:
    path = tree / "closed/Acme/systems/cpu-default.json"
    desc = json.loads(path.read_text())
    desc[field] = ""
    path.write_text(json.dumps(desc))
    errors = _errors(tree)
    assert any(f"field {field} needs a meaningful" in e for e in errors), errors


def test_untruncated_log_and_missing_hash(tree: Path) -> None:
    log = _sdir(tree) / "accuracy/mlperf_log_accuracy.json"
    log.write_text("[" + " " * (R.MAX_ACCURACY_LOG_BYTES + 1) + "]")
    txt = _sdir(tree) / "accuracy/accuracy.txt"
    txt.write_text(txt.read_text().split("hash=")[0])
    errors = _errors(tree)
    assert any("not truncated" in e for e in errors) and any("no hash=" in e for e in errors)


def test_numpy2_repr_is_caught_with_fix(tree: Path) -> None:
    txt = _sdir(tree) / "accuracy/accuracy.txt"
    txt.write_text(re.sub(r"'rouge1': ([\d.]+)", r"'rouge1': np.float64(\1)", txt.read_text()))
    findings = [f for f in check_submission(tree) if f.level == ERROR]
    assert len(findings) == 1 and "rouge1" in findings[0].problem
    assert "np.float64" in findings[0].fix


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("'rouge2': 22.1267", "'rouge2': 22.0", "rouge2 22.0 <"),
        ("'tokens_per_sample': 291.9", "'tokens_per_sample': 839.4", "tokens_per_sample 839.4 >"),
        ("'tokens_per_sample': 291.9", "'tokens_per_sample': 200.0", "tokens_per_sample 200.0 <"),
    ],
)
def test_accuracy_thresholds(tree: Path, old: str, new: str, needle: str) -> None:
    txt = _sdir(tree) / "accuracy/accuracy.txt"
    txt.write_text(txt.read_text().replace(old, new))
    _one_error(tree, needle)


def test_test06_false_line_and_missing(tree: Path) -> None:
    verify = _sdir(tree) / "TEST06/verify_accuracy.txt"
    verify.write_text(verify.read_text().replace("EOS check pass: True", "EOS check pass: False"))
    _one_error(tree, "TEST06 eos check did not pass")
    shutil.rmtree(_sdir(tree, "Offline") / "TEST06")
    assert any("TEST06 missing" in e for e in _errors(tree))


def _edit_detail(tree: Path, key: str, value: object) -> None:
    path = _sdir(tree) / "performance/run_1/mlperf_log_detail.txt"
    lines = []
    for line in path.read_text().splitlines():
        if f'"key": "{key}"' in line:
            entry = json.loads(line[len(":::MLLOG ") :])
            entry["value"] = value
            line = ":::MLLOG " + json.dumps(entry)
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def test_seeds_of_another_round(tree: Path) -> None:
    _edit_detail(tree, "effective_qsl_rng_seed", R.ROUNDS["v6.0"].seeds["qsl_rng_seed"])
    _one_error(tree, "qsl_rng_seed")


def test_ttft_and_tpot_limits(tree: Path) -> None:
    _edit_detail(tree, "result_first_token_99.00_percentile_latency_ns", 2_100_000_000)
    _edit_detail(tree, "result_time_per_output_token_99.00_percentile_ns", 250_000_000)
    errors = _errors(tree)
    assert len(errors) == 2 and "TTFT" in errors[0] and "TPOT" in errors[1]


def test_duration_rules_are_errors_outside_a_test_run(tree: Path) -> None:
    test_run = [f for f in check_submission(tree) if f.level == TEST_RUN]
    assert any("min_duration" in f.problem for f in test_run)
    for scenario in ("Offline", "Server"):
        readme = _sdir(tree, scenario) / "README.md"
        readme.write_text(readme.read_text().replace("harness_test_run: true", "x"))
    errors = _errors(tree)
    assert any("min_duration 0 ms < 600000" in e for e in errors)
    assert any("result is INVALID" in e for e in errors)
    assert any("samples_per_query 8 < 24576" in e for e in errors)


def test_required_scenarios_for_closed(tree: Path, capsys) -> None:
    shutil.rmtree(_sdir(tree, "Server"))
    _one_error(tree, "required scenarios missing: ['Server or Interactive']")
    assert check_main(["--input", str(tree)]) == 1
    out = capsys.readouterr().out
    assert "REJECTED" in out and "fix: run and stage them" in out


def test_missing_input_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert check_main(["--input", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
