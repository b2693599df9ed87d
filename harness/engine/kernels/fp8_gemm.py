"""FP8 GEMM for decode-sized batches: out = (xq * x_scale) @ (w * w_scale)^T in bf16, with w
dense or compressed 2:4 (expanded in registers by sparse24_gemm.load_expanded).

Up to a few hundred rows a step streams every weight once, so bandwidth counts most, and
cuBLAS's FP8 kernels read the 70B weights at about half of HBM bandwidth there. Each program
of this kernel takes BLOCK_M rows x BLOCK_N weight rows over the whole of K (or over one of
`split_k` K ranges, added into an fp32 buffer) and stores bf16 at once; the row blocks of
one weight block are launched next to each other, so the weight tile is read from HBM once
and from L2 by the rest. With `swap` it computes out^T = w @ xq^T: the weight tile is the
MMA's A operand, which wgmma may take from registers, and M its narrow side. `config_for(m)`
gives the block sizes per M (`python -m harness.report.fp8_gemm_sweep` measures them,
docs/benchmarks.md).

Accuracy: with 64+ MMA rows (BLOCK_M, or BLOCK_N with swap) Triton uses Hopper's wgmma,
whose FP8 accumulation is less precise than fp32 (2.5% of outputs off by more than 2% in
tests/gpu/test_fp8_gemm.py, once); there each run of 128 products (`GemmConfig.promote`) is
summed by wgmma from zero and added into the fp32 accumulator (`max_num_imprecise_acc`; with
swap, each BLOCK_K's sum: Triton 3.6 would not pipeline the other form). The swapped configs'
adds of 128- and 256-product sums pass the same GPU tests; an add after every 32 products (the
first form) cost 1.5-2.2x the K loop's instructions. Smaller blocks use mma.sync, which matched
the reference (the kernel as first measured, M <= 32).
Reference: fp8_gemm_reference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl

    from harness.engine.kernels.sparse24_gemm import load_expanded
except ImportError:
    triton = None


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 4
    split_k: int = 1  # programs per output tile, each over a K range, added in fp32; 0: auto
    # Swap the operands: out^T = W @ x^T, so the weight tile is the MMA's A operand (the side
    # that may come from registers, as an expanded 2:4 tile does) and M its narrow N side.
    swap: bool = False

    @property
    def uses_wgmma(self) -> bool:
        """Whether Triton picks Hopper's wgmma (MMA rows, BLOCK_M or with swap BLOCK_N, >= 64)."""
        return (self.block_n if self.swap else self.block_m) >= 64

    @property
    def promote(self) -> int:
        """FP8 products that wgmma sums from zero before an fp32 add (see above); 0 without
        wgmma. Unswapped: 128 (Triton takes at most BLOCK_K, and adds at least once a K step);
        swapped: the kernel adds each K step's dot, BLOCK_K products."""
        if not self.uses_wgmma:
            return 0
        return self.block_k if self.swap else min(128, self.block_k)

    def constexprs(self, sparse: bool, splits: int, even_k: bool) -> dict:
        """_fp8_gemm_kernel's compile-time arguments for this config (launch and compile check)."""
        return {
            "BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
            "PROMOTE": self.promote, "SPARSE": sparse, "ATOMIC": splits > 1, "SWAP": self.swap,
            "EVEN_K": even_k,
        }  # fmt: skip


