"""`make generate_engines --backend=trtllm`: plan, run and record a TensorRT-LLM build.

PyTorch runtime: a ModelOpt FP8 HF checkpoint (or the HF checkpoint itself for Dense).
Engine runtime (1.2.x): quantize.py then trtllm-build. Every step is a command line, run with
subprocess and written into engine.json; tensorrt_llm itself is never imported here.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.base import BackendError
from harness.backends.trtllm_config import (
    MAX_INPUT_LEN,
    RUNTIME_ENV,
    max_seq_len,
    pipeline_parallelism,
    resolve_runtime,
    translate,
    validate,
)
from harness.backends.trtllm_version import (
    RUNTIME_ENGINE,
    RUNTIME_PYTORCH,
    TESTED_VERSION,
    require_modelopt,
    require_trtllm,
)
from harness.config.schema import HarnessConfig

logger = logging.getLogger(__name__)

MANIFEST = "engine.json"
FORMAT_VERSION = 1
SUBDIR = "trtllm"  # beside a torch engine of the same model_opt: <engine_dir>/trtllm
CALIB_SIZE = 1024  # NVIDIA's quantize.py --calib_size for llama2-70b
QUANTIZE_SCRIPT_ENV = "HARNESS_TRTLLM_QUANTIZE_SCRIPT"
DEFAULT_QUANTIZE_SCRIPT = "build/TRTLLM/examples/quantization/quantize.py"  # NVIDIA's layout
QUANTIZE_SCRIPT_FIX = (
    f"git clone --depth 1 --branch v{TESTED_VERSION} https://github.com/NVIDIA/TensorRT-LLM "
    f"build/TRTLLM && pip install -r build/TRTLLM/examples/quantization/requirements.txt "
    f"(or point {QUANTIZE_SCRIPT_ENV} at quantize.py)"
)
# What the weights become, by (runtime, model_opt): quantize.py --qformat / ModelOpt config.
QFORMAT = {"Dense": "full_prec", "FP8": "fp8", "Sparse": "fp8"}

Runner = Callable[[list[str], Path], int]  # (argv, log file) -> exit status


class TrtllmBuildError(BackendError):
    """An engine build cannot start or one of its steps failed; the message says the fix."""


class TrtllmEngineExistsError(TrtllmBuildError):
    """The trtllm engine dir already exists; pass --force to rebuild it."""


class TrtllmManifestError(BackendError):
    """A trtllm engine dir is missing or was built for other settings."""


@dataclass(frozen=True)
class BuildStep:
    name: str
    argv: list[str]
    log: str  # file name under <engine dir>/logs/


@dataclass(frozen=True)
class BuildPlan:
    runtime: str
    model: Path  # what LLM(model=...) loads: an HF checkpoint dir or an engine dir
    checkpoint_dir: Path
    engine_subdir: Path | None  # engine runtime only
    steps: list[BuildStep] = field(default_factory=list)


def trtllm_engine_dir(engine_dir: Path) -> Path:
    return Path(engine_dir) / SUBDIR


def engine_base_dir(cfg: HarnessConfig) -> Path:
    """The CLI's engine dir for cfg (--engine_dir, or build/engines/<system>/<bench>/<opt>)."""
    from harness.engine.builder import default_engine_dir

    return default_engine_dir(cfg)


def calibration_dir(cfg: HarnessConfig) -> Path:
    return Path(cfg.benchmark.preprocessed_dir) / "calibration"


def quantize_script() -> Path:
    return Path(os.environ.get(QUANTIZE_SCRIPT_ENV, "") or DEFAULT_QUANTIZE_SCRIPT)


def rebuild_command(cfg: HarnessConfig, runtime: str) -> str:
    e = cfg.engine
    args = (
        f"--benchmarks={cfg.benchmark.name} --backend=trtllm --model_opt={e.model_opt} "
        f"--dtype={e.dtype} --kv_cache_dtype={e.kv_cache_dtype} "
        f"--tensor_parallelism={e.tensor_parallelism} --max_num_seqs={e.max_num_seqs} "
        f"--max_num_batched_tokens={e.max_num_batched_tokens}"
    )
    if e.dummy_weights:
        args += " --dummy_weights=true"
    return f'{RUNTIME_ENV}={runtime} make generate_engines RUN_ARGS="{args} --force"'


