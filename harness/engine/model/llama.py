"""The Llama decoder (GQA, RoPE incl. llama3 scaling, RMSNorm, SwiGLU) as a plain nn.Module.

Reads top to bottom: config -> presets -> building blocks -> layer -> model. Precision lives
in each Linear's quant method; attention over the paged cache lives in attention.py. Norms,
RoPE and SwiGLU run their plain-torch references unless `use_fused_kernels` switched on the
fused kernels of harness/engine/kernels: Triton on CUDA, C for fp32 on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from harness.engine.kernels import cpu_elementwise
from harness.engine.kernels.activation import silu_mul_reference, silu_mul_triton
from harness.engine.kernels.cpu_elementwise import rms_norm_cpu, rope_cpu_, silu_mul_cpu
from harness.engine.kernels.embedding import gather_rows
from harness.engine.kernels.rms_norm import (
    rms_norm_quant_triton,
    rms_norm_reference,
    rms_norm_triton,
    triton,
)
from harness.engine.kernels.rope import rope_reference
from harness.engine.model.attention import AttentionMetadata, PagedAttention
from harness.engine.quant.base import LinearMethod, QuantConfig, Quantized, Unscaled
from harness.engine.quant.dense import DenseLinearMethod


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF's dict: {"rope_type": "llama3", ...}
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    extra: dict[str, Any] = field(default_factory=dict)  # other HF keys, kept for the manifest

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; check the checkpoint config"
            )

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> LlamaConfig:
        """From a HF config.json dict (transformers 4 `rope_scaling` or 5 `rope_parameters`)."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in hf.items() if k in known and v is not None}
        rope = hf.get("rope_parameters") or {}
        if rope:
            kwargs.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            if rope.get("rope_type", "default") != "default":
                kwargs["rope_scaling"] = rope
        scaling = kwargs.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
            kwargs["rope_scaling"] = None
        kwargs["extra"] = {k: v for k, v in hf.items() if k not in known}
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        return () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)


