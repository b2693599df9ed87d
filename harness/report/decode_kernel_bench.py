"""Paged decode attention kernel variants, timed in one process on one GPU (same-run baseline).

For each shape (the 7B's 32 KV heads with one query head each, the 70B's 8 KV heads with 8),
the kernel as the engine's CUDA graphs launch it (splits from choose_num_splits with the
graph's 4,096-key maximum), plus its combine, is captured 20 times in a CUDA graph (twice
where one call reads over 1 GiB) and replayed; the time per call and the K+V bytes read per
second are printed for each variant (Triton's software-pipelining depth, keys a tile,
warps, fp16 products for an FP8 cache). Each of the calls reads other cache blocks (its own
block table), so that a call finds its K and V in HBM, not in the L2 (50 MB on an H100; the
7B at batch 1 reads 16 MB), as inside a model step. Then the 70B's decode as a padded CUDA
graph runs it (`padded_graphs`): real rows beside rows of no context, in the splits chosen for
the graph's rows, for the real rows, and 1 to 8; then over unequal contexts, the engine's
equal parts of each request against splits of a fixed number of keys (`unequal_contexts`);
and the tilings of the FP8 cache in those splits (`split_tilings`).
Run: python -m harness.report.decode_kernel_bench [--context=1000] [--part=unequal]
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch

from harness.engine.kernels.paged_attention import (
    DecodeTiling,
    choose_num_splits,
    decode_splits,
    decode_tiling,
    paged_decode,
    split_work,
)

# (name, batch, kv heads, query heads per kv head, cache dtype)
SHAPES = [
    ("7b b=1", 1, 32, 1, torch.bfloat16),
    ("7b b=8", 8, 32, 1, torch.bfloat16),
    ("70b b=1 fp8", 1, 8, 8, torch.float8_e4m3fn),
    ("70b b=32 fp8", 32, 8, 8, torch.float8_e4m3fn),
    ("70b b=160 fp8", 160, 8, 8, torch.float8_e4m3fn),
    ("7b b=448 fp8", 448, 32, 1, torch.float8_e4m3fn),  # the 7B Offline's decode steps
]
# Tilings beside the engine's (decode_tiling: its row comes first); fp16 products only on
# FP8 shapes (bf16 costs 26% more instructions a tile in the sm_90 build).
VARIANTS = [
    DecodeTiling(block_n=bn, num_warps=w, num_stages=st, fp16_dot=fp16)
    for st, bn, w, fp16 in [(None, 64, 4, False), (1, 64, 4, False), (3, 64, 4, False),
                            (1, 128, 4, False), (1, 32, 2, False), (None, 64, 4, True),
                            (1, 64, 4, True), (1, 32, 2, True), (1, 32, 1, True),
                            (2, 32, 2, True), (1, 16, 1, True)]
]  # fmt: skip
CALLS = 20  # calls per CUDA graph, each with its own block table
D, BS = 128, 16  # head dim, keys a cache block
# (real rows, graph rows): 33-64 rows run the 80-row graph of the H100's 256-sequence engines,
# 17-112 the 112-row one of the H200's 1,024 (docs/graph_times/); 64 of 64 for comparison
PADDED = [(40, 80), (60, 80), (64, 64), (40, 64), (20, 112), (60, 112)]
HKV_70B, GROUP_70B, FP8 = 8, 8, torch.float8_e4m3fn  # the 70B's KV heads, query heads each, cache
BIG_CALL_BYTES = 1 << 30  # a call reading this much K+V is far past the L2: 2 tables suffice


def time_calls(fns: list[Callable[[], object]], replays: int = 20) -> float:
    """Microseconds per call, from a CUDA graph of the calls fns, replayed `replays` times."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fns[0]()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (len(fns) * replays)