def plan_build(cfg: HarnessConfig, out_dir: Path, runtime: str) -> BuildPlan:
    """The command lines that turn cfg.benchmark.model_path into what `runtime` loads."""
    e = cfg.engine
    source = Path(cfg.benchmark.model_path)
    calib = calibration_dir(cfg)
    tp, pp = e.tensor_parallelism, pipeline_parallelism(cfg)
    kv_fp8 = e.kv_cache_dtype == "fp8"
    py = sys.executable
    if runtime == RUNTIME_PYTORCH:
        if e.model_opt == "Dense" or e.dummy_weights:  # PyTorch loads the HF checkpoint as is
            return BuildPlan(runtime, source, source, None)
        ckpt = out_dir / "checkpoint-fp8-hf"
        argv = [py, "-m", "harness.backends.trtllm_modelopt", "fp8-checkpoint",
                "--model_dir", str(source), "--calib_dir", str(calib), "--output_dir", str(ckpt),
                "--dtype", e.dtype, "--calib_size", str(CALIB_SIZE),
                "--calib_max_seq_length", str(MAX_INPUT_LEN)]  # fmt: skip
        if kv_fp8:
            argv += ["--kv_cache_dtype", "fp8"]
        return BuildPlan(
            runtime, ckpt, ckpt, None, [BuildStep("modelopt_fp8", argv, "modelopt.log")]
        )

    qformat = QFORMAT[e.model_opt]
    ckpt = out_dir / f"checkpoint-{qformat}-tp{tp}pp{pp}"
    engine = out_dir / "engine"
    calib_text = out_dir / "calibration-text"
    steps = []
    needs_calibration = qformat != "full_prec" or kv_fp8
    if needs_calibration:  # quantize.py reads a local dataset dir with a "text" column
        steps.append(BuildStep("calibration_text", [
            py, "-m", "harness.backends.trtllm_modelopt", "calib-text", "--calib_dir", str(calib),
            "--tokenizer_dir", str(source), "--output_dir", str(calib_text),
            "--calib_size", str(CALIB_SIZE)], "calibration_text.log"))  # fmt: skip
    quantize = [py, str(quantize_script()), "--model_dir", str(source), "--dtype", e.dtype,
                "--qformat", qformat, "--output_dir", str(ckpt), "--tp_size", str(tp),
                "--pp_size", str(pp)]  # fmt: skip
    if kv_fp8:
        quantize += ["--kv_cache_dtype", "fp8"]
    if needs_calibration:
        quantize += ["--calib_size", str(CALIB_SIZE), "--calib_dataset", str(calib_text)]
    steps.append(BuildStep("quantize", quantize, "quantize.log"))
    steps.append(BuildStep("trtllm_build", trtllm_build_argv(cfg, ckpt, engine), "build.log"))
    return BuildPlan(runtime, engine, ckpt, engine, steps)


def trtllm_build_argv(cfg: HarnessConfig, checkpoint: Path, engine: Path) -> list[str]:
    """trtllm-build flags as NVIDIA's llama2-70b configs use them (v4.1 builder, v5.x dicts)."""
    e = cfg.engine
    t = translate(cfg)
    world = e.tensor_parallelism * pipeline_parallelism(cfg)
    argv = [
        "trtllm-build", "--checkpoint_dir", str(checkpoint), "--output_dir", str(engine),
        "--max_batch_size", str(t["max_batch_size"]), "--max_num_tokens", str(t["max_num_tokens"]),
        "--max_input_len", str(MAX_INPUT_LEN), "--max_seq_len", str(max_seq_len(cfg)),
        "--max_beam_width", "1",
        "--gpt_attention_plugin", "auto",
        "--context_fmha", "enable", "--use_paged_context_fmha", "enable",
        "--remove_input_padding", "enable",
        "--kv_cache_type", "paged",  # the non-deprecated spelling of --paged_kv_cache enable
        "--tokens_per_block", str(t["kv_cache_config.tokens_per_block"]),
        "--use_fused_mlp", "enable",
        "--multiple_profiles", "enable",
        "--workers", str(world),
    ]  # fmt: skip
    if e.model_opt in ("FP8", "Sparse"):
        argv += ["--gemm_swiglu_plugin", "fp8"]  # Hopper FP8 fused matmul + SwiGLU
        if e.kv_cache_dtype == "fp8":
            argv += ["--use_fp8_context_fmha", "enable"]
    if e.model_opt == "Sparse":
        argv += ["--weight_sparsity"]  # weights must already be 2:4; this picks sparse tactics
    if world > 1:
        argv += ["--reduce_fusion", "enable"]
    return argv


