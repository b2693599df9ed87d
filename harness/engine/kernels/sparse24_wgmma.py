"""Compressed 2:4 FP8 weights at FP8's sparse tensor-core rate on Hopper (sm_90a):
sparse24_mma.cu's `sparse24_wgmma_gemm_*` (wgmma.mma_async.sp m64n64k64 e4m3) and its launch
(measured by `fp8_gemm_sweep --sparse --mma`; the engine runs it as `sparse_kernel: wgmma`).

The weights are packed by `pack_for_mma(values, meta, warpgroup_tables())` (64-row tiles, a
warpgroup's 128 threads a tile); the activations are e4m3 with a scale a token, as the Triton
2:4 kernel takes them. Warp-level mma.sp cannot reach this rate on sm_90: its FP8 form runs as
f16 (see sparse24_mma.cu)."""

from __future__ import annotations

import torch

from harness.engine.kernels.sparse24_mma import TILE_INPUTS, launch_gemm

TILE_ROWS = 64  # output rows a warpgroup
# kernel name -> (warpgroups a block (64 output rows each), tokens a block, steps in flight):
# sparse24_mma.cu's WGMMA_FORM lines say how each runs. One block an SM (512 threads); K
# splits fill the SMs once where the blocks are fewer (few tokens: 32 blocks at N 8,192),
# each split costing an fp32 write and read of the output.
FORMS = {
    "sparse24_wgmma_gemm_g4p4": (4, 64, 4),
    "sparse24_wgmma_gemm_g4p4w8": (4, 64, 8),
}
FORM = "sparse24_wgmma_gemm_g4p4w8"  # the engine's: 0.85-0.92x _g4p4's time on the H100


def splits_for(n: int, k: int, tokens: int, sms: int, form: str = FORM) -> int:
    """K splits for one block an SM, each a whole number of the form's depth."""
    groups, block_tokens, depth = FORMS[form]
    blocks = -(-n // (TILE_ROWS * groups)) * -(-tokens // block_tokens)
    steps = k // TILE_INPUTS
    return max(1, min(-(-steps // depth), -(-sms // blocks)))


def sparse24_wgmma_gemm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    packed_v: torch.Tensor,
    packed_m: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    form: str = FORM,
) -> torch.Tensor:
    """xq [T, K] e4m3 (rows 16-byte aligned) times x_scale [T] (or [T, 1]) . (W * w_scale)^T,
    W packed with warpgroup_tables -> [T, N] out_dtype (fp32, bf16 or f16); form: one of
    FORMS (the sweep times each)."""
    t, k = xq.shape
    n = packed_v.shape[0] * TILE_ROWS
    if packed_v.shape[1:] != (k // TILE_INPUTS, 128, 16) or k % TILE_INPUTS:
        raise ValueError(
            f"packed weight {tuple(packed_v.shape)} is not for [N, {k}] in 64-row tiles"
        )
    if xq.dtype != torch.float8_e4m3fn or xq.stride(1) != 1 or (xq.stride(0) | xq.data_ptr()) % 16:
        raise ValueError("xq must be e4m3 with unit stride, its rows 16-byte aligned")
    xs = x_scale.reshape(t).float().contiguous()
    ws = w_scale.reshape(n).float().contiguous()
    groups, block_tokens, _ = FORMS[form]
    sms = torch.cuda.get_device_properties(xq.device).multi_processor_count
    steps = k // TILE_INPUTS
    per_split = -(-steps // splits_for(n, k, t, sms, form))
    splits = -(-steps // per_split)
    grid = (-(-t // block_tokens), -(-n // (TILE_ROWS * groups)), splits)
    return launch_gemm(
        form, grid, 128 * groups, packed_v, packed_m, xq, xs, ws, n, out_dtype, per_split
    )
