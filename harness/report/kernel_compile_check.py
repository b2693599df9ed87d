"""Compile the FP8 GEMM, 2:4, GEMV, paged-decode and RoPE kernels for Hopper (sm_90), no GPU.

For every block config the engine may pick (kernels/fp8_gemm.py: CONFIGS and SPARSE_CONFIGS),
the 2:4 expansion kernel, the bf16 GEMV's configs, the paged decode and its split combine, and
RoPE: Triton's compiler
and its bundled ptxas build the cubin for sm_90 with the engine's launch options (warps,
stages) and 16-byte alignment assumed as the JIT does for aligned arguments; prints registers,
spill stack, shared memory, which MMA was used, the fp32 promotion adds and a GEMM's SASS
instructions per K step, and exits 1 if a kernel fails to compile, spills, loads a GEMM
tile synchronously inside its K loop, or has its wgmma serialized by ptxas. A team without a
GPU catches these before device time. Needs only `pip install triton` (the CPU torch suffices).

python -m harness.report.kernel_compile_check [--arch=90]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

ALIGNED = "tt.divisibility"


def spills(usage: dict) -> bool:
    """Whether a build spills registers (stack or local memory)."""
    return usage.get("STACK", 0) > 0 or usage.get("LOCAL", 0) > 0


def _compile(kernel, signature: dict, constexprs: dict, aligned: list[str], arch: int,
             **options):  # noqa: ANN001, ANN003, ANN202  # fmt: skip
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    attrs = {(names.index(n),): [[ALIGNED, 16]] for n in aligned}
    src = ASTSource(kernel, {**signature, **dict.fromkeys(constexprs, "constexpr")},
                    constexprs, attrs)  # fmt: skip
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def _cuobjdump(compiled, flag: str) -> str:  # noqa: ANN001
    """`cuobjdump flag` on the cubin, with the cuobjdump that ships with Triton."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([str(tool), flag, f.name], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip


def serialized(compiled, arch: int) -> bool:  # noqa: ANN001
    """Whether Triton's bundled ptxas, building the kernel's PTX again, reports its wgmma
    serialized (each MMA waiting for the one before; Triton does not show ptxas's notes)."""
    import triton

    from harness.engine.kernels.cpu_build import serialized_wgmma

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"  # wgmma needs sm_90a
    with tempfile.TemporaryDirectory() as d:
        ptx = Path(d) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        out = subprocess.run([str(tool), f"-arch={gpu}", str(ptx), "-o", str(Path(d) / "k.o")],
                             capture_output=True, text=True, check=True)  # fmt: skip
    return bool(serialized_wgmma(out.stdout + out.stderr))


def resource_usage(compiled) -> dict[str, int]:  # noqa: ANN001
    """REG, STACK, ... of the cubin."""
    out = _cuobjdump(compiled, "--dump-resource-usage")
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", out)}


def loop_instructions(sass: str) -> int:
    """Instructions in the longest backward branch's body of `cuobjdump -sass` output (a GEMM's
    K loop): the work a warp issues per K step. The 2:4 kernel's speed pointed to this as its
    bound, not memory (docs/benchmarks.md, thirteenth session): a figure to bring down without
    a GPU."""
    addrs = [int(a, 16) for a in re.findall(r"^\s*/\*([0-9a-f]{4,})\*/\s+\S", sass, re.M)]
    branch = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/[^;]*\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)", re.M)
    pairs = [(int(t, 16), int(a, 16)) for a, t in branch.findall(sass)]
    loops = [(target, at) for target, at in pairs if target < at]
    if not loops:
        return 0
    start, end = max(loops, key=lambda loop: loop[1] - loop[0])
    return sum(start <= a <= end for a in addrs)


def sync_loads_in_loop(ttgir: str) -> int:
    """Global loads that the first loop of a kernel's TTGIR issues synchronously (each K step
    then waits for memory; tiles should arrive by async copy, pipelined ahead)."""
    start = ttgir.find("scf.for")
    return ttgir[start : ttgir.find("scf.yield", start)].count("tt.load ") if start >= 0 else 0


