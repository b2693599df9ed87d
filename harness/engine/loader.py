"""Fills a model built on the meta device: from HF safetensors, an engine dir, or at random.

Knows checkpoint naming (HF q/k/v and gate/up shards into fused linears); never picks a
precision itself: every linear's quant method decides how a dense weight is stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from harness.engine.model.llama import Linear, LlamaConfig, LlamaForCausalLM
from harness.engine.quant.base import QuantConfig

logger = logging.getLogger(__name__)

_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing files or tensors; the message names them."""


def safetensors_files(folder: Path) -> list[Path]:
    """The shards named by model.safetensors.index.json, else every *.safetensors file."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"no *.safetensors in {folder}; point benchmark.model_path at a HF checkpoint folder"
        )
    return files


def iter_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


@torch.inference_mode()
def load_hf_weights(model: LlamaForCausalLM, folder: Path) -> None:
    """HF names (q_proj, gate_proj, ...) -> our fused params, through each quant method."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    pending = {n for n in params if not _is_linear_param(modules, n)}
    pending_shards = {
        (name, i) for name, m in modules.items() if isinstance(m, Linear)
        for i in range(len(m.output_sizes))
        if not (name == "lm_head" and _is_tied(model))
    }  # fmt: skip
    for name, tensor in iter_tensors(folder):
        if name.endswith(_SKIPPED_SUFFIXES) or (name == "lm_head.weight" and _is_tied(model)):
            continue
        module_path, _, param = name.rpartition(".")
        parent, _, leaf = module_path.rpartition(".")
        if leaf in model.packed_modules and param == "weight":
            fused, shard = model.packed_modules[leaf]
            module_path = f"{parent}.{fused}"
        else:
            shard = 0
        module = modules.get(module_path)
        if isinstance(module, Linear) and param == "weight":
            module.method.load_dense(module, tensor, module.shard_rows(shard))
            pending_shards.discard((module_path, shard))
        elif name in params:
            params[name].copy_(tensor)
            pending.discard(name)
        else:
            raise CheckpointError(f"{folder}: tensor {name!r} has no place in the Llama model")
    _check_complete(folder, pending | {f"{m} shard {i}" for m, i in pending_shards})


@torch.inference_mode()
def load_engine_weights(model: LlamaForCausalLM, folder: Path) -> None:
    """Engine dirs store our own parameter names and formats: a strict one-to-one copy."""
    params = dict(model.named_parameters())
    pending = set(model.checkpoint_state_dict())
    for name, tensor in iter_tensors(folder):
        if name not in params:
            raise CheckpointError(f"{folder}: unexpected tensor {name!r}; rebuild the engine")
        params[name].copy_(tensor)
        pending.discard(name)
    _check_complete(folder, pending)


@torch.inference_mode()
def init_dummy_weights(model: LlamaForCausalLM, seed: int = 0, std: float = 0.02) -> None:
    """Random weights of the real shape, one linear at a time in its final dtype."""
    # Drawn on the model's device: a 70B model's worth of CPU normals would take many minutes.
    device = model.model.embed_tokens.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = model.model.embed_tokens.weight.dtype
    modules = dict(model.named_modules())
    for module in modules.values():
        if isinstance(module, Linear):
            for i in range(len(module.output_sizes)):
                rows = module.shard_rows(i)
                w = torch.empty(rows.stop - rows.start, module.in_features, dtype=dtype,
                                device=device)  # fmt: skip
                module.method.load_dense(module, w.normal_(0.0, std, generator=gen), rows)
    for name, p in model.named_parameters():
        if _is_linear_param(modules, name):
            continue
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:  # embeddings and the output head
            p.copy_(torch.empty_like(p).normal_(0.0, std, generator=gen))


def _is_tied(model: LlamaForCausalLM) -> bool:
    return model.config.tie_word_embeddings


def _is_linear_param(modules: dict[str, torch.nn.Module], name: str) -> bool:
    return isinstance(modules.get(name.rpartition(".")[0]), Linear)


def _check_complete(folder: Path, missing: set[str]) -> None:
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise CheckpointError(
            f"{folder}: {len(missing)} tensors missing (e.g. {shown}); the checkpoint does "
            "not match the model config, re-download or rebuild it"
        )


def build_model(
    config: LlamaConfig,
    quant: QuantConfig,
    dtype: torch.dtype,
    device: torch.device,
    weights: str,
    path: Path | None = None,
    seed: int = 0,
    for_inference: bool = True,
) -> LlamaForCausalLM:
    """Build on the meta device (no memory), materialize once on `device`, then fill.

    weights: "hf" (HF safetensors folder), "engine" (engine dir) or "dummy" (random).
    for_inference=False keeps the checkpoint layout (engine build saves that).
    """
    with torch.device("meta"):
        model = LlamaForCausalLM(config, quant, dtype)
    model = model.to_empty(device=device)
    model.init_buffers(device, dtype)
    if weights == "dummy":
        init_dummy_weights(model, seed)
    elif weights == "hf":
        load_hf_weights(model, Path(path))
    elif weights == "engine":
        load_engine_weights(model, Path(path))
    else:
        raise ValueError(f"weights={weights!r}: use hf, engine or dummy")
    if _is_tied(model):
        model.tie_weights()
    if for_inference:
        model.process_weights_after_loading()
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "model: %.1fM parameters, %s weights, %s on %s", num_params / 1e6, weights, dtype, device
    )
    return model.eval()
