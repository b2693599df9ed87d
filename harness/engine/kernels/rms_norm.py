"""RMSNorm, optionally fused with the residual add before it, in one Triton launch per call.

Replaces about 9 launches (add, float, pow, mean, add, rsqrt, mul, cast, mul) per norm; in
prefill each of those moves the whole [tokens, hidden] activation. Reference: rms_norm_reference.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference only
    triton = None


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x, residual: [N, H]; weight [H] -> (weight * norm(x + residual), x + residual or None).

    The sum is rounded to x.dtype before the norm and statistics are fp32, as HF Llama does."""
    if residual is not None:
        x = x + residual
        residual = x
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype), residual


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, H, stride_x, stride_res, stride_out, eps,
        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < H
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
        if HAS_RESIDUAL:  # residual <- x + residual, rounded to the activation dtype
            r = tl.load(res_ptr + row * stride_res + offs, mask=mask, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
            tl.store(res_ptr + row * stride_res + offs, x, mask=mask)
        x32 = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / H + eps)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        y = (x32 * rstd).to(x.dtype).to(tl.float32) * w.to(tl.float32)
        tl.store(out_ptr + row * stride_out + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as rms_norm_reference; `residual` is updated in place (returned too)."""
    n, h = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(n, h, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if residual is not None:
        assert residual.shape == x.shape and residual.stride(-1) == 1 and residual.dtype == x.dtype
    if n:
        block = triton.next_power_of_2(h)
        _rms_norm_kernel[(n,)](
            x, residual if residual is not None else x, weight, out, h, x.stride(0),
            residual.stride(0) if residual is not None else 0, out.stride(0), eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=min(max(block // 256, 1), 16),
        )  # fmt: skip
    return out, residual
