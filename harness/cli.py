"""`python -m harness <action>`: the only place that wires the packages together.

Actions follow NVIDIA's make targets (preprocess_data, generate_engines, run_harness,
run_audit_harness, stage_results, check_submission) plus accuracy, bench and default.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness.accuracy.errors import AccuracyInputError
from harness.backends.base import BackendError
from harness.config.loader import ConfigError, load_config
from harness.config.schema import HarnessConfig
from harness.config.system_detect import detect_system
from harness.run_args import RunArgs, parse_run_args

if TYPE_CHECKING:
    from harness.dataset import Dataset

logger = logging.getLogger("harness")
ACTIONS = (
    "default",
    "preprocess_data",
    "generate_engines",
    "run_harness",
    "run_audit_harness",
    "record_accuracy_targets",
    "accuracy",
    "bench",
    "stage_results",
    "check_submission",
    "serve",
)


class UserError(RuntimeError):
    """Bad input found before long work: printed as one `error:` line, exit 2."""


# Named errors that carry their own fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    ConfigError,
    UserError,
    BackendError,
    AccuracyInputError,
    FileNotFoundError,  # DatasetMissingError and friends
    ValueError,  # DatasetFormatError
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def resolve_configs(args: RunArgs) -> list[HarnessConfig]:
    """Every (benchmark, scenario) config, all validated before any work starts."""
    system = args.system_name or detect_system()
    overrides = dict(args.overrides)
    return [
        load_config(bench, scenario, system, overrides, test_run=args.test_run)
        for bench in args.benchmarks
        for scenario in args.scenarios
    ]


def engine_dir(cfg: HarnessConfig) -> Path:
    from harness.engine.builder import default_engine_dir

    return default_engine_dir(cfg)


# ---------------------------------------------------------------- preprocess_data


def preprocess_data(cfg: HarnessConfig, force: bool) -> None:
    from preprocess.open_orca import preprocess

    b = cfg.benchmark
    if b.name == "smollm2-135m":  # the built-in default is built from registry packages
        from preprocess.default_dataset import build_default_pickle
        from preprocess.smollm2_checkpoint import build_checkpoint

        build_checkpoint(Path(b.model_path))
        build_default_pickle(Path(b.model_path), Path(b.dataset_path))
    calibration = Path(b.calibration_path) if b.calibration_path else None
    preprocess(Path(b.dataset_path), Path(b.preprocessed_dir), calibration, force=force)
    from harness.accuracy.punkt import ensure_punkt

    ensure_punkt(None)


# ---------------------------------------------------------------- generate_engines


def generate_engine(cfg: HarnessConfig, force: bool) -> None:
    backend = cfg.engine.backend
    if backend in ("hf", "openai"):
        where = "the checkpoint itself" if backend == "hf" else "the server's model"
        print(f"{cfg.benchmark.name}: the {backend} backend runs {where}; no engine to build")
        return
    if backend == "trtllm":
        from harness.backends.trtllm_build import build_trtllm_engine

        path = build_trtllm_engine(cfg, engine_dir(cfg), force=force)
        print(f"{cfg.benchmark.name} {cfg.engine.model_opt}: trtllm engine at {path}")
        return
    from harness.engine.builder import EngineManifestError, build_engine, check_engine

    path = engine_dir(cfg)
    try:
        if (path / "engine.json").is_file() and not force:
            check_engine(cfg, path)  # a mismatching engine is refused with the rebuild command
            print(f"{cfg.benchmark.name}: engine at {path} kept (--force rebuilds it)")
            return
        build_engine(cfg, path, force=force)
    except EngineManifestError as e:
        raise UserError(str(e)) from e
    print(f"{cfg.benchmark.name} {cfg.engine.model_opt}: engine at {path}")


# ---------------------------------------------------------------- run_harness


def make_backend(cfg: HarnessConfig):  # -> Backend
    if cfg.engine.backend == "hf":
        from harness.backends.hf import HFBackend

        return HFBackend.from_config(cfg)
    e = cfg.engine
    if e.backend == "torch" and e.data_parallelism > 1:
        from harness.backends.data_parallel import DataParallelBackend

        return DataParallelBackend.from_config(cfg, engine_dir(cfg))
    if e.backend == "torch" and e.tensor_parallelism > 1:  # its own process: a dead rank ends it
        from harness.backends.process_backend import ProcessBackend

        return ProcessBackend.from_config(cfg, engine_dir(cfg))
    if cfg.engine.backend == "torch":
        from harness.backends.torch_backend import TorchBackend

        return TorchBackend.from_config(cfg, engine_dir(cfg))
    if cfg.engine.backend == "openai":  # no engine dir: the server holds the model
        from harness.backends.openai import OpenAIBackend

        return OpenAIBackend.from_config(cfg)
    from harness.backends.trtllm import TrtllmBackend

    return TrtllmBackend.from_config(cfg, engine_dir(cfg))


def check_model_len(cfg: HarnessConfig, data: Dataset) -> None:
    """engine.max_model_len (when set) holds the dataset's longest prompt + max_new_tokens."""
    limit = cfg.engine.max_model_len
    need = int(data.input_lens.max()) + cfg.benchmark.max_new_tokens if len(data) else 0
    if limit and need > limit:
        raise UserError(
            f"engine.max_model_len = {limit}: {cfg.benchmark.preprocessed_dir} has a prompt of "
            f"{need - cfg.benchmark.max_new_tokens} tokens, + benchmark.max_new_tokens "
            f"{cfg.benchmark.max_new_tokens} = {need}; set --max_model_len={need} or more, or 0 "
            "(the model's positions)"
        )


