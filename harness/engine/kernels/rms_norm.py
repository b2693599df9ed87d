"""RMSNorm, optionally fused with the residual add before it, in one Triton launch per call.

Replaces about 9 launches (add, float, pow, mean, add, rsqrt, mul, cast, mul) per norm; in
prefill each of those moves the whole [tokens, hidden] activation. Two more steps may join it:
before the add, an FP8 GEMM's deferred row and column scales (the o and down projections' one-
scale GEMM, quant/fp8_gpu.py), rounded as kernels/fp8_epilogue.py's pass rounds them; after the
norm, the next linear's per-token e4m3 quantization (rms_norm_quant_triton), as
kernels/fp8_quant.py computes it from the bf16 norm output. Each saves a launch and a write and
read of the activation. The scales give bit for bit the pass's result; the quantizing variant
may sum the squares in another order (Triton lays a row out over the threads by the stored
element's size: 8 bf16 or 16 e4m3 a vector), so a value may round one step apart (measured on
an H100: equal at 160 x 8192, some differ at 1,024 x 8192). Reference: rms_norm_reference.
"""

from __future__ import annotations

import torch

from harness.engine.kernels.fp8_epilogue import scale_rows_cols_reference

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference only
    triton = None


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None, col_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """x, residual: [N, H]; weight [H] -> (weight * norm(x + residual), x + residual or None).
    With row_scale [N, 1] and col_scale [1, H] (fp32), x is an FP8 GEMM's unscaled output:
    scaled first (scale_rows_cols_reference).

    The sum is rounded to x.dtype before the norm and statistics are fp32, as HF Llama does."""
    if row_scale is not None:
        x = scale_rows_cols_reference(x.clone(), row_scale, col_scale)
    if residual is not None:
        x = x + residual
        residual = x
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype), residual


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, row_ptr, col_ptr, qscale_ptr, H, stride_x, stride_res,
        stride_out, eps, HAS_RESIDUAL: tl.constexpr, SCALED: tl.constexpr, QUANT: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < H
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
        if SCALED:  # deferred FP8 scales: fp32 products rounded to the dtype, as the pass does
            scale = tl.load(row_ptr + row) * tl.load(col_ptr + offs, mask=mask, other=0.0)
            x = (x.to(tl.float32) * scale).to(x.dtype)
        if HAS_RESIDUAL:  # residual <- x + residual, rounded to the activation dtype
            r = tl.load(res_ptr + row * stride_res + offs, mask=mask, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
            tl.store(res_ptr + row * stride_res + offs, x, mask=mask)
        x32 = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / H + eps)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        y = (x32 * rstd).to(x.dtype).to(tl.float32) * w.to(tl.float32)
        if QUANT:  # e4m3 with a per-token scale, from the norm output rounded to the dtype
            y = y.to(x.dtype).to(tl.float32)
            qscale = tl.maximum(tl.max(tl.abs(y), 0), 1e-12) / 448.0
            tl.store(qscale_ptr + row, qscale)
            y = tl.clamp(y / qscale, -448.0, 448.0)
        tl.store(out_ptr + row * stride_out + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None,
    row_scale: torch.Tensor | None, col_scale: torch.Tensor | None, out: torch.Tensor,
    qscale: torch.Tensor | None,
) -> None:  # fmt: skip
    n, h = x.shape
    if residual is not None:
        assert residual.shape == x.shape and residual.stride(-1) == 1 and residual.dtype == x.dtype
    if not n:
        return
    block = triton.next_power_of_2(h)
    _rms_norm_kernel[(n,)](
        x, residual if residual is not None else x, weight, out,
        row_scale if row_scale is not None else x, col_scale if col_scale is not None else x,
        qscale if qscale is not None else x, h, x.stride(0),
        residual.stride(0) if residual is not None else 0, out.stride(0), eps,
        HAS_RESIDUAL=residual is not None, SCALED=row_scale is not None,
        QUANT=qscale is not None, BLOCK=block, num_warps=min(max(block // 256, 1), 16),
    )  # fmt: skip


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None, col_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Same contract as rms_norm_reference (scales contiguous); `residual` is updated in place
    (returned too)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    _launch(x, weight, eps, residual, row_scale, col_scale, out, None)
    return out, residual


def rms_norm_quant_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None, col_scale: torch.Tensor | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:  # fmt: skip
    """rms_norm_triton's output (x.dtype as weight's), quantized for an FP8 linear:
    (([N, H] e4m3, [N, 1] fp32 scales), residual) as quant/fp8.quantize_per_token gives them."""
    assert weight.dtype == x.dtype, "the norm output is rounded to x.dtype before quantizing"
    if x.stride(-1) != 1:
        x = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    qscale = torch.empty(x.shape[0], 1, dtype=torch.float32, device=x.device)
    _launch(x, weight, eps, residual, row_scale, col_scale, q, qscale)
    return (q, qscale), residual