def auto_split_k(tiles: int, k_steps: int, sms: int) -> int:
    """Splits of K (1 to 8, each of at least 2 BLOCK_K steps) that finish `tiles` output
    tiles soonest on `sms` SMs, one program per SM at a time: o and down of the 70B at 128
    rows are 64 tiles of 128 x 128, which would leave half of an H100's 132 SMs idle."""
    best, best_time = 1, 1.0
    for s in range(2, min(8, k_steps // 2) + 1):
        time = -(-tiles * s // sms) / s / -(-tiles // sms)  # waves x K share, vs no split
        if time < best_time * 0.85:  # the fp32 adds and the zeroed buffer cost something
            best, best_time = s, time
    return best


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


# (largest M, config): the first row whose M fits is used. M <= 32 rows: the second H200
# session's sweep, and up to 8 rows the swapped operands (H100, twelfth session: 0.329 ms a
# 70B layer at 1 row against 0.385 unswapped and cuBLAS's 0.403; at 16 and 32 rows swapping
# made no difference). From 64 to 512 rows cuBLAS was faster on the H100 (the best Triton
# config at 0.54-0.93x of it), so engine.fp8_triton_max_rows keeps dense FP8 on cuBLAS
# there; the larger rows serve a user who raises it.
CONFIGS: list[tuple[int, GemmConfig]] = [
    (8, GemmConfig(16, 128, 256, 4, 3, swap=True)),
    (16, GemmConfig(16, 128)),
    (32, GemmConfig(32, 128)),
    (64, GemmConfig(64, 128, 128, 4, 3)),
    (1 << 30, GemmConfig(128, 128, 128, 8, 3)),
]


# Compressed 2:4 weights, as `fp8_gemm_sweep --sparse` (and `--swap`) measured them on the H100
# with each group's 4 bytes built as one 32-bit word (fourteenth session), ms a 70B layer,
# swapped: 0.35 at 1 row, 0.37 at 16, 0.32 at 32, 0.38 at 64 (dense cuBLAS 0.36-0.39), 0.52 at
# 128 and 0.80 at 256 (cuBLAS 0.35 and 0.42); unswapped within 0.01-0.12 of these. Expand +
# cuBLAS took 0.91-1.0 up to 256 rows and 1.29 at 512, faster there than the kernel's 1.31-1.49
# (engine.sparse_triton_max_rows: 256).
SPARSE_CONFIGS: list[tuple[int, GemmConfig]] = [
    (16, GemmConfig(16, 64, 256, 4, 3, swap=True)),
    (32, GemmConfig(32, 64, 256, 4, 3, swap=True)),
    (64, GemmConfig(64, 64, 256, 4, 3, swap=True)),
    (128, GemmConfig(128, 64, 128, 8, 3, swap=True)),
    (1 << 30, GemmConfig(128, 64, 128, 4, 3, swap=True)),
]


def config_for(m: int, sparse: bool = False) -> GemmConfig:
    table = SPARSE_CONFIGS if sparse else CONFIGS
    return next(cfg for max_m, cfg in table if m <= max_m)


def fp8_gemm_reference(
    xq: torch.Tensor, x_scale: torch.Tensor, w: torch.Tensor, w_scale_row: torch.Tensor
) -> torch.Tensor:
    """xq [M, K] e4m3, x_scale [M, 1] fp32, w [N, K] e4m3, w_scale_row [1, N] fp32 -> [M, N]
    bf16."""
    out = (xq.float() @ w.float().t()) * x_scale * w_scale_row  # e4m3 products are exact in fp32
    return out.to(torch.bfloat16)


if triton is not None:

    @triton.jit
    def _fp8_gemm_kernel(
        x_ptr, xs_ptr, w_ptr, meta_ptr, ws_ptr, out_ptr, M, N, K,
        stride_x, stride_w, stride_meta, stride_out,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        PROMOTE: tl.constexpr, SPARSE: tl.constexpr, ATOMIC: tl.constexpr, SWAP: tl.constexpr,
        EVEN_K: tl.constexpr,
    ):  # fmt: skip
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # row blocks vary fastest
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = offs_m < M
        acc = tl.zeros((BLOCK_N, BLOCK_M) if SWAP else (BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), tl.num_programs(2)) * BLOCK_K
        k_begin = tl.program_id(2) * k_per_split
        for k0 in range(k_begin, tl.minimum(K, k_begin + k_per_split), BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = (offs_k < K) | EVEN_K  # EVEN_K: no mask along K (see load_expanded)
            x = tl.load(x_ptr + offs_m[:, None] * stride_x + offs_k[None, :],
                        mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # fmt: skip
            if SPARSE:  # w_ptr: compressed values (as uint8), meta_ptr: their positions
                w = load_expanded(w_ptr, meta_ptr, offs_n, k0, N, K, stride_w, stride_meta,
                                  BLOCK_N, BLOCK_K, EVEN_K)  # fmt: skip
                w = w.to(tl.float8e4nv, bitcast=True)
            else:
                w = tl.load(w_ptr + offs_n[:, None] * stride_w + offs_k[None, :],
                            mask=(offs_n[:, None] < N) & k_ok[None, :], other=0.0)  # fmt: skip
            if SWAP:  # fp32 add of each BLOCK_K's sum (Triton 3.6 would not pipeline PROMOTE)
                acc += tl.dot(w, tl.trans(x))
            elif PROMOTE > 0:  # e4m3 x e4m3 -> fp32
                acc = tl.dot(x, tl.trans(w), acc, max_num_imprecise_acc=PROMOTE)
            else:
                acc = tl.dot(x, tl.trans(w), acc)
        if SWAP:
            acc = tl.trans(acc)
        xs = tl.load(xs_ptr + offs_m, mask=m_ok, other=0.0)
        ws = tl.load(ws_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc * xs[:, None] * ws[None, :]
        out = out_ptr + offs_m[:, None] * stride_out + offs_n[None, :]
        if ATOMIC:  # split K: out_ptr is a zeroed fp32 buffer that the K ranges add into
            tl.atomic_add(out, acc, mask=m_ok[:, None] & (offs_n[None, :] < N), sem="relaxed")
        else:
            tl.store(out, acc.to(tl.bfloat16), mask=m_ok[:, None] & (offs_n[None, :] < N))


def fp8_gemm_triton(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale_row: torch.Tensor,
    config: GemmConfig | None = None,
    meta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as fp8_gemm_reference; config None: config_for(M). With meta, w is a 2:4
    weight compressed by quant/sparse24.compress_24: values [N, K/2] e4m3, meta [N, K/8]
    (config None: config_for(M, sparse=True))."""
    m, k = xq.shape
    n = w.shape[0]
    sparse = meta is not None
    cfg = config or config_for(m, sparse)
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    splits = cfg.split_k or auto_split_k(tiles, triton.cdiv(k, cfg.block_k), _sm_count(xq.device))
    if splits > 1:
        out = torch.zeros(m, n, dtype=torch.float32, device=xq.device)
    else:
        out = torch.empty(m, n, dtype=torch.bfloat16, device=xq.device)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), splits)
    _fp8_gemm_kernel[grid](
        xq, x_scale, w.view(torch.uint8) if sparse else w, meta if sparse else w, w_scale_row,
        out, m, n, k, xq.stride(0), w.stride(0), meta.stride(0) if sparse else 0, out.stride(0),
        **cfg.constexprs(sparse, splits, k % cfg.block_k == 0),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out.to(torch.bfloat16) if splits > 1 else out
