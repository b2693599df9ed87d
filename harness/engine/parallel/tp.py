"""Tensor parallelism as a transformation of a built Llama model (gpt-fast's apply_tp shape).

Column-parallel qkv (whole heads) and gate_up, row-parallel o_proj and down_proj followed by an
all-reduce (a forward hook); embeddings, norms and lm_head stay replicated. No model edits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn

from harness.engine.model.llama import Linear, LlamaConfig, LlamaForCausalLM


class TensorParallelError(ValueError):
    """A model cannot be split this many ways; the message names the sizes and valid TP values."""


@dataclass(frozen=True)
class ShardSpec:
    """Which part of a full (checkpoint-layout) parameter one rank keeps."""

    dim: int  # 0: output rows (column-parallel), 1: input columns (row-parallel)
    ranges: tuple[tuple[int, int], ...]  # (start, length) pieces along dim, concatenated


def valid_tp_sizes(config: LlamaConfig) -> list[int]:
    return [
        n
        for n in range(1, config.num_key_value_heads + 1)
        if config.num_key_value_heads % n == 0 and config.intermediate_size % n == 0
    ]


def check_tp(config: LlamaConfig, tp: int) -> None:
    """Each rank holds whole KV heads (and the query heads that share them)."""
    if tp < 1 or config.num_key_value_heads % tp or config.intermediate_size % tp:
        raise TensorParallelError(
            f"tensor_parallelism={tp} cannot split this model: num_key_value_heads="
            f"{config.num_key_value_heads} and intermediate_size={config.intermediate_size} must "
            f"both be multiples of it (each rank holds whole KV heads); use one of "
            f"{valid_tp_sizes(config)}"
        )


def shard_config(config: LlamaConfig, tp: int) -> LlamaConfig:
    """The per-rank shapes: what the model runner sizes one rank's KV cache from."""
    check_tp(config, tp)
    return replace(
        config,
        num_attention_heads=config.num_attention_heads // tp,
        num_key_value_heads=config.num_key_value_heads // tp,
        intermediate_size=config.intermediate_size // tp,
        extra={**config.extra, "tensor_parallel_size": tp},
    )


def apply_tp(
    model: LlamaForCausalLM, rank: int, world: int, group: dist.ProcessGroup | None = None
) -> dict[str, ShardSpec]:
    """Keep rank `rank`'s shard of every attention/MLP linear, in place; returns the spec of
    each sharded parameter (by name) so that a loader can read just that part of a file.

    Runs on a model in checkpoint layout ([out, in] weights, [out] scales): after weights are
    loaded with for_inference=False, or on the meta device before a sharded load; call
    process_weights_after_loading afterwards. `group` is the all-reduce group (None: world).
    """
    config = model.config
    check_tp(config, world)
    if not 0 <= rank < world:
        raise TensorParallelError(f"rank={rank} is outside tensor_parallelism={world}")
    specs: dict[str, ShardSpec] = {}
    if world == 1:
        return specs
    reduce = _AllReduce(group)
    for i, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{i}"
        attn = layer.self_attn
        d = attn.head_dim
        q_local, kv_local = attn.num_heads // world * d, attn.num_kv_heads // world * d
        specs |= _shard_output(
            attn.qkv_proj, [q_local, kv_local, kv_local], rank, f"{prefix}.self_attn.qkv_proj"
        )
        specs |= _shard_input(attn.o_proj, rank, world, f"{prefix}.self_attn.o_proj")
        attn.num_heads //= world
        attn.num_kv_heads //= world
        attn.attn.num_heads, attn.attn.num_kv_heads = attn.num_heads, attn.num_kv_heads
        mlp = layer.mlp
        inter_local = mlp.gate_up_proj.output_sizes[0] // world
        specs |= _shard_output(
            mlp.gate_up_proj, [inter_local, inter_local], rank, f"{prefix}.mlp.gate_up_proj"
        )
        specs |= _shard_input(mlp.down_proj, rank, world, f"{prefix}.mlp.down_proj")
        attn.o_proj.register_forward_hook(reduce)
        mlp.down_proj.register_forward_hook(reduce)
    model.config = shard_config(config, world)
    return specs


class _AllReduce:
    """Forward hook: sums a row-parallel linear's partial outputs over the TP group."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(output, group=self.group)  # [N, hidden], in place
        return output


def _shard_output(
    linear: Linear, local_sizes: list[int], rank: int, name: str
) -> dict[str, ShardSpec]:
    """Column-parallel: keep this rank's rows of every section of a fused [out, ...] layer."""
    _check_layout(linear, name)
    ranges, start = [], 0
    for full, local in zip(linear.output_sizes, local_sizes, strict=True):
        ranges.append((start + rank * local, local))
        start += full
    spec = ShardSpec(0, tuple(ranges))
    specs = {}
    for pname, param in list(linear.named_parameters(recurse=False)):
        if param.shape[0] == linear.out_features:  # weight [out, in], scales [out]
            _replace(linear, pname, take(param.data, spec))
            specs[f"{name}.{pname}"] = spec
    linear.output_sizes = local_sizes
    linear.out_features = sum(local_sizes)
    return specs


def _shard_input(linear: Linear, rank: int, world: int, name: str) -> dict[str, ShardSpec]:
    """Row-parallel: keep this rank's input columns; per-output-row scales stay whole."""
    _check_layout(linear, name)
    local = linear.in_features // world
    spec = ShardSpec(1, ((rank * local, local),))
    specs = {}
    for pname, param in list(linear.named_parameters(recurse=False)):
        if param.dim() == 2 and param.shape[1] == linear.in_features:
            _replace(linear, pname, take(param.data, spec))
            specs[f"{name}.{pname}"] = spec
    linear.in_features = local
    return specs


def take(full: torch.Tensor, spec: ShardSpec) -> torch.Tensor:
    """One rank's part of a full parameter (also on the meta device, or a safetensors slice)."""
    if spec.dim == 0:
        pieces = [full[s : s + n] for s, n in spec.ranges]
    else:
        pieces = [full[:, s : s + n] for s, n in spec.ranges]
    return pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces, spec.dim)


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    delattr(module, name)
    module.register_parameter(name, nn.Parameter(value, requires_grad=False))


def _check_layout(linear: Linear, name: str) -> None:
    weight = getattr(linear, "weight", None)
    if weight is None or tuple(weight.shape) != (linear.out_features, linear.in_features):
        raise TensorParallelError(
            f"{name}: weight is not in checkpoint layout [out, in]; apply_tp must run before "
            "process_weights_after_loading (build the model with for_inference=False)"
        )
