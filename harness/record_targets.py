"""Records a benchmark's accuracy targets from an fp32 `hf` reference run, the way MLCommons'
targets come from a reference run: `make record_accuracy_targets RUN_ARGS=...`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from harness.config.loader import repo_root

TARGET_KEYS = ("rouge1", "rouge2", "rougeL", "tokens_per_sample")
REFERENCE_ARGS = ["--backend=hf", "--dtype=float32", "--test_mode=AccuracyOnly"]


def write_targets(benchmark_yaml: Path, scores: dict[str, float]) -> str:
    """Rewrites the `accuracy:` values in place (comments and layout kept); returns the text."""
    text = benchmark_yaml.read_text()
    for key in TARGET_KEYS:
        pattern = re.compile(rf"^(\s+{key}:\s*)[-+0-9.eE]+\s*$", re.MULTILINE)
        text, n = pattern.subn(lambda m, k=key: f"{m.group(1)}{scores[k]}", text, count=1)
        if n != 1:
            raise ValueError(f"{benchmark_yaml}: no `{key}:` line under `accuracy:` to update")
    benchmark_yaml.write_text(text)
    return text


def record_targets(argv: list[str]) -> int:
    from harness.cli import _run_args_action
    from harness.run_args import parse_run_args

    args = parse_run_args(argv)
    if len(args.benchmarks) != 1 or args.scenarios != ["Offline"]:
        raise ValueError("record_accuracy_targets takes one benchmark and --scenarios=Offline")
    log_dir = Path(args.overrides.get("run.log_dir", "build/logs"))
    rc = _run_args_action("run_harness", [*argv, *REFERENCE_ARGS])
    run_dir = (log_dir / "latest").resolve()
    (accuracy_txt,) = run_dir.glob(f"*/{args.benchmarks[0]}/Offline/accuracy.txt")
    scores = ast.literal_eval(accuracy_txt.read_text().splitlines()[0])
    yaml_path = repo_root() / "configs" / args.benchmarks[0] / "benchmark.yaml"
    write_targets(yaml_path, scores)
    print(f"recorded {', '.join(f'{k}={scores[k]}' for k in TARGET_KEYS)} into {yaml_path}")
    print(f"from the fp32 hf reference run in {accuracy_txt.parent}")
    return 0 if rc in (0, 1) else rc