def check_gemm_configs(arch: int = 90) -> list[tuple[str, dict | str]]:
    """(label, usage or error) for every (config, weight format) the engine may run."""
    from harness.engine.kernels import fp8_gemm

    rows = []
    for sparse, table in ((False, fp8_gemm.CONFIGS), (True, fp8_gemm.SPARSE_CONFIGS)):
        wt = "*u8" if sparse else "*fp8e4nv"
        signature = {
            "x_ptr": "*fp8e4nv", "xs_ptr": "*fp32", "w_ptr": wt, "meta_ptr": wt, "ws_ptr": "*fp32",
            "out_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "stride_x": "i32",
            "stride_w": "i32", "stride_meta": "i32", "stride_out": "i32",
        }  # fmt: skip
        aligned = [n for n in signature if n != "M"]
        for max_m, cfg in table:
            label = f"{'sparse' if sparse else 'dense'} M<={max_m} {cfg}"
            splits = cfg.split_k or 2  # auto (0) may split: compile the split form
            constexprs = cfg.constexprs(sparse, splits, even_k=True)
            try:
                k = _compile(fp8_gemm._fp8_gemm_kernel, signature, constexprs, aligned, arch,
                             num_warps=cfg.num_warps, num_stages=cfg.num_stages)  # fmt: skip
            except Exception as ex:  # noqa: BLE001 (report every config, then fail)
                rows.append((label, f"{type(ex).__name__}: {str(ex)[:300]}"))
                continue
            ptx = k.asm["ptx"]
            usage = resource_usage(k) | {
                "shared": k.metadata.shared, "wgmma": "wgmma" in ptx,
                "expect_wgmma": cfg.uses_wgmma, "serialized_wgmma": serialized(k, arch),
                "promote_adds": ptx.count("add.f32"),
                "sync_loads_in_k_loop": sync_loads_in_loop(k.asm["ttgir"]),
                "k_loop_instructions": loop_instructions(_cuobjdump(k, "-sass")),
            }  # fmt: skip
            rows.append((label, usage))
    return rows


