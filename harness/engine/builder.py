"""Engine directories: build one (weights in the chosen format + engine.json) and check one.

An engine is what `make generate_engines --backend=torch` writes and the torch backend loads;
its manifest must match the requested benchmark and model_opt or loading is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from harness.config.schema import HarnessConfig
from harness.engine.llm_engine import (
    DTYPES,
    EngineArgs,
    engine_quant_config,
    resolve_model_config,
)
from harness.engine.loader import build_model

logger = logging.getLogger(__name__)

MANIFEST = "engine.json"
FORMAT_VERSION = 1
SHARD_BYTES = 4 << 30
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "generation_config.json", "vocab.json", "merges.txt",
)  # fmt: skip
QUANTIZATION = {
    "Dense": {"weights": "dense", "activations": "dense"},
    "FP8": {"weights": "float8_e4m3fn per-output-channel fp32 scales", "activations": "dense"},
    "Sparse": {"weights": "float8_e4m3fn per-output-channel fp32 scales", "activations": "dense"},
}


class EngineExistsError(FileExistsError):
    """The engine dir already holds an engine; pass force=True (or --force) to overwrite."""


class EngineManifestError(RuntimeError):
    """An engine dir is missing or was built for other settings; the message says the fix."""


def default_engine_dir(cfg: HarnessConfig) -> Path:
    if cfg.engine.engine_dir:
        return Path(cfg.engine.engine_dir)
    return Path("build/engines") / cfg.system.name / cfg.benchmark.name / cfg.engine.model_opt


def expected_manifest(cfg: HarnessConfig) -> dict[str, Any]:
    """The manifest keys a run needs to match (a run loads only what it asked to build)."""
    return {
        "backend": "torch",
        "format_version": FORMAT_VERSION,
        "benchmark": cfg.benchmark.name,
        "model_opt": cfg.engine.model_opt,
        "dtype": cfg.engine.dtype,
        "dummy_weights": cfg.engine.dummy_weights,
        "fp8_dense_layers": cfg.engine.fp8_dense_layers_applied(),
    }


# Manifest keys that engines built before them lack, with the value those were built with.
MANIFEST_DEFAULTS = {"fp8_dense_layers": ""}


def rebuild_command(cfg: HarnessConfig) -> str:
    args = (
        f"--benchmarks={cfg.benchmark.name} --model_opt={cfg.engine.model_opt} "
        f"--dtype={cfg.engine.dtype} --backend=torch"
    )
    if cfg.engine.dummy_weights:
        args += " --dummy_weights=true"
    if dense := cfg.engine.fp8_dense_layers_applied():
        args += f" --fp8_dense_layers={dense}"
    return f'make generate_engines RUN_ARGS="{args}"'


def build_engine(cfg: HarnessConfig, engine_dir: Path, force: bool = False) -> Path:
    """Write weights (cfg.engine.model_opt format, cfg.engine.dtype) and engine.json."""
    engine_dir = Path(engine_dir)
    if (engine_dir / MANIFEST).exists() and not force:
        raise EngineExistsError(
            f"{engine_dir / MANIFEST} exists; delete {engine_dir} or rebuild with force=True"
        )
    e = cfg.engine
    model_path = Path(cfg.benchmark.model_path)
    weights = "dummy" if e.dummy_weights else "hf"
    args = EngineArgs(
        model_path=str(model_path), weights=weights, model_opt=e.model_opt,
        fp8_dense_layers=e.fp8_dense_layers_applied(),
    )  # fmt: skip
    config = resolve_model_config(args, preset=cfg.benchmark.name)
    device = torch.device("cpu")
    quant = engine_quant_config(args, config, device)  # checks the layers before any write
    if engine_dir.exists() and force:
        shutil.rmtree(engine_dir)
    engine_dir.mkdir(parents=True)
    files: list[str] = []
    if not e.dummy_weights:  # dummy engines are re-randomized at load: no weight files
        model = build_model(
            config, quant, DTYPES[e.dtype], device, "hf", model_path, for_inference=False
        )
        files = _save_sharded(model.checkpoint_state_dict(), engine_dir)
        del model
    tokenizer_files = [n for n in TOKENIZER_FILES if (model_path / n).exists()]
    for name in tokenizer_files:
        shutil.copy2(model_path / name, engine_dir / name)
    (engine_dir / "config.json").write_text(json.dumps(config.to_hf(), indent=2))
    manifest = {
        **expected_manifest(cfg),
        "model_config": config.to_hf(),
        "quantization": QUANTIZATION[e.model_opt],
        "sparsity": "2:4 magnitude-pruned" if e.model_opt == "Sparse" else "none",
        "source_checkpoint": str(model_path),
        "tokenizer_path": str(engine_dir) if tokenizer_files else str(model_path),
        "weight_files": {n: (engine_dir / n).stat().st_size for n in files},
        "checksum": {"sha256": _sha256(engine_dir, files)},
        "build": {
            "torch_version": torch.__version__,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "system": cfg.system.name,
            "block_size": e.block_size,
            "max_num_seqs": e.max_num_seqs,
            "max_num_batched_tokens": e.max_num_batched_tokens,
            "kv_cache_dtype": e.kv_cache_dtype,
        },
    }
    (engine_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("engine written: %s (%s, %s, %d weight files)", engine_dir, e.model_opt, e.dtype,
                len(files))  # fmt: skip
    return engine_dir


def check_engine(cfg: HarnessConfig, engine_dir: Path) -> dict[str, Any]:
    """Read engine.json and refuse it unless it matches what cfg asks for."""
    path = Path(engine_dir) / MANIFEST
    if not path.is_file():
        raise EngineManifestError(f"no engine at {path}; build it with: {rebuild_command(cfg)}")
    manifest = json.loads(path.read_text())
    for key, wanted in expected_manifest(cfg).items():
        found = manifest.get(key, MANIFEST_DEFAULTS.get(key))
        if found != wanted:
            raise EngineManifestError(
                f"{path}: {key} is {found!r}, this run wants {wanted!r}; rebuild with: "
                f"{rebuild_command(cfg)} (add --force to overwrite {engine_dir})"
            )
    for name, size in manifest.get("weight_files", {}).items():
        actual = (
            (Path(engine_dir) / name).stat().st_size if (Path(engine_dir) / name).exists() else -1
        )
        if actual != size:
            raise EngineManifestError(
                f"{path}: weight file {name} has {actual} bytes, manifest says {size}; the "
                f"engine is incomplete, rebuild with: {rebuild_command(cfg)}"
            )
    return manifest


def _save_sharded(state: dict[str, torch.Tensor], engine_dir: Path) -> list[str]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        if size and size + t.nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += t.nbytes
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    if n == 1:
        names = ["model.safetensors"]
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(engine_dir / name), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"weight_map": {k: n for n, s in zip(names, shards, strict=True) for k in s}}
        (engine_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return names


def _sha256(folder: Path, files: list[str]) -> str:
    h = hashlib.sha256()
    for name in files:
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()
