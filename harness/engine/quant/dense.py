"""Dense linear method: an unquantized weight in the model dtype, applied as one matmul.

Stored [out, in] (checkpoint layout). On CPU the GEMM library is a choice (`cpu_gemm`):
- onednn: fp32 through oneDNN's linear, 1.1-1.9x faster than MKL at the engine's shapes
  (docs/benchmarks.md); its sums round differently from the MKL GEMM that HF runs, so greedy
  tokens can differ from the hf backend's where two logits nearly tie;
- mkl: the weight is transposed once to [in, out], which MKL multiplies about 2x faster than
  [out, in] at the small row counts of decode, with the same rounding as HF's F.linear.
Other CPU dtypes always take the mkl path.
On CUDA, steps of up to `layer.triton_max_rows` rows (engine.dense_triton_max_rows) of a bf16
or fp16 model run the Triton GEMV (kernels/gemv.py), the rest cuBLAS through F.linear.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from harness.engine.kernels.gemv import gemv_triton

logger = logging.getLogger(__name__)

CPU_GEMMS = ("onednn", "mkl")
HALF_DTYPES = (torch.bfloat16, torch.float16)  # what the Triton GEMV takes


@functools.cache
def onednn_linear_available() -> bool:
    ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if not ok:  # logged once: every layer falls back
        logger.warning("cpu_gemm=onednn: this torch has no oneDNN linear; using the mkl path")
    return ok


class DenseLinearMethod:
    def __init__(self, cpu_gemm: str = "") -> None:
        """cpu_gemm: "" (not on CPU: F.linear), "mkl" or "onednn"."""
        self.cpu_gemm = cpu_gemm
        self.use_onednn = False  # decided after loading, when the dtype is known

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        weight = torch.empty(out_features, in_features, dtype=dtype)  # [out, in]
        layer.register_parameter("weight", nn.Parameter(weight, requires_grad=False))

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.use_onednn:  # [N, in] x [out, in] -> [N, out]
            return torch.ops.mkldnn._linear_pointwise(x, layer.weight, None, "none", [], "")
        if self.cpu_gemm:
            return torch.matmul(x, layer.weight_t)  # [N, in] @ [in, out]
        if 0 < x.shape[0] <= layer.triton_max_rows and x.dtype in HALF_DTYPES:
            return gemv_triton(x, layer.weight)
        return F.linear(x, layer.weight)  # [N, in] -> [N, out]

    def load_dense(self, layer: nn.Module, weight: torch.Tensor, rows: slice) -> None:
        layer.weight.data[rows].copy_(weight)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if not self.cpu_gemm:
            return
        fp32 = layer.weight.dtype == torch.float32
        if self.cpu_gemm == "onednn" and fp32 and onednn_linear_available():
            self.use_onednn = True
            return
        weight_t = layer.weight.data.t().contiguous()  # [in, out]
        del layer.weight
        layer.register_parameter("weight_t", nn.Parameter(weight_t, requires_grad=False))


class DenseConfig:
    name = "Dense"

    def __init__(self, device: torch.device, cpu_gemm: str = "onednn") -> None:
        if cpu_gemm not in CPU_GEMMS:
            raise ValueError(f"cpu_gemm={cpu_gemm!r}: use one of {', '.join(CPU_GEMMS)}")
        self.device = torch.device(device)
        self.cpu_gemm = cpu_gemm

    def linear_method(self, prefix: str) -> DenseLinearMethod:
        return DenseLinearMethod(self.cpu_gemm if self.device.type == "cpu" else "")
