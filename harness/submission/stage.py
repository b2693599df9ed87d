"""stage_results: copy the selected runs into results/<division>/<submitter>/... (MLCommons
layout of the chosen round), truncating accuracy logs and keeping the full ones aside.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from harness.submission import sysinfo
from harness.submission.errors import StageError
from harness.submission.rounds import REFERENCE_MODEL, Round
from harness.submission.runs import Selection, discover, select
from harness.submission.test06 import verify_test06
from harness.submission.truncate import stage_accuracy_log

logger = logging.getLogger(__name__)

STAGING_LOG = "staging.log"
SRC_PATTERNS = ("*.py", "*.yaml", "*.md", "*.toml", "Makefile")
WEIGHTS = {
    "Dense": ("bf16", "none (original weights)"),
    "FP8": ("fp8", "quantization"),
    "Sparse": ("fp8", "quantization, 2:4 structured sparsity (magnitude pruning)"),
    "INT8": ("int8", "weight-only quantization"),
    "INT4": ("int4", "weight-only quantization"),
}


@dataclass
class StageOptions:
    log_dir: Path
    output: Path
    round: Round
    submitter: str = ""
    division: str = "auto"
    force: bool = False
    full_results: Path = Path("build/full_results")
    systems_dir: Path = Path("systems")
    repo_root: Path | None = None  # copied into src/ when given
    command: str = ""  # the staging command line, for the READMEs


@dataclass
class StageReport:
    staged: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    test06_failures: list[str] = field(default_factory=list)


def load_system_yaml(systems_dir: Path, name: str) -> dict[str, Any]:
    path = systems_dir / f"{name}.yaml"
    if not path.is_file():
        logger.warning("%s not found; systems/%s.json uses detected values only", path, name)
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise StageError(str(path), "not a YAML mapping", "fix the system YAML")
    facts = data.get("system")  # the facts may sit under `system:` or at the top level
    if isinstance(facts, dict):
        data = {**{k: v for k, v in data.items() if k != "system"}, **facts}
    return data


def _scenario_dir(opts: StageOptions, sel: Selection, submitter: str) -> Path:
    system, bench, scenario = sel.key
    return opts.output / sel.division / submitter / "results" / system / bench / scenario


def _is_staged(target: Path, sel: Selection) -> bool:
    if (target / "performance").exists() or (target / "accuracy").exists():
        return True
    return sel.audit is not None and (target / "TEST06").exists()


def _log(opts: StageOptions, message: str) -> None:
    opts.full_results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with (opts.full_results / STAGING_LOG).open("a") as f:
        f.write(f"{stamp} {message}\n")


def _clear_for_restage(opts: StageOptions, target: Path, force: bool) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    keep = opts.full_results / "replaced" / stamp / target.relative_to(opts.output)
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(target), str(keep))
    message = f"--force={force}: replaced staged {target}; previous copy kept at {keep}"
    logger.warning(message)
    _log(opts, message)


def _readme(sel: Selection, opts: StageOptions, report_lines: list[str]) -> str:
    system, bench, scenario = sel.key
    lines = [f"# {bench} {scenario} on {system} ({sel.division}, round {opts.round.version})", ""]
    lines.append(f"harness_test_run: {'true' if sel.is_test_run else 'false'}")
    if sel.is_test_run:
        lines += [
            "",
            "**Test run** (`--test_run`): a shortened run. It shows the pipeline works;",
            "it is not a valid result for an official submission.",
        ]
    lines += ["", "## Commands to reproduce", ""]
    steps = [("Performance run", sel.perf), ("Accuracy run", sel.accuracy)]
    if sel.audit is not None:
        steps.append(("TEST06 run (audit.config copied into the run directory)", sel.audit))
    for title, run in steps:
        lines += [f"{title}:", "", "```", str(run.info.get("command", "(not recorded)")), "```", ""]
    if sel.audit is not None:
        lines += [
            "TEST06 verification (done by staging; standalone equivalent):",
            "",
            "```",
            f"audit_verify --run_dir {sel.audit.path} --output_dir <this directory> "
            f"--scenario {scenario} --eos_token_id {sel.audit.info.get('eos_token_id', 2)} "
            "--dtype int32",
            "```",
            "",
        ]
    if opts.command:
        lines += [
            "Staging (truncation, TEST06 verification, this tree):",
            "",
            "```",
            opts.command,
            "```",
            "",
        ]
    lines += ["## Source logs", ""] + [f"- {line}" for line in report_lines] + [""]
    return "\n".join(lines)


def _measurements(sel: Selection, system_yaml: dict[str, Any]) -> dict[str, Any]:
    info = sel.perf.info
    weight_types, transforms = WEIGHTS.get(info.get("model_opt", ""), ("bf16", "none"))
    if info.get("fp8_dense_layers"):  # engine.fp8_dense_layers: say which layers stayed dense
        transforms += f"; decoder layers {info['fp8_dense_layers']} not quantized"
    model_path = str(info.get("model_path") or "")
    values = {
        "input_data_types": "int32",
        "retraining": "No",
        "starting_weights_filename": Path(model_path).name or "Original Huggingface model weights",
        "weight_data_types": weight_types,
        "weight_transformations": transforms,
    }
    extra = (system_yaml.get("submission") or {}).get("measurements") or {}
    values.update(extra if isinstance(extra, dict) else {})
    return values


def _stage_one(
    opts: StageOptions, sel: Selection, submitter: str, system_yaml: dict, report: StageReport
) -> Path:
    target = _scenario_dir(opts, sel, submitter)
    rel = target.relative_to(opts.output)
    run1 = target / "performance" / "run_1"
    run1.mkdir(parents=True)
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copy2(sel.perf.path / name, run1 / name)
    acc_dir = target / "accuracy"
    acc_dir.mkdir()
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "accuracy.txt"):
        shutil.copy2(sel.accuracy.path / name, acc_dir / name)
    digest = stage_accuracy_log(
        sel.accuracy.path / "mlperf_log_accuracy.json",
        acc_dir / "accuracy.txt",
        acc_dir / "mlperf_log_accuracy.json",
        opts.full_results / rel / "accuracy",
    )
    shutil.copy2(acc_dir / "accuracy.txt", opts.full_results / rel / "accuracy" / "accuracy.txt")
    notes = [
        f"performance: `{sel.perf.path}` ({sel.perf.info.get('started_at', '?')})",
        f"accuracy: `{sel.accuracy.path}` (full log sha256 {digest}, kept in "
        f"`{opts.full_results / rel / 'accuracy'}`)",
    ]
    if sel.perf_invalid_reasons:
        notes.append(f"performance run is INVALID: {', '.join(sel.perf_invalid_reasons)} not met")
    if sel.audit is not None:
        result = verify_test06(
            sel.audit.path, target, sel.key[2], int(sel.audit.info.get("eos_token_id", 2))
        )
        notes.append(f"TEST06: `{sel.audit.path}` ({'pass' if result.passed else 'FAIL'})")
        if not result.passed:
            report.test06_failures.append(f"{rel}: " + "; ".join(result.failures[:3]))
    user_conf = sel.perf.path / "user.conf"
    if user_conf.is_file():
        shutil.copy2(user_conf, target / "user.conf")
    else:
        report.warnings.append(f"{sel.perf.path}/user.conf missing; {rel}/user.conf not staged")
    measurements = _measurements(sel, system_yaml)
    (target / "measurements.json").write_text(json.dumps(measurements, indent=2) + "\n")
    (target / "README.md").write_text(_readme(sel, opts, notes))
    return target


def _write_system_json(path: Path, desc: dict[str, Any]) -> None:
    if path.is_file():
        # Keep what a person filled in by hand; add only what is absent or empty.
        existing = json.loads(path.read_text())
        desc = {**desc, **{k: v for k, v in existing.items() if v not in ("", None)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(desc, indent=2) + "\n")


def _write_src(opts: StageOptions, sub_root: Path) -> None:
    src = sub_root / opts.round.code_dir
    src.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Source code",
        "",
        "The harness that produced these results (python package "
        "`harness`, LoadGen `mlcommons-loadgen`).",
    ]
    root = opts.repo_root
    if root is not None and (root / "harness").is_dir():
        for sub in ("harness", "preprocess", "configs", "systems"):
            if (root / sub).is_dir():
                dst = src / "harness" / sub
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(root / sub, dst, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "Makefile", "README.md"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / "harness" / name)
        lines.append("A copy is in `harness/`.")
    (src / "README.md").write_text("\n".join(lines) + "\n")


def stage(opts: StageOptions) -> StageReport:
    """Stage every (system, benchmark, scenario) found under `opts.log_dir`."""
    report = StageReport()
    selections = select(discover(opts.log_dir), opts.division)
    detected = sysinfo.detect_all()
    systems: dict[tuple[str, str], tuple[dict, dict]] = {}
    problems = []
    for sel in selections:
        system = sel.key[0]
        system_yaml = load_system_yaml(opts.systems_dir, system)
        submitter = opts.submitter or str(system_yaml.get("submitter") or "")
        if not submitter:
            raise StageError(
                f"{opts.systems_dir}/{system}.yaml",
                "no submitter",
                "pass --submitter ORG or set `submitter:` in the YAML",
            )
        desc, missing = sysinfo.build_system_json(system_yaml, sel.division, submitter, detected)
        if missing:
            problems.append(f"systems/{system}.json ({sel.division}) lacks {missing}")
        systems[(sel.division, system)] = (desc, system_yaml)
        if sel.key[1] == f"{REFERENCE_MODEL}-99" and sel.key[1] not in opts.round.benchmarks:
            report.warnings.append(
                f"{sel.key[1]} is not a benchmark of round "
                f"{opts.round.version}; use --config_ver=high_accuracy"
            )
    if problems:
        raise StageError(
            "system description",
            "; ".join(problems),
            f"add the fields under `submission:` in {opts.systems_dir}/<system>.yaml",
        )
    submitter_of = {k: v[0]["submitter"] for k, v in systems.items()}
    existing = [_scenario_dir(opts, s, submitter_of[(s.division, s.key[0])]) for s in selections]
    clashes = [t for t, s in zip(existing, selections, strict=True) if _is_staged(t, s)]
    if clashes and not opts.force:
        raise StageError(
            str(clashes[0]),
            f"already staged ({len(clashes)} result dirs would be overwritten)",
            "move them away, or pass --force to replace them (the "
            f"old copies are kept under {opts.full_results}/replaced/)",
        )
    for target in clashes:
        _clear_for_restage(opts, target, opts.force)
    for sel, target in zip(selections, existing, strict=True):
        if target.exists():  # only a TEST06/ from audit-verify: keep it, stage the rest around it
            for name in ("measurements.json", "user.conf", "README.md"):
                (target / name).unlink(missing_ok=True)
        sub = submitter_of[(sel.division, sel.key[0])]
        report.staged.append(
            _stage_one(opts, sel, sub, systems[(sel.division, sel.key[0])][1], report)
        )
        _log(opts, f"staged {target} from {sel.perf.path} and {sel.accuracy.path}")
    for (division, system), (desc, _) in systems.items():
        sub_root = opts.output / division / desc["submitter"]
        _write_system_json(sub_root / "systems" / f"{system}.json", desc)
        _write_src(opts, sub_root)
        if division == "closed":
            doc = sub_root / "documentation" / "calibration.md"
            if not doc.exists():
                doc.parent.mkdir(parents=True, exist_ok=True)
                doc.write_text(
                    "# Calibration\n\nFP8 scales are computed on the official "
                    "1000-sample OpenOrca calibration set "
                    "(open_orca_gpt4_tokenized_llama.calibration_1000.pkl).\n"
                )
    _write_model_mappings(opts, selections, submitter_of)
    for warning in report.warnings:
        logger.warning(warning)
    return report


def _write_model_mappings(
    opts: StageOptions, selections: list[Selection], submitter_of: dict[tuple[str, str], str]
) -> None:
    for sel in selections:
        if sel.division != "open":
            continue
        path = opts.output / "open" / submitter_of[("open", sel.key[0])] / "model_mapping.json"
        mapping = json.loads(path.read_text()) if path.is_file() else {}
        bench = sel.key[1]
        if bench not in opts.round.benchmarks:
            mapping[bench] = opts.round.closed_target(bench)
        path.write_text(json.dumps(mapping, indent=2) + "\n")