# Shapes of well-known checkpoints, for dummy-weight runs without any file.
PRESETS: dict[str, LlamaConfig] = {
    "llama2-7b": LlamaConfig(32000, 4096, 11008, 32, 32, 32),
    "llama2-70b": LlamaConfig(32000, 8192, 28672, 80, 64, 8),
    "smollm2-135m": LlamaConfig(
        49152,
        576,
        1536,
        30,
        9,
        3,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
}


class Linear(nn.Module):
    """A linear whose storage and matmul belong to its quant method.

    output_sizes > 1 entries make a fused layer (q|k|v, gate|up): checkpoint shards are
    loaded into consecutive row ranges of every [out, ...] parameter.
    """

    def __init__(
        self, in_features: int, output_sizes: list[int], method: LinearMethod, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.output_sizes = output_sizes
        self.out_features = sum(output_sizes)
        self.method = method
        self.triton_max_rows = 0  # the method may pick a Triton GEMM up to this M (fp8_gpu.py)
        method.create_weights(self, in_features, self.out_features, dtype)

    def forward(self, x: torch.Tensor | Quantized) -> torch.Tensor:
        """[N, in] -> [N, out]; x may come quantized where takes_quantized_input."""
        return self.method.apply(self, x)

    @property
    def takes_quantized_input(self) -> bool:
        """Whether forward takes an (e4m3, scales) pair (quant/base.Quantized) for x."""
        return getattr(self.method, "takes_quantized_input", False)

    def forward_unscaled(self, x: torch.Tensor | Quantized) -> Unscaled:
        """(out, row_scale, col_scale): the output before its FP8 scales where the method
        defers them (out * row_scale * col_scale is forward's), else (forward(x), None, None).
        A layer with forward hooks (TP's all-reduce of row-parallel ones) runs them."""
        apply_unscaled = getattr(self.method, "apply_unscaled", None)
        if apply_unscaled is None or self._forward_hooks:
            return self(x), None, None
        return apply_unscaled(self, x)

    def shard_rows(self, shard: int) -> slice:
        start = sum(self.output_sizes[:shard])
        return slice(start, start + self.output_sizes[shard])


class RMSNorm(nn.Module):
    """Statistics in fp32 whatever the model dtype; with `residual`, norms x + residual and
    returns that sum as the new residual (the add is fused into the norm kernel). x may be an
    FP8 GEMM's unscaled output with its row and column scales (Linear.forward_unscaled)."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)
        self.kernels = "torch"  # or "triton", "c": set by use_fused_kernels
        self.quantize_output = False  # Triton: return the next FP8 linear's Quantized input

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None,
        row_scale: torch.Tensor | None = None, col_scale: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | Quantized, torch.Tensor | None]:  # fmt: skip
        if self.kernels == "triton":
            norm = rms_norm_quant_triton if self.quantize_output else rms_norm_triton
            return norm(x, self.weight, self.eps, residual, row_scale, col_scale)
        if self.kernels == "c" and row_scale is None:
            return rms_norm_cpu(x, self.weight, self.eps, residual)
        return rms_norm_reference(x, self.weight, self.eps, residual, row_scale, col_scale)


def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """[head_dim // 2] fp32 inverse frequencies, with linear or llama3 scaling if configured."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(is_medium, smoothed, scaled)
    raise NotImplementedError(f"rope_scaling type {kind!r}: only linear and llama3 are supported")


class RotaryEmbedding(nn.Module):
    """Rotates q and k by position, from a cos/sin table computed once for all positions."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("cos_sin", torch.empty(0), persistent=False)

    def init_table(self, device: torch.device, dtype: torch.dtype) -> None:
        """Called after the model leaves the meta device: [max_pos, 2, head_dim] in dtype."""
        inv_freq = rope_inv_freq(self.config).to(device)
        pos = torch.arange(self.config.max_position_embeddings, device=device).float()
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_pos, head_dim]
        self.cos_sin = torch.stack((emb.cos(), emb.sin()), dim=1).to(dtype)

    def forward(self, positions: torch.Tensor) -> Rope:
        return Rope(positions, self.cos_sin)


@dataclass
class Rope:
    """One step's rotary inputs, shared by all layers; cos/sin are gathered once, when used."""

    positions: torch.Tensor  # [N] int64
    cos_sin: torch.Tensor  # [max_pos, 2, head_dim] table in the model dtype

    @cached_property
    def _gathered(self) -> torch.Tensor:
        return self.cos_sin[self.positions]  # [N, 2, D]

    @property
    def cos(self) -> torch.Tensor:
        return self._gathered[:, 0:1]  # [N, 1, D]

    @property
    def sin(self) -> torch.Tensor:
        return self._gathered[:, 1:2]  # [N, 1, D]


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, quant: QuantConfig, prefix: str, dtype: torch.dtype):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = Linear(
            config.hidden_size,
            [q_size, kv_size, kv_size],
            quant.linear_method(f"{prefix}.qkv_proj"),
            dtype,
        )
        self.o_proj = Linear(
            q_size, [config.hidden_size], quant.linear_method(f"{prefix}.o_proj"), dtype
        )
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)
        self.kernels = "torch"  # or "triton", "c": set by use_fused_kernels

    def forward(self, rope: Rope, x: torch.Tensor | Quantized, meta: AttentionMetadata) -> Unscaled:
        """-> o_proj's output, its FP8 scales left to the norm after it where it defers them."""
        d, h = self.head_dim, self.num_heads
        # [N, (H + 2 Hkv) * D]: q heads, then k heads, then v heads; FP8 scales left to RoPE
        qkv, row_scale, col_scale = (self.qkv_proj.forward_unscaled(x) if self.kernels == "triton"
                                     else (self.qkv_proj(x), None, None))  # fmt: skip
        n = qkv.shape[0]
        qk = qkv[:, : (h + self.num_kv_heads) * d].view(n, -1, d)  # [N, H + Hkv, D]
        v = qkv[:, (h + self.num_kv_heads) * d :].view(n, -1, d)
        if self.kernels == "triton":  # scaled, rotated in place, K and V written to the cache
            self.attn.rope_and_write_kv_(qk, v, rope.positions, rope.cos_sin, meta, row_scale,
                                         col_scale)  # fmt: skip
            o = self.attn(qk[:, :h], qk[:, h:], v, meta, kv_written=True)
            return self.o_proj.forward_unscaled(o)
        if self.kernels == "c":
            rope_cpu_(qk, rope.positions, rope.cos_sin)
        else:
            qk = rope_reference(qk, rope.cos, rope.sin)
        o = self.attn(qk[:, :h], qk[:, h:], v, meta)  # [N, H * D]
        return self.o_proj.forward_unscaled(o)


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig, quant: QuantConfig, prefix: str, dtype: torch.dtype):
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = Linear(
            config.hidden_size, [inter, inter], quant.linear_method(f"{prefix}.gate_up_proj"), dtype
        )
        self.down_proj = Linear(
            inter, [config.hidden_size], quant.linear_method(f"{prefix}.down_proj"), dtype
        )
        self.kernels = "torch"  # or "triton", "c": set by use_fused_kernels

    def forward(self, x: torch.Tensor | Quantized) -> Unscaled:
        """-> down_proj's output, its FP8 scales left to the next norm where it defers them."""
        if self.kernels == "triton":  # SwiGLU: silu(gate) * up, applying any deferred scales
            act = silu_mul_triton(*self.gate_up_proj.forward_unscaled(x))
        elif self.kernels == "c":
            act = silu_mul_cpu(self.gate_up_proj(x))  # gate|up: [N, 2 I]
        else:
            act = silu_mul_reference(self.gate_up_proj(x))
        return self.down_proj.forward_unscaled(act)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, quant: QuantConfig, prefix: str, dtype: torch.dtype):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.self_attn = LlamaAttention(config, quant, f"{prefix}.self_attn", dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.mlp = LlamaMLP(config, quant, f"{prefix}.mlp", dtype)

    def forward(
        self, rope: Rope, x: Unscaled, residual: torch.Tensor | None, meta: AttentionMetadata
    ) -> tuple[Unscaled, torch.Tensor]:
        """x: this layer's input as the previous layer's MLP output with any FP8 scales it
        left, not yet added to residual (None in the first layer, where x is the embedding)
        -> (MLP output with any scales it left, residual)."""
        x, row_scale, col_scale = x
        if residual is None:
            residual = x
            h, _ = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm(x, residual, row_scale, col_scale)
        o, row_scale, col_scale = self.self_attn(rope, h, meta)
        h, residual = self.post_attention_layernorm(o, residual, row_scale, col_scale)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig, quant: QuantConfig, dtype: torch.dtype):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, quant, f"model.layers.{i}", dtype)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary = RotaryEmbedding(config)
        self.host_embedding = False  # embed_tokens in pinned host memory (move_embedding_to_host)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions: [N] int64 -> hidden states [N, hidden_size]."""
        if self.host_embedding:
            x: Unscaled = (gather_rows(input_ids, self.embed_tokens.weight), None, None)
        else:
            x = (self.embed_tokens(input_ids), None, None)
        rope = self.rotary(positions)
        residual = None
        for layer in self.layers:
            x, residual = layer(rope, x, residual, meta)
        return self.norm(x[0], residual, *x[1:])[0]


