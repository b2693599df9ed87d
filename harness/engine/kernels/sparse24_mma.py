"""Compressed 2:4 FP8 weights on the sparse tensor cores: sparse24_mma.cu's kernel, its
weight packing and its launch (experimental: the engine's `sparse_kernel: mma`, off by default).

Packing (`pack_for_mma`): the compressed weight of quant/sparse24.py (values [N, K/2] e4m3,
meta [N, K/8] uint8, both in row order) is cut into tiles of 16 rows x 64 inputs, each the A
operand of two mma.sp m16n8k32 (inputs 0-31 and 32-63 of the tile, "halves"). For each tile,
lane l = 4 * g + t of a warp gets 16 value bytes and one 32-bit metadata word:

* value byte 8 * h + 2 * r + e (half h, register r, element e) holds the kept value e of row
  g + 8 * (r % 2), group t + 4 * (r // 2) of half h: the f16 m16n8k16 A fragment layout, on the
  compressed row (a group of 4 inputs is 2 compressed columns);
* the metadata word of lane (g, t) belongs to half t // 2 (mma selector 0 for lanes t = 0, 1,
  1 for t = 2, 3): its low 16 bits hold the positions of row g's groups 4 * (t % 2) ... + 3
  (one nibble a group, i0 | i1 << 2, as quant/sparse24.py stores them), its high 16 bits
  those of row g + 8.

These layouts are the PTX ISA's for mma.sp (tests/gpu/test_sparse24_mma.py checks them
against the hardware one register at a time, with `mma_sp_f16_probe`). `unpack_from_mma`
reads the packed tiles back by the same rules; the unit tests check the round trip. With
`warpgroup_tables`, the same two lay 64-row tiles over a warpgroup's 128 threads for the
wgmma.sp kernel (sparse24_wgmma.py).

The kernel is built with the CUDA compiler (nvcc) once per source and GPU, cached beside the
CPU kernels (cpu_build.cache_dir()), and launched through the CUDA driver API on torch's
current stream, so a CUDA graph captures it like any torch op.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from harness.engine.kernels.cpu_build import cache_dir, compile_into

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("sparse24_mma.cu")
TILE_ROWS, TILE_INPUTS = 16, 64
BLOCK_ROWS = 128  # output rows a block, as in sparse24_mma.cu
# The kernel's forms: (name, tokens a block, 64-input steps a stage), the first whose tokens
# cover T, else the last.
FORMS = (
    ("sparse24_mma_gemm_t16", 16, 4),
    ("sparse24_mma_gemm_t32", 32, 4),
    ("sparse24_mma_gemm_t64", 64, 2),
)
ROW_TILES_PER_CHUNK = 256  # pack this many row tiles at a time (bounded temporaries)
# Where each packed byte and nibble of a tile comes from: value_row, value_col [threads, 16];
# meta_row, meta_group [threads, 8].
Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@functools.cache
def lane_tables() -> Tables:
    """Where each packed byte and nibble of a tile comes from (see the module's docstring):
    value_row, value_col [32 lanes, 16 bytes]: the tile's row (0-15) and compressed column
    (0-31); meta_row, meta_group [32 lanes, 8 nibbles]: the row and group (0-15)."""
    value_row = torch.empty(32, 16, dtype=torch.long)
    value_col = torch.empty(32, 16, dtype=torch.long)
    meta_row = torch.empty(32, 8, dtype=torch.long)
    meta_group = torch.empty(32, 8, dtype=torch.long)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for h in range(2):
            for r in range(4):
                for e in range(2):
                    group = 8 * h + t + 4 * (r // 2)
                    value_row[lane, 8 * h + 2 * r + e] = g + 8 * (r % 2)
                    value_col[lane, 8 * h + 2 * r + e] = 2 * group + e
        h, quarter = divmod(t, 2)
        for i in range(4):
            group = 8 * h + 4 * quarter + i
            meta_row[lane, i], meta_group[lane, i] = g, group
            meta_row[lane, 4 + i], meta_group[lane, 4 + i] = g + 8, group
    return value_row, value_col, meta_row, meta_group


@functools.cache
def warpgroup_tables() -> Tables:
    """lane_tables for wgmma.mma_async.sp m64nNk64 e4m3 (sparse24_wgmma_gemm): a tile of 64
    rows x 64 inputs over a warpgroup's 128 threads, thread t = 32 w + 4 g + q holding 16
    value bytes (register r, byte j: row 16 w + g + 8 (r % 2), compressed column
    16 (r // 2) + 4 q + j) and one metadata word (selector 0: nibble c is row 16 w + g +
    8 (q % 2), group 8 (q // 2) + c), as the PTX ISA and CUTLASS lay them out."""
    value_row = torch.empty(128, 16, dtype=torch.long)
    value_col = torch.empty(128, 16, dtype=torch.long)
    meta_row = torch.empty(128, 8, dtype=torch.long)
    meta_group = torch.empty(128, 8, dtype=torch.long)
    for thread in range(128):
        w, lane = divmod(thread, 32)
        g, q = divmod(lane, 4)
        for r in range(4):
            for j in range(4):
                value_row[thread, 4 * r + j] = 16 * w + g + 8 * (r % 2)
                value_col[thread, 4 * r + j] = 16 * (r // 2) + 4 * q + j
        for c in range(8):
            meta_row[thread, c] = 16 * w + g + 8 * (q % 2)
            meta_group[thread, c] = 8 * (q // 2) + c
    return value_row, value_col, meta_row, meta_group


def _tiles(a: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """[R*rows, S*width] -> [R, S, rows * width]: each rows x width tile's elements."""
    n, cols = a.shape
    return (
        a.view(n // rows, rows, cols // width, width)
        .permute(0, 2, 1, 3)
        .reshape(n // rows, cols // width, rows * width)
    )


def fits_tiles(n: int, k: int, rows: int = TILE_ROWS) -> bool:
    """Whether an [n, k] weight cuts into the kernel's rows x 64 tiles."""
    return n % rows == 0 and k % TILE_INPUTS == 0


def _check_shape(n: int, k: int, rows: int) -> None:
    if not fits_tiles(n, k, rows):
        raise ValueError(
            f"the sparse-MMA kernel needs out_features % {rows} == 0 and in_features % "
            f"{TILE_INPUTS} == 0; got [{n}, {k}]: use the Triton 2:4 kernel for this layer"
        )


def pack_for_mma(
    values: torch.Tensor, meta: torch.Tensor, tables: Tables | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N, K/2] e4m3, meta [N, K/8] uint8) -> (packed values [N/R, K/64, L, 16]
    uint8, packed meta [N/R, K/64, L] int32), on the tensors' device, for tables' L threads
    and tiles of R rows (lane_tables: a warp, 16 rows; warpgroup_tables: 128, 64)."""
    value_row, value_col, meta_row, meta_group = (
        x.to(values.device) for x in (tables or lane_tables())
    )
    threads, tile_rows = value_row.shape[0], int(value_row.max()) + 1
    n, k = values.shape[0], values.shape[1] * 2
    _check_shape(n, k, tile_rows)
    value_index = (value_row * 32 + value_col).view(-1)  # into a tile's R x 32 values
    meta_index = (meta_row * 16 + meta_group).view(-1)  # into a tile's R x 16 nibbles
    weights = torch.tensor([1, 16], dtype=torch.uint8, device=values.device)
    shape = (n // tile_rows, k // 64, threads)
    packed_v = torch.empty(*shape, 16, dtype=torch.uint8, device=values.device)
    packed_m = torch.empty(*shape, 4, dtype=torch.uint8, device=values.device)
    rows = ROW_TILES_PER_CHUNK * tile_rows
    for r0 in range(0, n, rows):
        tiles = slice(r0 // tile_rows, (r0 + rows) // tile_rows)
        v = _tiles(values[r0 : r0 + rows].view(torch.uint8), tile_rows, 32)
        packed_v[tiles] = v[..., value_index].view(*v.shape[:2], threads, 16)
        m = meta[r0 : r0 + rows]
        nibbles = torch.stack((m & 15, m >> 4), dim=-1).view(m.shape[0], -1)  # [rows, K/4]
        nib = _tiles(nibbles, tile_rows, 16)[..., meta_index].view(*v.shape[:2], threads, 4, 2)
        packed_m[tiles] = (nib * weights).sum(-1, dtype=torch.uint8)
    return packed_v, packed_m.view(torch.int32).squeeze(-1)


def unpack_from_mma(
    packed_v: torch.Tensor, packed_m: torch.Tensor, tables: Tables | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of pack_for_mma, read thread by thread through the tables (for tests)."""
    value_row, value_col, meta_row, meta_group = tables or lane_tables()
    rt, steps, threads = packed_v.shape[:3]
    tile_rows = int(value_row.max()) + 1
    values = torch.empty(rt * tile_rows, steps * 32, dtype=torch.uint8)
    nibbles = torch.empty(rt * tile_rows, steps * 16, dtype=torch.uint8)
    mbytes = packed_m.cpu().unsqueeze(-1).view(torch.uint8).view(rt, steps, threads, 4)
    pv = packed_v.cpu()
    for lane in range(threads):
        for b in range(16):
            rows = torch.arange(rt)[:, None] * tile_rows + value_row[lane, b]
            cols = torch.arange(steps)[None, :] * 32 + value_col[lane, b]
            values[rows, cols] = pv[:, :, lane, b]
        for i in range(8):
            rows = torch.arange(rt)[:, None] * tile_rows + meta_row[lane, i]
            cols = torch.arange(steps)[None, :] * 16 + meta_group[lane, i]
            nibbles[rows, cols] = mbytes[:, :, lane, i // 2] >> (4 * (i % 2)) & 15
    meta = nibbles[:, 0::2] | nibbles[:, 1::2] << 4
    return values.view(torch.float8_e4m3fn), meta


def form_for(tokens: int) -> tuple[str, int, int]:
    """The kernel's form for a GEMM of this many tokens: (name, block tokens, steps a stage)."""
    return next((f for f in FORMS if tokens <= f[1]), FORMS[-1])


def splits_for(n: int, k: int, tokens: int, sms: int) -> int:
    """K splits for at least two blocks an SM (the kernel streams the weights: more blocks,
    more loads in flight), each split a whole number of shared-memory stages."""
    _, block_tokens, steps_per_stage = form_for(tokens)
    blocks = -(-n // BLOCK_ROWS) * -(-tokens // block_tokens)
    stages = -(-k // (TILE_INPUTS * steps_per_stage))
    return max(1, min(stages, -(-2 * sms // blocks)))


def nvcc() -> str:
    """The CUDA compiler: $NVCC, nvcc on PATH, or under $CUDA_HOME / /usr/local/cuda."""
    for c in (os.environ.get("NVCC"), shutil.which("nvcc")):
        if c:
            return c
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    raise RuntimeError("no CUDA compiler (nvcc) found: set NVCC or CUDA_HOME, or add it to PATH")


def build(arch: str) -> Path:
    """Compile sparse24_mma.cu for arch (e.g. sm_90a), or find it built; returns the cubin."""
    cc = nvcc()
    flags = ["-cubin", f"-arch={arch}", "-O3", "-std=c++17"]
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *flags]).encode()).hexdigest()
    cubin = cache_dir() / f"sparse24_mma-{arch}-{key[:16]}.cubin"
    if not cubin.exists():
        compile_into(cubin, [cc, *flags, str(SOURCE), "-o", "{out}"])
        logger.info("built the sparse-MMA kernel: %s", cubin)
    return cubin


class _Module:
    """The built cubin loaded in the device's primary context (torch's), its functions by
    name; launches on torch's current stream of that device."""

    def __init__(self, cubin: Path, device: int) -> None:
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self.device = device
        self._check(self.cuda.cuInit(0), "init")
        dev, self.context = ctypes.c_int(), ctypes.c_void_p()
        self._check(self.cuda.cuDeviceGet(ctypes.byref(dev), device), "device")
        self._check(self.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), dev), "context")
        self.image = cubin.read_bytes()  # the driver reads it during the load only
        self.module = ctypes.c_void_p()
        with self._current():
            self._check(self.cuda.cuModuleLoadData(ctypes.byref(self.module), self.image), "load")
        self.functions: dict[str, ctypes.c_void_p] = {}

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"CUDA driver error {status} in sparse24_mma ({what})")

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        """The module's context current on this thread meanwhile (pushed where it is not)."""
        current = ctypes.c_void_p()
        self._check(self.cuda.cuCtxGetCurrent(ctypes.byref(current)), "current context")
        switch = current.value != self.context.value
        if switch:
            self._check(self.cuda.cuCtxPushCurrent_v2(self.context), "push context")
        try:
            yield
        finally:
            if switch:
                self._check(self.cuda.cuCtxPopCurrent_v2(ctypes.byref(current)), "pop context")

    def launch(self, name: str, grid: tuple[int, int, int], block: int, *args: object) -> None:
        holders = [
            ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int(a)
            for a in args
        ]
        params = (ctypes.c_void_p * len(holders))(*(ctypes.addressof(h) for h in holders))
        stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
        with self._current():
            fn = self.functions.get(name)
            if fn is None:
                fn = ctypes.c_void_p()
                status = self.cuda.cuModuleGetFunction(ctypes.byref(fn), self.module, name.encode())
                self._check(status, name)
                self.functions[name] = fn
            status = self.cuda.cuLaunchKernel(fn, *grid, block, 1, 1, 0, stream, params, None)
        self._check(status, f"launch {name}")


def arch_for(capability: tuple[int, int]) -> str:
    """nvcc's -arch for a GPU of this compute capability (sm_90a on Hopper)."""
    major, minor = capability
    if (major, minor) < (8, 0):
        raise RuntimeError(f"mma.sp needs compute capability 8.0 or newer, not {major}.{minor}")
    return f"sm_{major}{minor}{'a' if major == 9 else ''}"


@functools.cache
def module(device: int = 0) -> _Module:
    arch = arch_for(torch.cuda.get_device_capability(device))
    torch.cuda.init()
    return _Module(build(arch), device)


OUT_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # sparse24_mma.cu's


def sparse24_mma_gemm(
    x16: torch.Tensor,
    packed_v: torch.Tensor,
    packed_m: torch.Tensor,
    x_scale: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x16 [T, K] f16 (rows contiguous) . W^T for W packed by pack_for_mma, times x_scale [T]
    and w_scale [N] where given -> [T, N] out_dtype (fp32, bf16 or f16). One K split: the
    GEMM writes that; more: each its fp32 partial sums, which sparse24_mma_reduce adds, scales
    and casts."""
    t, k = x16.shape
    n = packed_v.shape[0] * TILE_ROWS
    if packed_v.shape[1] * TILE_INPUTS != k or x16.dtype != torch.float16 or x16.stride(1) != 1:
        raise ValueError(f"x16 must be [T, {packed_v.shape[1] * 64}] f16 with unit stride")
    ones = None
    if x_scale is None or w_scale is None:
        ones = torch.ones(max(t, n), dtype=torch.float32, device=x16.device)
    xs = (ones[:t] if x_scale is None else x_scale.reshape(t)).float().contiguous()
    ws = (ones[:n] if w_scale is None else w_scale.reshape(n)).float().contiguous()
    name, block_tokens, steps_per_stage = form_for(t)
    sms = torch.cuda.get_device_properties(x16.device).multi_processor_count
    splits = splits_for(n, k, t, sms)
    stages = -(-k // (TILE_INPUTS * steps_per_stage))
    steps_per_split = -(-stages // splits) * steps_per_stage
    splits = -(-(k // TILE_INPUTS) // steps_per_split)
    grid = (-(-t // block_tokens), -(-n // BLOCK_ROWS), splits)
    return launch_gemm(name, grid, 256, packed_v, packed_m, x16, xs, ws, n, out_dtype,
                       steps_per_split)  # fmt: skip


def launch_gemm(
    name: str,
    grid: tuple[int, int, int],
    threads: int,
    packed_v: torch.Tensor,
    packed_m: torch.Tensor,
    x: torch.Tensor,
    xs: torch.Tensor,
    ws: torch.Tensor,
    n: int,
    out_dtype: torch.dtype,
    steps_per_split: int,
) -> torch.Tensor:
    """Run GEMM kernel `name` (the mma.sp or wgmma.sp forms share its arguments) over grid,
    its z the K splits: one writes [T, n] out_dtype scaled; more write fp32 partial sums,
    which sparse24_mma_reduce adds, scales and casts."""
    t, k = x.shape
    mod = module(x.device.index or 0)
    out = torch.empty(t, n, dtype=out_dtype, device=x.device)
    splits = grid[2]
    sums = out if splits == 1 else torch.empty(splits, t, n, dtype=torch.float32, device=x.device)
    mod.launch(
        name, grid, threads, packed_v, packed_m, x, xs, ws, sums, OUT_KINDS[out_dtype], t, n, k,
        x.stride(0), steps_per_split,
    )  # fmt: skip
    if splits > 1:
        reduce_splits(sums, xs, ws, out)
    return out


def reduce_splits(
    sums: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor, out: torch.Tensor
) -> None:
    """out [T, N] = the fp32 partial sums [splits, T, N] added, times xs [T] and ws [N], cast
    to out's dtype (sparse24_mma_reduce)."""
    splits, t, n = sums.shape
    module(out.device.index or 0).launch(
        "sparse24_mma_reduce", (-(-t * n // 256), 1, 1), 256, sums, splits, xs, ws, out,
        OUT_KINDS[out.dtype], t, n,
    )  # fmt: skip


def expand_from_mma(
    packed_v: torch.Tensor, packed_m: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """The packed weight as the dense [N, K] e4m3 matrix, written into out and returned."""
    n, k = out.shape
    if packed_v.shape[:2] != (n // TILE_ROWS, k // TILE_INPUTS) or out.dtype != torch.float8_e4m3fn:
        raise ValueError(f"out must be [{packed_v.shape[0] * 16}, {packed_v.shape[1] * 64}] e4m3")
    tiles = packed_v.shape[0] * packed_v.shape[1]
    module(out.device.index or 0).launch(
        "sparse24_mma_expand", (-(-tiles // 8), 1, 1), 256, packed_v, packed_m, out, n, k
    )
    return out


def sparse24_mma_linear(
    x: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    packed_v: torch.Tensor,
    packed_m: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """x [T, K] bf16 or f16, or (e4m3 [T, K], [T, 1] scales) as a fused norm quantized it,
    . (W * w_scale)^T -> [T, N] out_dtype. sparse24_mma_x_to_f16 makes e4m3 f16 exactly, and
    bf16 f16 scaled per row to an absolute maximum of 2**10 (scaled back in the GEMM)."""
    src, x_scale = x if isinstance(x, tuple) else (x, None)
    if src.dtype == torch.float16:
        return sparse24_mma_gemm(src.contiguous(), packed_v, packed_m, None, w_scale, out_dtype)
    if src.dtype not in (torch.float8_e4m3fn, torch.bfloat16):
        raise ValueError(f"x must be bf16, f16 or e4m3 with its scales, not {src.dtype}")
    src = src if src.stride(1) == 1 and src.stride(0) % 8 == 0 else src.contiguous()
    t, k = src.shape
    x16 = torch.empty(t, k, dtype=torch.float16, device=src.device)
    if x_scale is None:
        x_scale, kind = torch.empty(t, dtype=torch.float32, device=src.device), 1
    else:
        x_scale, kind = x_scale.reshape(t).float().contiguous(), 0
    module(src.device.index or 0).launch(
        "sparse24_mma_x_to_f16", (t, 1, 1), 256, src, kind, k, src.stride(0), x16, x_scale
    )
    return sparse24_mma_gemm(x16, packed_v, packed_m, x_scale, w_scale, out_dtype)