def check_other_kernels(arch: int = 90) -> list[tuple[str, dict | str]]:
    """The 2:4 expansion kernel, the GEMV, the paged decode and its split combine, RoPE (with
    and without the KV-cache write, with deferred FP8 scales in), the 70B's residual norm
    (with deferred FP8 scales in and e4m3 out, or neither), as the engine launches them (4
    warps and Triton's default stages unless a case gives its launch options)."""
    import torch

    from harness.engine.kernels import gemv, paged_attention, rms_norm, rope, sparse24_gemm

    cases = [
        ("decompress_24", sparse24_gemm._decompress_24_kernel,
         {"v_ptr": "*u8", "m_ptr": "*u8", "out_ptr": "*u8", "N": "i32", "K": "i32",
          "stride_v": "i32", "stride_m": "i32", "stride_out": "i32"},
         {"BLOCK_N": 32, "BLOCK_K": 256, "EVEN_K": True}),
    ]  # fmt: skip
    for cache, splits, group, keys in (("bf16", 1, 8, 0), ("bf16", 9, 8, 0), ("fp8e4nv", 32, 8, 0),
                                       ("bf16", 17, 1, 0), ("fp8e4nv", 1, 1, 0),
                                       ("fp8e4nv", 16, 8, 256), ("bf16", 8, 8, 512)):  # fmt: skip
        tile = paged_attention.decode_tiling(
            torch.float8_e4m3fn if cache == "fp8e4nv" else torch.bfloat16, fixed_splits=keys > 0
        )  # the engine's tiling for this cache and splits
        cases.append((
            f"paged_decode cache={cache} NUM_SPLITS={splits} G={group} BLOCK_N={tile.block_n} "
            f"num_warps={tile.num_warps} num_stages={tile.num_stages} fp16_dot={tile.fp16_dot}"
            f" SPLIT_KEYS={keys}",
            paged_attention._paged_decode_kernel,
            {"q_ptr": "*bf16", "k_cache_ptr": f"*{cache}", "v_cache_ptr": f"*{cache}",
             "tables_ptr": "*i64", "ctx_ptr": "*i32", "work_ptr": "*i32", "acc_ptr": "*fp32",
             "ml_ptr": "*fp32", "plane": "i32", "stride_qb": "i32", "stride_qh": "i32",
             "stride_tb": "i32", "stride_ch": "i32", "stride_cblk": "i32", "qk_scale": "fp32",
             "v_scale": "fp32"},
            {"G": group, "G_PAD": 16, "D": 128, "BLOCK_SIZE": 16, "BLOCK_N": tile.block_n,
             "NUM_SPLITS": splits, "PRECISION": "tf32", "FP16_DOT": tile.fp16_dot,
             "SPLIT_KEYS": keys},
            {"num_warps": tile.num_warps}
            | ({} if tile.num_stages is None else {"num_stages": tile.num_stages}),
        ))  # fmt: skip
    for write_kv, cache, scaled in ((False, "bf16", False), (True, "bf16", False),
                                    (True, "fp8e4nv", False), (True, "fp8e4nv", True)):  # fmt: skip
        cases.append((
            f"rope write_kv={write_kv} cache={cache} fp8_scales_in={scaled}", rope._rope_kernel,
            {"x_ptr": "*bf16", "pos_ptr": "*i64", "cs_ptr": "*bf16", "num_heads": "i32",
             "stride_tok": "i32", "stride_head": "i32", "stride_pos": "i32", "v_ptr": "*bf16",
             "k_cache_ptr": f"*{cache}", "v_cache_ptr": f"*{cache}", "slot_ptr": "*i64",
             "num_q_heads": "i32", "num_kv_heads": "i32", "stride_v": "i32", "stride_ch": "i32",
             "inv_scale": "fp32", "row_ptr": "*fp32", "col_ptr": "*fp32"},
            {"HALF": 64, "BLOCK_H": 128, "WRITE_KV": write_kv, "KV_BLOCK_H": 8,
             "IS_FP8": cache == "fp8e4nv", "SCALED": scaled},
        ))  # fmt: skip
    for splits, keys, group in ((2, 0, 8), (9, 0, 1), (32, 0, 8), (16, 256, 8), (4, 0, 4)):
        s_pad = 1 << (splits - 1).bit_length()
        heads = paged_attention.combine_heads(group, s_pad)
        cases.append((
            f"combine_splits NUM_SPLITS={splits} SPLIT_KEYS={keys} HEADS={heads}",
            paged_attention._combine_splits_kernel,
            {"acc_ptr": "*fp32", "ml_ptr": "*fp32", "out_ptr": "*bf16", "ctx_ptr": "*i32",
             "plane": "i32", "num_heads": "i32"},
            {"NUM_SPLITS": splits, "S_PAD": s_pad, "D": 128, "HEADS": heads, "SPLIT_KEYS": keys},
            {"num_warps": 8 if heads * s_pad >= 64 else 4},  # as paged_decode launches it
        ))  # fmt: skip
    for fp8 in (False, True):
        cases.append((
            f"rms_norm H=8192 scales_in={fp8} quant_out={fp8}", rms_norm._rms_norm_kernel,
            {"x_ptr": "*bf16", "res_ptr": "*bf16", "w_ptr": "*bf16",
             "out_ptr": "*fp8e4nv" if fp8 else "*bf16", "row_ptr": "*fp32", "col_ptr": "*fp32",
             "qscale_ptr": "*fp32", "H": "i32", "stride_x": "i32", "stride_res": "i32",
             "stride_out": "i32", "eps": "fp32"},
            {"HAS_RESIDUAL": True, "SCALED": fp8, "QUANT": fp8, "BLOCK": 8192},
            {"num_warps": 16},
        ))  # fmt: skip
    for cfg in (gemv.WIDE_CONFIG, gemv.NARROW_CONFIG):
        for even_k in (True, False):
            cases.append((
                f"gemv {cfg} EVEN_K={even_k}", gemv._gemv_kernel,
                {"x_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*bf16", "N": "i32", "K": "i32",
                 "stride_x": "i32", "stride_w": "i32", "stride_out": "i32"},
                {"BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "EVEN_K": even_k},
                {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
            ))  # fmt: skip
    rows = []
    for label, kernel, signature, constexprs, *options in cases:
        try:
            launch = {"num_warps": 4} | (options[0] if options else {})
            k = _compile(kernel, signature, constexprs, list(signature), arch, **launch)
        except Exception as ex:  # noqa: BLE001
            rows.append((label, f"{type(ex).__name__}: {str(ex)[:300]}"))
            continue
        rows.append((label, resource_usage(k)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: Hopper)")
    a = p.parse_args(argv)
    bad = 0
    for label, usage in check_gemm_configs(a.arch) + check_other_kernels(a.arch):
        failed = (isinstance(usage, str) or spills(usage) or usage.get("serialized_wgmma")
                  or usage.get("sync_loads_in_k_loop", 0) > 0)  # fmt: skip
        bad += failed
        print(f"[compile sm_{a.arch}] {'FAIL' if failed else 'ok  '} {label}: {usage}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