def _inputs(
    batch: int, hkv: int, group: int, cache_dtype: torch.dtype, context: int, calls: int,
    cache_blocks: int,
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """(q, k_cache, v_cache) and `calls` block tables of `batch` rows, no block in two."""
    blocks = -(-context // BS)
    total = max(cache_blocks, calls * batch * blocks)
    k_cache = torch.empty(hkv, total, BS, D, device="cuda", dtype=cache_dtype)
    v_cache = torch.empty(hkv, total, BS, D, device="cuda", dtype=cache_dtype)
    for cache in (k_cache, v_cache):  # fp8: bytes below 0x38 are values in [0, 1)
        if cache_dtype == torch.bfloat16:
            cache.normal_()
        else:
            cache.view(torch.uint8).random_(0, 0x38)
    perm = torch.randperm(total, device="cuda")[: calls * batch * blocks]
    q = torch.randn(batch, hkv * group, D, device="cuda", dtype=torch.bfloat16)
    return (q, k_cache, v_cache), list(perm.view(calls, batch, blocks))


def padded_graphs(context: int, sms: int) -> None:
    """The 70B FP8 decode as a padded CUDA graph runs it: `real` rows attend to `context` keys,
    the rest of the graph's rows to none, in the splits chosen for the graph's rows (the
    engine), for the real rows, and 1 to 8; the time per layer and the real rows' K+V read
    rate."""
    hkv, group, dtype = HKV_70B, GROUP_70B, FP8
    for real, graph in PADDED:
        args, tables = _inputs(graph, hkv, group, dtype, context, CALLS, 0)
        ctx = torch.zeros(graph, device="cuda", dtype=torch.int32)
        ctx[:real] = context
        nbytes = 2 * real * hkv * context * D * dtype.itemsize
        engine, for_real = (choose_num_splits(r, hkv, 4096, sms) for r in (graph, real))
        for splits in sorted({engine, for_real, 1, 2, 4, 8}):
            fns = [functools.partial(paged_decode, *args, t, ctx, D**-0.5, splits) for t in tables]
            us = time_calls(fns)
            tag = "graph's rows (engine)" if splits == engine else ""
            tag = tag or ("real rows'" if splits == for_real else "")
            print(f"70b fp8 {real:3d} of {graph:3d} rows splits={splits:2d} ({tag:21s}) "
                  f"{us:8.1f} us {nbytes / us / 1e6:6.2f} TB/s")  # fmt: skip


# (graph rows, decoding rows, shortest context) over contexts of up to 2,048 keys: the tail
# cases last, so that the others draw the contexts they drew before them
UNEQUAL = [(16, 16, 16), (40, 40, 16), (64, 64, 16), (160, 160, 16), (320, 150, 16),
           (4, 4, 1024), (8, 8, 1024)]  # fmt: skip
# FP8 tilings for the fixed splits (`split_tilings`), timed after the engine's
SPLIT_VARIANTS = [
    DecodeTiling(block_n=bn, num_warps=w, num_stages=st, fp16_dot=True)
    for st, bn, w in [(1, 32, 1), (2, 32, 1), (3, 32, 1), (1, 16, 1), (2, 16, 1), (1, 64, 1),
                      (2, 64, 1), (1, 32, 2), (2, 32, 2), (1, 64, 2), (2, 64, 2), (3, 64, 4)]
]  # fmt: skip


def _unequal_cases():  # noqa: ANN202 (a generator)
    """For each UNEQUAL case of the 70B's FP8 cache: (rows, real, shortest, ctx, args, tables,
    K+V bytes), the contexts from one seeded draw."""
    hkv, group, dtype = HKV_70B, GROUP_70B, FP8
    gen = torch.Generator().manual_seed(0)
    for rows, real, shortest in UNEQUAL:
        lens = torch.zeros(rows, dtype=torch.int32)
        lens[:real] = torch.randint(shortest, 2049, (real,), generator=gen, dtype=torch.int32)
        args, tables = _inputs(rows, hkv, group, dtype, 2048, CALLS, 0)
        nbytes = 2 * int(lens.sum()) * hkv * D * dtype.itemsize
        yield rows, real, shortest, lens.to("cuda"), args, tables, nbytes


def _time_decode(
    args: tuple[torch.Tensor, ...], tables: list[torch.Tensor], ctx: torch.Tensor, splits: int,
    split_keys: int, tiling: DecodeTiling | None = None,
) -> float:  # fmt: skip
    """Microseconds a call of paged_decode over the tables, the work list made once (a step)."""
    work = split_work(ctx, split_keys, splits) if split_keys else None
    fns = [
        functools.partial(
            paged_decode, *args, t, ctx, D**-0.5, splits, split_keys=split_keys, work=work,
            tiling=tiling,
        )
        for t in tables
    ]  # fmt: skip
    return time_calls(fns)


def unequal_contexts(sms: int) -> None:
    """The 70B FP8 decode over contexts of 16-2,048 keys (one seeded draw), as a graph runs it:
    the engine's equal parts of each request against splits of a fixed number of keys
    (engine.decode_split_keys; only those holding keys run, from a work list made once a step)
    for a graph sized to 4,096 positions (the model's) or 2,048 (engine.max_model_len at
    MLPerf's lengths). The fifth case has 320 rows of which 150 decode, as a mixed graph whose
    other rows (prompts, padding) have no cached keys; the last two are an Offline run's tail (a
    few long requests left: 1,024-2,048 keys). The decoding rows' K+V read rate."""
    for rows, real, shortest, ctx, args, tables, nbytes in _unequal_cases():
        runs = [(0, 4096)] + [(k, m) for k in (64, 128, 256, 512) for m in (4096, 2048)]
        timed = set()
        for keys, max_context in runs:
            splits, split_keys = decode_splits(rows, HKV_70B, max_context, sms, keys)
            if (splits, split_keys) in timed:  # 64 keys in 4,096 positions: 128 (32 splits)
                continue
            timed.add((splits, split_keys))
            us = _time_decode(args, tables, ctx, splits, split_keys)
            label = f"splits of {split_keys} keys" if split_keys else "equal parts (engine)"
            print(f"70b fp8 {real:3d} of {rows:3d} rows of {shortest}-2048 keys, graph of "
                  f"{max_context} keys, {splits:2d} splits, {label:22s} {us:8.1f} us "
                  f"{nbytes / us / 1e6:6.2f} TB/s")  # fmt: skip


def split_tilings(sms: int, split_keys: int = 256) -> None:
    """The FP8 tilings (keys a tile, warps, pipelining depth) for the 70B's decode in splits of
    split_keys keys from the work list, over the unequal contexts of `unequal_contexts`, in a
    graph sized to 4,096 positions; each against the engine's tiling in the same process."""
    engine = decode_tiling(FP8, fixed_splits=True)
    for rows, real, shortest, ctx, args, tables, nbytes in _unequal_cases():
        splits, keys = decode_splits(rows, HKV_70B, 4096, sms, split_keys)
        ref = paged_decode(*args, tables[0], ctx, D**-0.5, splits, split_keys=keys).float()
        for tile in [engine] + [v for v in SPLIT_VARIANTS if v != engine]:
            out = paged_decode(*args, tables[0], ctx, D**-0.5, splits, split_keys=keys, tiling=tile)
            err = ((out.float() - ref).norm() / ref.norm()).item()
            us = _time_decode(args, tables, ctx, splits, keys, tile)
            label = f"stages={tile.num_stages} keys={tile.block_n} warps={tile.num_warps}"
            label += " (engine)" if tile == engine else ""
            print(f"70b fp8 {real:3d} of {rows:3d} rows of {shortest}-2048 keys, {keys}-key "
                  f"splits, {label:34s} {us:8.1f} us {nbytes / us / 1e6:6.2f} TB/s "
                  f"rel.err vs engine {err:.1e}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=1000, help="keys per request")
    p.add_argument(
        "--cache_blocks", type=int, default=0,
        help="blocks in each cache (default: enough for 20 disjoint tables)",
    )  # fmt: skip
    p.add_argument("--part", choices=("all", "tilings", "padded", "unequal", "split_tilings"),
                   default="all", help="time only that part (see above)")  # fmt: skip
    a = p.parse_args(argv)
    if a.context < 1 or a.cache_blocks < 0:
        p.error(f"--context={a.context} --cache_blocks={a.cache_blocks}: use >= 1 and >= 0")
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (it times Triton kernels); run it on the GPU machine")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name(0)}, {sms} SMs, {a.context} keys per request")
    shapes = SHAPES if a.part in ("all", "tilings") else []
    for name, batch, hkv, group, cache_dtype in shapes:
        nbytes = 2 * batch * hkv * a.context * D * cache_dtype.itemsize
        calls = CALLS if nbytes < BIG_CALL_BYTES else 2
        args, tables = _inputs(batch, hkv, group, cache_dtype, a.context, calls, a.cache_blocks)
        ctx = torch.full((batch,), a.context, device="cuda", dtype=torch.int32)
        splits = choose_num_splits(batch, hkv, 4096, sms)
        ref = paged_decode(*args, tables[0], ctx, D**-0.5, splits)
        engine = decode_tiling(cache_dtype)
        for tile in [engine] + [v for v in VARIANTS if v != engine]:
            if tile.fp16_dot and cache_dtype.itemsize != 1:
                continue
            calls = [
                functools.partial(paged_decode, *args, t, ctx, D**-0.5, splits, tiling=tile)
                for t in tables
            ]
            err = ((calls[0]().float() - ref.float()).norm() / ref.float().norm()).item()
            us = time_calls(calls)
            label = f"stages={tile.num_stages or 'default'} keys={tile.block_n}"
            label += f" warps={tile.num_warps}" + (" fp16" if tile.fp16_dot else "")
            label += " (engine)" if tile == engine else ""
            print(
                f"{name:14s} splits={splits:2d} {label:46s} {us:8.1f} us "
                f"{nbytes / us / 1e6:6.2f} TB/s  rel.err vs engine {err:.1e}"
            )
    if a.part in ("all", "padded"):
        padded_graphs(a.context, sms)
    if a.part in ("all", "unequal"):
        unequal_contexts(sms)
    if a.part in ("all", "split_tilings"):
        split_tilings(sms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