def preflight(cfg: HarnessConfig) -> None:
    """Missing inputs fail here, in seconds, not at minute nine of a run."""
    from harness.dataset import Dataset

    data = Dataset.load(Path(cfg.benchmark.preprocessed_dir))  # raises with the fix
    check_model_len(cfg, data)
    if (
        not cfg.engine.dummy_weights
        and not (Path(cfg.benchmark.model_path) / "config.json").is_file()
    ):
        raise UserError(
            f"{cfg.benchmark.model_path}: no checkpoint (config.json missing); run "
            f"`make preprocess_data BENCHMARKS={cfg.benchmark.name}` or pass --model_path=<dir>"
        )
    if cfg.engine.backend == "openai":  # the server answers and serves the model
        from harness.backends.openai import check_endpoint

        check_endpoint(cfg)
    if cfg.engine.backend == "torch":
        from harness.engine.builder import EngineManifestError, check_engine

        try:  # missing or built for other settings: refused before LoadGen starts
            check_engine(cfg, engine_dir(cfg))
        except EngineManifestError as e:
            raise UserError(str(e)) from e
    if cfg.run.test_mode == "AccuracyOnly":
        if cfg.engine.dummy_weights:
            raise UserError("--dummy_weights measures speed only; AccuracyOnly needs real weights")
        from harness.accuracy.punkt import ensure_punkt

        ensure_punkt(None)


def score_accuracy(cfg: HarnessConfig, run_dir: Path) -> bool:
    from harness.accuracy.scorer import score_log
    from harness.accuracy.verdict import judge, write_accuracy_txt

    result = score_log(
        run_dir / "mlperf_log_accuracy.json",
        Path(cfg.benchmark.preprocessed_dir),
        Path(cfg.benchmark.model_path),
    )
    write_accuracy_txt(result, run_dir / "accuracy.txt")
    print(f"\nResults\n\n{result.as_dict()}")
    if not cfg.benchmark.accuracy.tokens_per_sample:
        print(
            f"{cfg.benchmark.name}: no accuracy targets recorded yet; run "
            "`make record_accuracy_targets` (fp32 hf reference) to record them"
        )
        return True
    verdict = judge(result, cfg.benchmark.accuracy, cfg.run.config_ver, cfg.benchmark.name)
    print(verdict.line)
    return verdict.passed


def run_one(run_dir: Path, command: str) -> int:
    """One LoadGen test in this process (LoadGen allows one FromConfig per process)."""
    from harness.config.loader import load_resolved
    from harness.dataset import Dataset
    from harness.loadgen.runner import run_loadgen

    cfg = load_resolved(run_dir / "config.yaml")
    dataset = Dataset.load(Path(cfg.benchmark.preprocessed_dir), cfg.run.sample_limit)
    backend = make_backend(cfg)
    start = time.perf_counter()
    result = run_loadgen(cfg, backend, dataset, run_dir, command)
    elapsed = time.perf_counter() - start
    head = f"\n{cfg.benchmark.name} {cfg.scenario.scenario} {cfg.run.test_mode} "
    head += f"[{cfg.engine.backend}, {cfg.system.name}]: "
    if cfg.run.test_mode == "PerformanceOnly":  # LoadGen judges validity in this mode only
        validity = "VALID" if result.valid else "INVALID"
        head += f"Result is : {validity}, {result.tokens_per_second:.1f} tokens/s, "
    print(
        f"{head}{result.num_errors} LoadGen errors, {elapsed:.0f} s; logs in {run_dir}",
        flush=True,
    )
    ok = result.num_errors == 0
    if cfg.run.test_mode == "AccuracyOnly":
        ok = score_accuracy(cfg, run_dir) and ok
    else:
        ok = ok and result.valid
    return 0 if ok else 1