def expected_manifest(cfg: HarnessConfig) -> dict[str, Any]:
    """The manifest keys a run needs to match (a run loads only what it asked to build)."""
    e = cfg.engine
    return {
        "backend": "trtllm",
        "format_version": FORMAT_VERSION,
        "benchmark": cfg.benchmark.name,
        "model_opt": e.model_opt,
        "dtype": e.dtype,
        "dummy_weights": e.dummy_weights,
        "kv_cache_dtype": e.kv_cache_dtype,
        "tensor_parallelism": e.tensor_parallelism,
        "pipeline_parallelism": pipeline_parallelism(cfg),
    }


def preflight_build(cfg: HarnessConfig, plan: BuildPlan) -> dict[str, str]:
    """Everything a build needs, checked before any directory is touched; returns versions."""
    versions = {"tensorrt_llm": require_trtllm(plan.runtime)}
    names = {s.name for s in plan.steps}
    if "modelopt_fp8" in names:
        versions["nvidia_modelopt"] = require_modelopt()
    source = Path(cfg.benchmark.model_path)
    if not (source / "config.json").is_file():
        raise TrtllmBuildError(
            f"{source}: no HF checkpoint (config.json missing); run `make preprocess_data "
            f"BENCHMARKS={cfg.benchmark.name}` or pass --model_path=<dir>"
        )
    if names & {"modelopt_fp8", "calibration_text"}:
        calib = calibration_dir(cfg)
        missing = [
            n for n in ("input_ids_padded.npy", "input_lens.npy") if not (calib / n).is_file()
        ]
        if missing:
            raise TrtllmBuildError(
                f"{calib}: calibration set missing ({', '.join(missing)}); run `make "
                f"preprocess_data BENCHMARKS={cfg.benchmark.name}` first"
            )
    if "quantize" in names and not quantize_script().is_file():
        raise TrtllmBuildError(f"{quantize_script()}: TensorRT-LLM's quantize.py not found; "
                               f"fix: {QUANTIZE_SCRIPT_FIX}")  # fmt: skip
    if cfg.engine.model_opt == "Sparse":
        logger.warning("model_opt=Sparse: %s must already be 2:4-pruned (ModelOpt "
                       "sparsity + fine-tuning); --weight_sparsity only enables sparse kernels",
                       source)  # fmt: skip
    return versions


def run_subprocess(argv: list[str], log: Path) -> int:
    if argv[0] == "trtllm-build" and shutil.which("trtllm-build") is None:
        argv = [sys.executable, "-m", "tensorrt_llm.commands.build", *argv[1:]]
    with open(log, "w") as f:
        return subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


