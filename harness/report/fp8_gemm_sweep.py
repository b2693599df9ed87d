"""FP8 GEMM at decode batch sizes on a model's linear shapes: cuBLAS `_scaled_mm` against the
Triton kernel's block configurations (kernels/fp8_gemm.py; with --sparse on compressed 2:4
weights), with the weight bandwidth each reaches. Configs that compute wrong (against the
fp32 reference) are dropped. cuBLAS is also timed with fast accumulation (`use_fast_accum`,
not used by the engine), beside its error and the default's, and with its operands swapped
(out^T = W x^T, then transposed back to [M, N]: M becomes cuBLAS's narrow N side, which may
pick other kernels at the 129-255 rows where the unswapped ones are slow; not used by the
engine), and with one scale a tensor (cuBLAS's older FP8 mode, whose kernels the rowwise mode
may not share), alone and with the per-token and per-channel scales applied after it
(tensorwise_mm: what the engine runs at the row counts where rowwise is slow, quant/fp8_gpu.py).

Each time is a CUDA-graph replay of the call, as the engine runs its steps (--eager: calls
from the host, launch time included; sessions before the twenty-second timed eagerly).

With --sparse --mma, the sparse-MMA kernels (kernels/sparse24_mma.cu) beside them: the GEMM
alone on f16 activations, and the whole linear on the Triton kernel's input (e4m3 activations
and their scales: to f16, the GEMM, the K splits' sums, the scales applied); on Hopper also
the wgmma.sp kernel (kernels/sparse24_wgmma.py) on the same input, each of its forms (* the
engine's), and where CUTLASS's headers are, CUTLASS's SM90 sparse GEMM in each variant (kernels/
sparse24_cutlass.py).

Run on the GPU: python -m harness.report.fp8_gemm_sweep --preset=llama2-70b [--sparse [--mma]]
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch


def _ms(fn, iters: int = 20, graph: bool = True) -> float:  # noqa: ANN001
    """ms a call of fn; graph: replays of fn captured once as a CUDA graph, as the engine runs
    its steps (no host launch time between kernels), else eager calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def candidate_configs(m: int, swap: bool = False, sparse: bool = False) -> list:
    """Row blocks near M (one to eight of them), two weight blocks, two K steps, 4 warps for
    tiles up to 64 x 128 and 8 above, as many pipeline stages (2-4) as about 200 KB of shared
    memory holds; each with and without splitting K (auto_split_k). swap: the swapped-operand
    configs instead (weights as the MMA's A operand), at most 3 stages, without split K.
    sparse: 8 warps for the small tiles too (the expansion is arithmetic that more warps may
    hide)."""
    from harness.engine.kernels.fp8_gemm import GemmConfig

    out = []
    for bm, bn, bk, split in itertools.product(
        (16, 32, 64, 128, 256), (64, 128), (128, 256), (1,) if swap else (1, 0)
    ):
        stages = min(3 if swap else 4, 200_000 // ((bm + bn) * bk))
        warps = 4 if bm * bn <= 64 * 128 else 8
        if bm < 2 * max(m, 16) and bm * 8 >= m and stages >= 2:
            out.append(GemmConfig(bm, bn, bk, warps, stages, split, swap))
            if sparse and warps == 4:
                out.append(GemmConfig(bm, bn, bk, 8, stages, split, swap))
    return out


def parse_config(text: str):  # noqa: ANN201 (a GemmConfig)
    """A config as --config spells it, e.g. 128,64,128,4,3,swap for GemmConfig(128, 64, 128,
    4, 3, swap=True); split_k may follow the stages."""
    from harness.engine.kernels.fp8_gemm import GemmConfig

    parts = text.split(",")
    swap = parts[-1] == "swap"
    numbers = parts[:-1] if swap else parts
    if not 5 <= len(numbers) <= 6 or not all(x.isdigit() for x in numbers):
        raise argparse.ArgumentTypeError(
            f"{text!r}: want BLOCK_M,BLOCK_N,BLOCK_K,warps,stages[,split_k][,swap], "
            "e.g. 128,64,128,4,3,swap"
        )
    return GemmConfig(*map(int, numbers), swap=swap)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def linear_shapes(preset: str) -> dict[str, tuple[int, int]]:
    """name -> (N, K) of one decoder layer's linears (q|k|v and gate|up fused, as we run them)."""
    from harness.engine.model.llama import PRESETS

    c = PRESETS[preset]
    kv = c.num_key_value_heads * c.head_dim
    return {
        "qkv": (c.num_attention_heads * c.head_dim + 2 * kv, c.hidden_size),
        "o": (c.hidden_size, c.num_attention_heads * c.head_dim),
        "gate_up": (2 * c.intermediate_size, c.hidden_size),
        "down": (c.hidden_size, c.intermediate_size),
    }


def main(argv: list[str] | None = None) -> int:
    from harness.engine.kernels.fp8_gemm import config_for, fp8_gemm_reference, fp8_gemm_triton
    from harness.engine.kernels.sparse24_cutlass import VARIANT as CUTLASS_VARIANT
    from harness.engine.kernels.sparse24_cutlass import VARIANTS as CUTLASS_VARIANTS
    from harness.engine.kernels.sparse24_cutlass import build_all as build_cutlass
    from harness.engine.kernels.sparse24_cutlass import compress as cutlass_compress
    from harness.engine.kernels.sparse24_cutlass import headers_found, sparse24_cutlass_gemm
    from harness.engine.kernels.sparse24_gemm import decompress_24_triton
    from harness.engine.kernels.sparse24_mma import (
        pack_for_mma,
        sparse24_mma_gemm,
        sparse24_mma_linear,
        warpgroup_tables,
    )
    from harness.engine.kernels.sparse24_wgmma import FORM as WGMMA_FORM
    from harness.engine.kernels.sparse24_wgmma import FORMS as WGMMA_FORMS
    from harness.engine.kernels.sparse24_wgmma import sparse24_wgmma_gemm
    from harness.engine.quant.fp8 import prune_2_of_4, quantize_per_channel, quantize_per_token
    from harness.engine.quant.fp8_gpu import rowwise_mm, tensorwise_mm, unscaled_mm
    from harness.engine.quant.sparse24 import STORED_BYTES_PER_WEIGHT, compress_24

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama2-70b")
    p.add_argument("--m", type=int, action="append", help="rows (default 1 to 512)")
    sparse_help = "2:4 weights: the compressed kernel and expand + cuBLAS vs dense cuBLAS"
    p.add_argument("--sparse", action="store_true", help=sparse_help)
    swap_help = "try the swapped-operand configs (weights x activations^T) instead"
    p.add_argument("--swap", action="store_true", help=swap_help)
    mma_help = (
        "with --sparse: also the sparse-MMA kernel (kernels/sparse24_mma.cu; needs nvcc); "
        "of the Triton configs, only the engine's current one"
    )
    p.add_argument("--mma", action="store_true", help=mma_help)
    p.add_argument("--top", type=int, default=3, help="configs printed for each M, fastest first")
    eager_help = "time eager calls (host launches included) instead of CUDA-graph replays"
    p.add_argument("--eager", action="store_true", help=eager_help)
    config_help = (
        "try only these configs (repeat the flag), each spelled "
        "BLOCK_M,BLOCK_N,BLOCK_K,warps,stages[,split_k][,swap]"
    )
    p.add_argument("--config", type=parse_config, action="append", default=[], help=config_help)
    a = p.parse_args(argv)
    shapes = linear_shapes(a.preset)
    weights, compressed, packed, packed_wg, packed_cutlass = {}, {}, {}, {}, {}
    wgmma = a.mma and torch.cuda.get_device_capability() == (9, 0)  # Hopper's sm_90a
    cutlass = wgmma and headers_found()  # CUTLASS's, for its sparse GEMM
    if cutlass:
        build_cutlass()  # its variants side by side (~2 minutes), not one after another
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        w, s = quantize_per_channel(prune_2_of_4(w) if a.sparse else w)
        weights[name] = (w, s.view(1, -1).contiguous())
        if a.sparse:
            compressed[name] = compress_24(w)
            if a.mma:
                packed[name] = pack_for_mma(*compressed[name])
                if wgmma:
                    packed_wg[name] = pack_for_mma(*compressed[name], warpgroup_tables())
                if cutlass:
                    packed_cutlass[name] = cutlass_compress(w)
    scratch = torch.empty(max(n * k for n, k in shapes.values()), dtype=torch.float8_e4m3fn,
                          device="cuda") if a.sparse else None  # fmt: skip
    layer_bytes = sum(n * k for n, k in shapes.values())
    stored_bytes = layer_bytes * (STORED_BYTES_PER_WEIGHT if a.sparse else 1)
    kind = "sparse 2:4" if a.sparse else "dense"

    def cublas(name: str, xq, xsc):  # noqa: ANN001, ANN202
        w, ws = weights[name]
        return rowwise_mm(xq, xsc, w, ws, torch.bfloat16)

    def cublas_fast(name: str, xq, xsc):  # noqa: ANN001, ANN202
        w, ws = weights[name]
        return rowwise_mm(xq, xsc, w, ws, torch.bfloat16, fast_accum=True)

    def cublas_swapped(name: str, xq, xsc):  # noqa: ANN001, ANN202
        w, ws = weights[name]  # W [N, K] row-major, xq^T [K, M] column-major: _scaled_mm's layout
        out_t = torch._scaled_mm(w, xq.t(), scale_a=ws.view(-1, 1), scale_b=xsc.view(1, -1),
                                 out_dtype=torch.bfloat16)  # fmt: skip
        return out_t.t().contiguous()

    def cublas_tensorwise(name: str, xq, xsc):  # noqa: ANN001, ANN202
        return unscaled_mm(xq, weights[name][0])

    def cublas_tensorwise_scaled(name: str, xq, xsc):  # noqa: ANN001, ANN202
        return tensorwise_mm(xq, xsc, *weights[name])

    def expand_cublas(name: str, xq, xsc):  # noqa: ANN001, ANN202
        (values, meta), (w, ws) = compressed[name], weights[name]
        dense = decompress_24_triton(values, meta, scratch[: w.numel()].view(w.shape))
        return rowwise_mm(xq, xsc, dense, ws, torch.bfloat16)

    def mma_linear(name: str, xq, xsc):  # noqa: ANN001, ANN202
        return sparse24_mma_linear((xq, xsc), *packed[name], weights[name][1])

    def mma_gemm_alone(name: str, xq, xsc):  # noqa: ANN001, ANN202
        return sparse24_mma_gemm(x16[name], *packed[name])

    def wgmma_linear(name: str, xq, xsc, form: str):  # noqa: ANN001, ANN202
        return sparse24_wgmma_gemm(xq, xsc, *packed_wg[name], weights[name][1], form=form)

    def cutlass_linear(name: str, xq, xsc, variant: str):  # noqa: ANN001, ANN202
        packed = packed_cutlass[name]
        return sparse24_cutlass_gemm(xq, xsc, *packed, weights[name][1], variant=variant)

    def kernel(name: str, xq, xsc, config):  # noqa: ANN001, ANN202
        w, ws = weights[name]
        if a.sparse:
            values, meta = compressed[name]
            return fp8_gemm_triton(xq, xsc, values, ws, config=config, meta=meta)
        return fp8_gemm_triton(xq, xsc, w, ws, config=config)

    summary = []  # (M, cuBLAS ms, best Triton ms, its config) per M
    for m in a.m or [1, 16, 32, 64, 96, 128, 160, 192, 256, 384, 512]:
        xs = {name: quantize_per_token(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
              for name, (_, k) in shapes.items()}  # fmt: skip

        def shape_ms(fn, xs=xs) -> dict[str, float]:  # noqa: ANN001
            return {name: _ms(lambda name=name: fn(name, *xs[name]), graph=not a.eager)
                    for name in shapes}  # fmt: skip

        base = shape_ms(cublas)
        total = sum(base.values())
        print(f"[fp8_gemm] {a.preset} {kind} M={m}: cuBLAS (dense) {total:.3f} ms per layer = "
              f"{layer_bytes / total / 1e6:,.0f} GB/s of weights; "
              + ", ".join(f"{k} {v:.3f}" for k, v in base.items()), flush=True)  # fmt: skip
        refs = {name: fp8_gemm_reference(*xs[name], *weights[name]) for name in shapes}

        def largest_error(fn, xs=xs, refs=refs) -> float:  # noqa: ANN001
            return max(_relative_error(fn(name, *xs[name]), refs[name]) for name in shapes)

        # cuBLAS variants the engine does not use; a build may refuse one (RuntimeError: e.g.
        # rowwise fast accumulation, or M not a multiple of 16 when swapped)
        variants = [
            ("fast accumulation", cublas_fast),
            ("operands swapped (with the transpose back)", cublas_swapped),
            ("one scale a tensor, the row and column scales after it (tensorwise_mm)",
             cublas_tensorwise_scaled),
        ]  # fmt: skip
        for label, fn in variants:
            try:
                t, err = sum(shape_ms(fn).values()), largest_error(fn)
                print(f"[fp8_gemm]   cuBLAS, {label} {t:.3f} ms ({total / t:.2f}x cuBLAS); "
                      f"largest error {err:.1e} of the output's range", flush=True)  # fmt: skip
            except RuntimeError as ex:
                print(f"[fp8_gemm]   cuBLAS, {label}: failed {str(ex)[:120]}")
        try:  # the default accumulation's error beside the variants'; the GEMM alone, as the
            # engine runs it (every linear's scales go to the kernel after it: RoPE, norm, SwiGLU)
            t = sum(shape_ms(cublas_tensorwise).values())
            print(f"[fp8_gemm]   cuBLAS default accumulation: largest error "
                  f"{largest_error(cublas):.1e}; one scale a tensor, the GEMM alone (the "
                  f"engine's) {t:.3f} ms ({total / t:.2f}x cuBLAS)")  # fmt: skip
        except RuntimeError as ex:
            print(f"[fp8_gemm]   cuBLAS, one scale a tensor: failed {str(ex)[:120]}")
        if a.sparse:
            t = sum(shape_ms(expand_cublas).values())
            print(f"[fp8_gemm]   expand + cuBLAS {t:.3f} ms ({total / t:.2f}x cuBLAS)")
        if a.sparse and a.mma:  # the GEMM alone on f16 X; then the linear on the Triton
            # kernel's input, e4m3 X and its scales (X to f16, the GEMM, the splits' sums)
            x16 = {name: xs[name][0].to(torch.float16) for name in shapes}
            t, err = sum(shape_ms(mma_gemm_alone).values()), largest_error(mma_linear)
            t_linear = sum(shape_ms(mma_linear).values())
            print(f"[fp8_gemm]   sparse MMA {t:.3f} ms = {stored_bytes / t / 1e6:,.0f} GB/s "
                  f"({total / t:.2f}x cuBLAS); the linear on e4m3 X {t_linear:.3f} ms "
                  f"({total / t_linear:.2f}x); largest error {err:.1e} of the output's range",
                  flush=True)  # fmt: skip
        for form in WGMMA_FORMS if wgmma else ():  # FP8 at the sparse tensor cores' rate
            fn = functools.partial(wgmma_linear, form=form)
            t, err = sum(shape_ms(fn).values()), largest_error(fn)
            label = form.split("_")[-1] + ("*" if form == WGMMA_FORM else "")
            print(f"[fp8_gemm]   sparse wgmma {label} "
                  f"{t:.3f} ms = {stored_bytes / t / 1e6:,.0f} GB/s ({total / t:.2f}x cuBLAS); "
                  f"largest error {err:.1e} of the output's range", flush=True)  # fmt: skip
        for variant in CUTLASS_VARIANTS if cutlass else ():  # CUTLASS's SM90 sparse GEMM
            fn = functools.partial(cutlass_linear, variant=variant)
            t, err = sum(shape_ms(fn).values()), largest_error(fn)
            label = variant + ("*" if variant == CUTLASS_VARIANT else "")
            print(f"[fp8_gemm]   sparse CUTLASS {label} {t:.3f} ms = {stored_bytes / t / 1e6:,.0f} "
                  f"GB/s ({total / t:.2f}x cuBLAS); largest error {err:.1e} of the output's range",
                  flush=True)  # fmt: skip
        results = []
        current = config_for(m, a.sparse)
        tried = a.config or ([] if a.sparse and a.mma else candidate_configs(m, a.swap, a.sparse))
        for cfg in [current] + [c for c in tried if c != current]:
            try:
                for name in shapes:  # a config that computes wrong is not a candidate
                    out = kernel(name, *xs[name], cfg)
                    ref = refs[name]
                    atol = 1e-3 * ref.abs().max().item()  # as tests/gpu/test_fp8_gemm.py
                    torch.testing.assert_close(out.float(), ref.float(), rtol=1.6e-2, atol=atol)
                times = shape_ms(lambda name, *x, cfg=cfg: kernel(name, *x, cfg))
            except Exception as ex:  # noqa: BLE001 (out of shared memory, wrong results)
                print(f"[fp8_gemm]   {cfg}: failed {type(ex).__name__}: {str(ex)[:120]}")
                continue
            results.append((sum(times.values()), times, cfg))
        if results and results[0][2] == current:
            t = results[0][0]
            print(f"[fp8_gemm]   current config_for({m}): {t:.3f} ms ({total / t:.2f}x cuBLAS)")
        for t, _, cfg in sorted(results, key=lambda r: r[0])[: a.top]:
            print(f"[fp8_gemm]   triton {t:.3f} ms = {stored_bytes / t / 1e6:,.0f} GB/s "
                  f"({total / t:.2f}x cuBLAS) {cfg}", flush=True)  # fmt: skip
        if results:
            best = min(results, key=lambda r: r[0])
            summary.append((m, total, best[0], best[2]))
        for name in shapes if results else ():
            _, times, cfg = min(results, key=lambda r, name=name: r[1][name])
            print(f"[fp8_gemm]   best for {name} {shapes[name]}: {times[name]:.3f} ms "
                  f"({base[name] / times[name]:.2f}x cuBLAS) {cfg}", flush=True)  # fmt: skip
    print(f"[fp8_gemm] summary ({kind}): M, cuBLAS ms, best Triton ms, speed-up, config")
    for m, cublas_ms, triton_ms, cfg in summary:
        print(f"[fp8_gemm]   {m:5d} {cublas_ms:.3f} {triton_ms:.3f} {cublas_ms / triton_ms:.2f}x "
              f"{cfg}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