def run_harness(configs: list[HarnessConfig], command: str) -> bool:
    """Each (benchmark, scenario) runs LoadGen in a child process of its own."""
    from harness.config.loader import to_yaml
    from harness.loadgen.logs import new_timestamp_dir

    for cfg in configs:
        preflight(cfg)
    stamp = new_timestamp_dir(Path(configs[0].run.log_dir))
    ok = True
    for cfg in configs:
        run_dir = stamp / cfg.system.name / cfg.benchmark.name / cfg.scenario.scenario
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        if cfg.run.audit_config:
            shutil.copyfile(cfg.run.audit_config, run_dir / "audit.config")
        child = [sys.executable, "-m", "harness", "_run_one", str(run_dir), command]
        ok = subprocess.call(child) == 0 and ok
    return ok


# ---------------------------------------------------------------- default (the main job)


def run_default(argv: list[str]) -> int:
    """Built-in default end to end: preprocess, engine, Offline performance + accuracy."""
    start = time.perf_counter()
    steps = [
        ("preprocess_data", []),
        ("generate_engines", []),
        ("run_harness", ["--test_mode=PerformanceOnly"]),
        ("run_harness", ["--test_mode=AccuracyOnly"]),
    ]
    ok = True
    for action, extra in steps:
        print(f"\n=== make {action} {' '.join(extra + argv)}", flush=True)
        rc = _run_args_action(action, [*argv, *extra])
        if rc == 2:
            return rc
        ok = ok and rc == 0
    verdict = "OK" if ok else "FAILED"
    print(f"\ndefault flow finished in {time.perf_counter() - start:.0f} s: {verdict}")
    return 0 if ok else 1


# ---------------------------------------------------------------- dispatch


def _run_args_action(action: str, argv: list[str]) -> int:
    args = parse_run_args(argv)
    _setup_logging(args.verbose)
    command = "python -m harness " + shlex.join([action, *argv])
    if action == "preprocess_data":
        for cfg in resolve_configs(args):
            preprocess_data(cfg, args.force)
        return 0
    if action == "run_audit_harness" or args.audit_test == "TEST06":
        from harness.submission.test06 import write_audit_config

        audit = Path("build/audit/TEST06/audit.config")
        audit.parent.mkdir(parents=True, exist_ok=True)
        write_audit_config(audit)
        args.overrides["run.audit_config"] = str(audit)
        args.overrides["run.test_mode"] = "PerformanceOnly"  # TEST06 is a performance run
    configs = resolve_configs(args)
    if action == "generate_engines":
        for cfg in configs:
            generate_engine(cfg, args.force)
        return 0
    if action in ("run_harness", "run_audit_harness"):
        return 0 if run_harness(configs, command) else 1
    raise AssertionError(action)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*ACTIONS, "_run_one"):
        print(f"usage: python -m harness {{{','.join(ACTIONS)}}} [RUN_ARGS...]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    action, rest = argv[0], argv[1:]
    try:
        if action == "accuracy":
            from harness.accuracy.cli import main as accuracy_main

            return accuracy_main(rest)
        if action in ("stage_results", "check_submission"):
            from harness.submission import cli as submission_cli

            return (
                submission_cli.stage_main
                if action == "stage_results"
                else submission_cli.check_main
            )(rest)
        if action == "default":
            return run_default(rest)
        if action == "record_accuracy_targets":
            from harness.record_targets import record_targets

            return record_targets(rest)
        if action == "_run_one":  # internal: the child process of run_harness
            _setup_logging(False)
            return run_one(Path(rest[0]), rest[1])
        if action == "serve":
            from harness.serve.server import main as serve_main

            _setup_logging("--verbose" in rest)
            return serve_main([a for a in rest if a != "--verbose"])
        if action == "bench":
            from harness.bench import main as bench_main

            return bench_main(rest)
        return _run_args_action(action, rest)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