class LlamaForCausalLM(nn.Module):
    # Checkpoint names fused into one of our parameters: name -> (fused name, shard index).
    packed_modules = {
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }  # fmt: skip

    def __init__(self, config: LlamaConfig, quant: QuantConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, quant, dtype)
        # Tied checkpoints keep one matrix on file; the head gets its own copy at load time
        # (tie_weights) so that its quant method may lay it out for the matmul.
        self.lm_head = Linear(
            config.hidden_size, [config.vocab_size], quant.linear_method("lm_head"), dtype
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [S, hidden_size] (sampled rows only) -> [S, vocab] fp32."""
        return self.lm_head(hidden).float()

    def tie_weights(self) -> None:
        """Copy the input embedding into the head (tied checkpoints store it once)."""
        embed = self.model.embed_tokens.weight
        self.lm_head.method.load_dense(self.lm_head, embed, slice(0, embed.shape[0]))

    def move_embedding_to_host(self) -> int:
        """CUDA: the input embedding into pinned host memory, read a step's rows at a time
        over PCIe (kernels/embedding.py); returns the bytes it frees on the GPU."""
        embed = self.model.embed_tokens
        host = embed.weight.detach().cpu().pin_memory()
        embed.weight = nn.Parameter(host, requires_grad=False)
        self.model.host_embedding = True
        return host.nbytes

    def process_weights_after_loading(self) -> None:
        for module in self.modules():
            if isinstance(module, Linear):
                module.method.process_weights_after_loading(module)

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """What an engine dir stores: the tied head is left out (rebuilt by tie_weights)."""
        state = self.state_dict()
        if self.config.tie_word_embeddings:
            state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
        return state

    def init_buffers(self, device: torch.device, dtype: torch.dtype) -> None:
        self.model.rotary.init_table(device, dtype)

    def use_fused_kernels(
        self,
        enabled: bool,
        fp8_triton_max_rows: int = 0,
        sparse_triton_max_rows: int = 0,
        dense_triton_max_rows: int = 0,
        sparse_kernel: str = "triton",
    ) -> str:
        """Switch norms, RoPE and SwiGLU to fused kernels: Triton on CUDA (with FP8 GEMMs of up
        to fp8_triton_max_rows rows, sparse_triton_max_rows for 2:4 weights and
        dense_triton_max_rows for bf16 / fp16 ones, the head included), C for fp32 on the CPU
        where a compiler builds them. sparse_kernel mma / wgmma / cutlass: the 2:4 weights
        repacked for that kernel on the sparse tensor cores (quant/sparse24.py). Returns what
        runs now: "triton", "c" or "torch" (the plain-torch references)."""
        weight = self.model.norm.weight  # on the model's device (the embedding may not be)
        kind = "torch"
        if enabled and weight.is_cuda and triton is not None:
            kind = "triton"
        elif enabled and not weight.is_cuda and cpu_elementwise.is_available(weight.dtype):
            kind = "c"
        for module in self.modules():
            if isinstance(module, Linear):
                max_rows = fp8_triton_max_rows
                if isinstance(module.method, DenseLinearMethod):
                    max_rows = dense_triton_max_rows
                elif getattr(module.method, "sparse24", False):
                    max_rows = sparse_triton_max_rows
                    if sparse_kernel != "triton" and kind == "triton":
                        module.method.repack(module, sparse_kernel)
                module.triton_max_rows = max_rows if kind == "triton" else 0
            elif hasattr(module, "kernels"):
                module.kernels = kind
        if sparse_kernel != "triton" and kind == "triton":
            from harness.engine.quant.sparse24 import release_unused_scratch

            release_unused_scratch([m for m in self.modules() if isinstance(m, Linear)])
        quantize = kind == "triton" and weight.dtype == torch.bfloat16
        for layer in self.model.layers:  # norms quantize for the FP8 linears after them
            pairs = ((layer.input_layernorm, layer.self_attn.qkv_proj),
                     (layer.post_attention_layernorm, layer.mlp.gate_up_proj))  # fmt: skip
            for norm, linear in pairs:
                norm.quantize_output = quantize and linear.takes_quantized_input
        return kind

    def kv_attention_modules(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.layers]
