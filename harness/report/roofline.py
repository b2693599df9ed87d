"""Roofline of an LLM serving workload on one GPU: compute and memory bounds in tokens/s.

Peaks are the figures measured on this workplace's machines (not datasheets); the workload
is a Llama config, weight/KV bytes per element, mean input/output lengths, the mean context an
output token is decoded at, and concurrency.
Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GpuPeaks:
    name: str
    copy_tbps: float  # device-memory copy, read + write, TB/s
    bf16_tflops: float  # dense GEMM 8192^3
    fp8_tflops: float  # torch._scaled_mm 8192^3


# Measured with shared/tools/probe_gpu.py (see docs/benchmarks.md); H200: same chip, more HBM.
PEAKS: dict[str, GpuPeaks] = {
    "H100": GpuPeaks("H100", 3.0, 775.0, 1390.0),
    "H200": GpuPeaks("H200", 4.3, 790.0, 1390.0),
}


def peaks_for(gpu_name: str) -> GpuPeaks | None:
    """'NVIDIA H100 80GB HBM3' -> the H100 row; None for an unknown product."""
    for key, peaks in PEAKS.items():
        if key in gpu_name:
            return peaks
    return None


@dataclass(frozen=True)
class Workload:
    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    weight_bytes: float  # bytes per linear weight element (FP8: 1, bf16: 2, CUDA Sparse: 0.625)
    kv_bytes: float  # bytes per KV element
    mean_input: float
    mean_output: float
    concurrency: float  # sequences decoding together (KV capacity / max_num_seqs bound)
    # the context an output token is decoded at, averaged over output tokens (decode_context);
    # 0: mean_input + mean_output / 2, as if every answer had the mean length
    mean_context: float = 0.0

    @property
    def linear_params(self) -> float:
        d, kv = self.hidden, self.num_kv_heads * self.head_dim
        per_layer = d * (d + 2 * kv) + d * d + 3 * d * self.intermediate
        return self.num_layers * per_layer

    @property
    def context(self) -> float:
        return self.mean_context or self.mean_input + self.mean_output / 2

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes

    def flops_per_output_token(self) -> float:
        """Prefill of the prompt amortized over the outputs, plus decode, plus attention."""
        attn = 4 * self.num_layers * self.num_heads * self.head_dim * self.context
        head = 2 * self.hidden * self.vocab
        dense = 2 * self.linear_params
        return dense * (1 + self.mean_input / self.mean_output) + attn + head

    def bytes_per_decode_step(self) -> float:
        weights = self.linear_params * self.weight_bytes + self.hidden * self.vocab * 2
        return weights + self.concurrency * self.context * self.kv_bytes_per_token


@dataclass(frozen=True)
class Roofline:
    gpu: str
    compute_bound_tps: float  # tokens/s if the GEMM peak were the only limit
    memory_bound_tps: float  # tokens/s if bytes per decode step were the only limit
    bound_tps: float  # min of the two
    limiter: str  # "compute" | "memory"
    concurrency: float

    def fraction(self, measured_tps: float) -> float:
        return measured_tps / self.bound_tps if self.bound_tps else 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self, measured_tps: float) -> str:
        return (
            f"roofline on {self.gpu}: compute bound {self.compute_bound_tps:,.0f} tok/s, "
            f"memory bound {self.memory_bound_tps:,.0f} tok/s at {self.concurrency:.0f} "
            f"concurrent sequences -> {self.limiter}-bound {self.bound_tps:,.0f} tok/s; "
            f"measured {measured_tps:,.1f} tok/s = {100 * self.fraction(measured_tps):.1f}%"
        )


def decode_context(input_lens: Sequence[int], output_lens: Sequence[int]) -> float:
    """The context an output token is decoded at, averaged over all output tokens: sum over
    requests of in x out + out x (out - 1) / 2, over the output tokens. Long answers weigh as
    many tokens as they make, so this exceeds mean input + mean output / 2 where answers'
    lengths spread; it is also the mean context of the requests resident in a full KV cache
    (each resides for as many steps as it makes tokens), so KV tokens / this is how many fit."""
    tokens = sum(output_lens)
    if tokens == 0:
        return float(sum(input_lens)) / max(len(input_lens), 1)
    total = sum(i * o + o * (o - 1) / 2 for i, o in zip(input_lens, output_lens, strict=True))
    return total / tokens


def roofline(w: Workload, peaks: GpuPeaks, fp8_gemm: bool) -> Roofline:
    """Decode steps move the weights once for `concurrency` tokens (memory bound); every
    token costs its FLOPs at the GEMM peak (compute bound, prefill included)."""
    tflops = peaks.fp8_tflops if fp8_gemm else peaks.bf16_tflops
    compute = tflops * 1e12 / w.flops_per_output_token()
    # Prefill time (compute) is added to the memory-bound decode time per output token.
    prefill_s = 2 * w.linear_params * w.mean_input / w.mean_output / (tflops * 1e12)
    decode_s = w.bytes_per_decode_step() / (peaks.copy_tbps * 1e12) / w.concurrency
    memory = 1.0 / (decode_s + prefill_s)
    bound = min(compute, memory)
    return Roofline(
        peaks.name, compute, memory, bound, "compute" if compute < memory else "memory",
        w.concurrency,
    )  # fmt: skip