def build_trtllm_engine(
    cfg: HarnessConfig,
    engine_dir: Path,
    force: bool = False,
    runtime: str | None = None,
    runner: Runner | None = None,
) -> Path:
    """Build into <engine_dir>/trtllm and write its engine.json; returns that directory."""
    runtime = resolve_runtime(cfg, runtime)
    validate(cfg, runtime)
    out = trtllm_engine_dir(engine_dir)
    plan = plan_build(cfg, out, runtime)
    versions = preflight_build(cfg, plan)
    if out.exists():
        if not force:
            raise TrtllmEngineExistsError(
                f"{out} exists ({_describe_existing(cfg, out)}); keep it, delete it, or rebuild "
                f"with --force"
            )
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    run = runner or run_subprocess
    commands = []
    for step in plan.steps:
        log = out / "logs" / step.log
        logger.info("trtllm build step %s: %s", step.name, " ".join(step.argv))
        start = time.perf_counter()
        status = run(step.argv, log)
        seconds = round(time.perf_counter() - start, 1)
        commands.append({"name": step.name, "argv": step.argv, "log": str(log),
                         "seconds": seconds})  # fmt: skip
        if status != 0:
            raise TrtllmBuildError(
                f"trtllm build step {step.name} exited with {status}: {' '.join(step.argv)}; "
                f"read {log}; fix the cause, then rebuild with: {rebuild_command(cfg, runtime)}"
            )
    manifest = {
        **expected_manifest(cfg),
        "runtime": runtime,
        "versions": versions,
        "model": str(plan.model),
        "checkpoint_dir": str(plan.checkpoint_dir),
        "engine_subdir": str(plan.engine_subdir) if plan.engine_subdir else None,
        "source_checkpoint": cfg.benchmark.model_path,
        "quantization": {
            "weights": QFORMAT[cfg.engine.model_opt],
            "kv_cache": cfg.engine.kv_cache_dtype,
        },
        "sparsity": "2:4 (--weight_sparsity)" if cfg.engine.model_opt == "Sparse" else "none",
        "knobs": translate(cfg),
        "build": {
            "max_batch_size": cfg.engine.max_num_seqs,
            "max_num_tokens": cfg.engine.max_num_batched_tokens,
            "max_input_len": MAX_INPUT_LEN,
            "max_seq_len": max_seq_len(cfg),
            "system": cfg.system.name,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        "commands": commands,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("trtllm engine written: %s (%s runtime, %s)", out, runtime, cfg.engine.model_opt)
    return out


def _describe_existing(cfg: HarnessConfig, out: Path) -> str:
    try:
        check_trtllm_dir(cfg, out)
        return "an engine that matches this config"
    except TrtllmManifestError as err:
        return f"not usable for this config: {err}"


def check_trtllm_engine(cfg: HarnessConfig, engine_dir: Path) -> dict[str, Any]:
    """Read <engine_dir>/trtllm/engine.json and refuse it unless it matches cfg."""
    return check_trtllm_dir(cfg, trtllm_engine_dir(engine_dir))


def check_trtllm_dir(cfg: HarnessConfig, out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    runtime = resolve_runtime(cfg)
    if not path.is_file():
        raise TrtllmManifestError(
            f"no trtllm engine at {path}; build it with: {rebuild_command(cfg, runtime)}"
        )
    manifest = json.loads(path.read_text())
    runtime = manifest.get("runtime", runtime)
    for key, wanted in expected_manifest(cfg).items():
        if manifest.get(key) != wanted:
            raise TrtllmManifestError(
                f"{path}: {key} is {manifest.get(key)!r}, this run wants {wanted!r}; rebuild "
                f"with: {rebuild_command(cfg, runtime)}"
            )
    if runtime == RUNTIME_ENGINE:  # limits are baked into the engine; the run may not exceed
        built = manifest.get("build", {})
        for ours, theirs in (("max_num_seqs", "max_batch_size"),
                             ("max_num_batched_tokens", "max_num_tokens")):  # fmt: skip
            if getattr(cfg.engine, ours) > built.get(theirs, 0):
                raise TrtllmManifestError(
                    f"{path}: engine built with {theirs}={built.get(theirs)}, this run wants "
                    f"{ours}={getattr(cfg.engine, ours)}; lower it or rebuild with: "
                    f"{rebuild_command(cfg, runtime)}"
                )
    if not Path(manifest.get("model", "")).exists():
        raise TrtllmManifestError(
            f"{path}: model {manifest.get('model')!r} is gone; rebuild with: "
            f"{rebuild_command(cfg, runtime)}"
        )
    return manifest
