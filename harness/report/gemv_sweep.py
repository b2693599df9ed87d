"""bf16 GEMMs of a few decode rows (SingleStream: one) on a model's linear shapes: cuBLAS
(F.linear) against the Triton GEMV's configurations (kernels/gemv.py), with the weight
bandwidth each reaches. Each shape is timed as a model step meets it: one call per layer, every
layer its own weight (so the L2, 50 MB on an H100, holds none of them), the calls captured in
one CUDA graph and replayed. Configs that compute wrong (against the fp32 reference) are
dropped.

Run on the GPU: python -m harness.report.gemv_sweep [--preset=llama2-7b] [--m=1 --m=2 ...]
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from harness.report.decode_kernel_bench import time_calls
from harness.report.fp8_gemm_sweep import linear_shapes


def candidate_configs() -> list:
    """Weight tiles that keep 32 or 64 fp32 partial sums a thread, 4 or 8 warps, with and
    without software pipelining (num_stages 3)."""
    from harness.engine.kernels.gemv import GemvConfig

    out = []
    for bn, bk, warps, stages in itertools.product(
        (4, 8, 16, 32, 64), (128, 256, 512, 1024), (4, 8), (1, 3)
    ):
        if bn * bk // (32 * warps) in (32, 64):
            out.append(GemvConfig(bn, bk, warps, stages))
    return out


def parse_config(text: str):  # noqa: ANN201 (a GemvConfig)
    """A config as --config spells it: BLOCK_N,BLOCK_K,warps,stages, e.g. 8,1024,8,1."""
    from harness.engine.kernels.gemv import GemvConfig

    parts = text.split(",")
    if len(parts) != 4 or not all(x.isdigit() for x in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: want BLOCK_N,BLOCK_K,warps,stages")
    return GemvConfig(*map(int, parts))


def main(argv: list[str] | None = None) -> int:
    from harness.engine.kernels.gemv import config_for, gemv_reference, gemv_triton
    from harness.engine.model.llama import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama2-7b")
    p.add_argument("--m", type=int, action="append", help="rows of x (default 1)")
    p.add_argument("--top", type=int, default=3, help="configs printed per shape, fastest first")
    p.add_argument("--config", type=parse_config, action="append", default=[],
                   help="try only these configs (repeat the flag)")  # fmt: skip
    a = p.parse_args(argv)
    c = PRESETS[a.preset]
    shapes = linear_shapes(a.preset) | {"lm_head": (c.vocab_size, c.hidden_size)}
    rows = a.m or [1]
    configs = a.config or candidate_configs()
    cublas_total, best_total = dict.fromkeys(rows, 0.0), dict.fromkeys(rows, 0.0)
    for name, (n, k) in shapes.items():
        calls = 1 if name == "lm_head" else c.num_hidden_layers  # calls a step
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(calls)]
        gb = n * k * 2 / 1e9  # weight bytes a call, in GB
        for m in rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            base = time_calls([lambda w=w, x=x: F.linear(x, w) for w in ws])
            ref = gemv_reference(x, ws[0])
            current = config_for(n)
            results = []
            for cfg in [current] + [cf for cf in configs if cf != current]:
                try:
                    out = gemv_triton(x, ws[0], cfg)
                    torch.testing.assert_close(out.float(), ref.float(), rtol=1.6e-2, atol=1e-2)
                    us = time_calls([lambda w=w, x=x, cfg=cfg: gemv_triton(x, w, cfg) for w in ws])
                except Exception as ex:  # noqa: BLE001 (out of resources, wrong results)
                    print(f"[gemv] {name} {cfg}: failed {type(ex).__name__}: {str(ex)[:120]}")
                    continue
                results.append((us, cfg))
            now = f"{results[0][0]:.1f} us" if results and results[0][1] == current else "failed"
            print(f"[gemv] {a.preset} {name} (N={n}, K={k}) M={m}: cuBLAS {base:.1f} us = "
                  f"{gb / base * 1e3:.2f} TB/s; config_for's {now}", flush=True)  # fmt: skip
            results.sort(key=lambda r: r[0])
            for us, cfg in results[: a.top]:
                print(f"[gemv]   triton {us:.1f} us = {gb / us * 1e3:.2f} TB/s ({base / us:.2f}x "
                      f"cuBLAS) {cfg}", flush=True)  # fmt: skip
            cublas_total[m] += base * calls
            best_total[m] += (results[0][0] if results else base) * calls
        del ws
    for m in rows:
        print(
            f"[gemv] {a.preset} M={m}, a step's linears: cuBLAS {cublas_total[m] / 1e3:.3f} ms, "
            f"best Triton per shape {best_total[m] / 1e3:.3f} ms "
            f"({cublas_total[m] / best_total[m]:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
