"""Compressed 2:4 FP8 weights at FP8's sparse tensor-core rate on Hopper (sm_90a):
sparse24_mma.cu's `sparse24_wgmma_gemm_*` (wgmma.mma_async.sp m64n64k64 e4m3) and its launch
(measured by `fp8_gemm_sweep --sparse --mma`; the engine runs it under `engine.sparse_wgmma`).

The weights are packed by `pack_for_mma(values, meta, warpgroup_tables())` (64-row tiles, a
warpgroup's 128 threads a tile); the activations are e4m3 with a scale a token, as the Triton
2:4 kernel takes them. Warp-level mma.sp cannot reach this rate on sm_90: its FP8 form runs as
f16 (see sparse24_mma.cu)."""

from __future__ import annotations

import torch

from harness.engine.kernels.sparse24_mma import TILE_INPUTS, launch_gemm

TILE_ROWS = 64  # output rows a block (one warpgroup)
# kernel name -> (warpgroups a block (64 output rows each), tokens a block, steps in flight,
# blocks an SM that K splits make up to): sparse24_mma.cu's WGMMA_FORM lines say how each runs
# (_p2: two steps a wgmma group, summed in the tensor cores; _g4 / _g2: the warpgroups of a
# block share its X, read once for their rows). Few tokens stream the weights: splits keep 4
# blocks' loads in flight an SM. The wider forms are compute: splits only fill the SMs once,
# as each costs an fp32 write and read of the output (at 512 tokens and N 8,192, 32 MB).
FORMS = {
    "sparse24_wgmma_gemm_s1": (1, 64, 4, 4),
    "sparse24_wgmma_gemm_p2": (1, 128, 4, 1),
    "sparse24_wgmma_gemm_g4p2": (4, 64, 4, 1),
    "sparse24_wgmma_gemm_g2p2": (2, 128, 4, 1),
}


def form_for(tokens: int) -> str:
    """The form a GEMM of this many tokens runs."""
    return "sparse24_wgmma_gemm_s1" if tokens <= 64 else "sparse24_wgmma_gemm_p2"


def splits_for(n: int, k: int, tokens: int, sms: int, form: str | None = None) -> int:
    """K splits for the form's blocks an SM, each a whole number of its depth."""
    groups, block_tokens, depth, blocks_per_sm = FORMS[form or form_for(tokens)]
    blocks = -(-n // (TILE_ROWS * groups)) * -(-tokens // block_tokens)
    steps = k // TILE_INPUTS
    return max(1, min(-(-steps // depth), -(-blocks_per_sm * sms // blocks)))


def sparse24_wgmma_gemm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    packed_v: torch.Tensor,
    packed_m: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    form: str | None = None,
) -> torch.Tensor:
    """xq [T, K] e4m3 (rows 16-byte aligned) times x_scale [T] (or [T, 1]) . (W * w_scale)^T,
    W packed with warpgroup_tables -> [T, N] out_dtype (fp32, bf16 or f16); form: one of
    FORMS (the sweep times each), else form_for(T)."""
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
    name = form or form_for(t)
    groups, block_tokens = FORMS[name][:2]
    sms = torch.cuda.get_device_properties(xq.device).multi_processor_count
    steps = k // TILE_INPUTS
    per_split = -(-steps // splits_for(n, k, t, sms, name))
    splits = -(-steps // per_split)
    grid = (-(-t // block_tokens), -(-n // (TILE_ROWS * groups)), splits)
    return launch_gemm(
        name, grid, 128 * groups, packed_v, packed_m, xq, xs, ws, n, out_dtype, per_split
    )
