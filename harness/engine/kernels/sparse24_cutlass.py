"""2:4 FP8 GEMM on CUTLASS's SM90 sparse kernels (sparse24_cutlass.cu), Hopper only:
experimental: the engine's `sparse_kernel: cutlass`, timed by `fp8_gemm_sweep --sparse --mma`.

CUTLASS's warp-specialized FP8 sparse GEMM loads both operands by TMA (X multicast over a
2-block cluster) and keeps wgmma groups in flight: what our own wgmma.sp kernel
(sparse24_wgmma.py) lacks. Its weight layout is its own: `compress` runs CUTLASS's compressor
on the pruned e4m3 weight once. `sparse24_cutlass_gemm` then writes bf16 with the token and row
scales applied in CUTLASS's epilogue; other output types get the unscaled fp32 product, which
sparse24_mma.py's `reduce_splits` (one split) scales and casts.

The headers come from PyPI's nvidia-cutlass (install it with --no-deps: only its header tree
is used) or a CUTLASS checkout at $CUTLASS_PATH; nvcc builds the shared library once per
source, cached beside the other kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from harness.engine.kernels.cpu_build import cache_dir, compile_into
from harness.engine.kernels.sparse24_mma import nvcc, reduce_splits

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("sparse24_cutlass.cu")
# name -> nvcc -D flags (sparse24_cutlass.cu says what they set): configurations the sweep
# compares; the engine runs VARIANT. All share the compressed layout (tiles of 128 inputs).
VARIANTS: dict[str, tuple[str, ...]] = {
    "n128": (),  # 128 x 128 x 128 tiles, a 1 x 2 cluster, FP8 sums promoted to fp32
    "n128fast": ("-DS24C_FAST_ACCUM=1",),  # the sums kept in the tensor cores
    "n64": ("-DS24C_TILE_N=64",),  # 64 tokens a tile: less padding at small steps
    "n64c1": ("-DS24C_TILE_N=64", "-DS24C_CLUSTER_N=1"),  # ... and no cluster
    "m256": ("-DS24C_TILE_M=256",),  # 256 weight rows a tile: half the token reloads
    "m256fast": ("-DS24C_TILE_M=256", "-DS24C_FAST_ACCUM=1"),
    "pp": ("-DS24C_PINGPONG=1",),  # ping-pong: an epilogue hidden under the next tile's MMAs
    "ppfast": ("-DS24C_PINGPONG=1", "-DS24C_FAST_ACCUM=1"),
}
VARIANT = "n128"
_INT, _I64, _PTR = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p


def include_dirs() -> list[Path]:
    """CUTLASS's include and tools/util/include: under $CUTLASS_PATH, else in the installed
    nvidia-cutlass package (cutlass_library/source)."""
    env = os.environ.get("CUTLASS_PATH")
    if env:
        root = Path(env)
    else:
        spec = importlib.util.find_spec("cutlass_library")  # found, not imported
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(
                "no CUTLASS headers: pip install --no-deps nvidia-cutlass==4.2.0.0, "
                "or set CUTLASS_PATH to a CUTLASS checkout"
            )
        root = Path(next(iter(spec.submodule_search_locations))) / "source"
    dirs = [root / "include", root / "tools" / "util" / "include"]
    missing = [str(d) for d in dirs if not (d / "cutlass").is_dir()]
    if missing:
        raise RuntimeError(f"no CUTLASS headers in {', '.join(missing)} (CUTLASS_PATH={env})")
    return dirs


def headers_found() -> bool:
    try:
        include_dirs()
    except RuntimeError:
        return False
    return True


def build(variant: str = VARIANT) -> Path:
    """Compile sparse24_cutlass.cu for sm_90a into a shared library, or find it built."""
    cc = nvcc()
    includes = [f"-I{d}" for d in include_dirs()]
    # -DNDEBUG: CUTLASS's device asserts are calls, across which ptxas serializes every wgmma
    flags = ["-shared", "-Xcompiler", "-fPIC", "-arch=sm_90a", "-O3", "-std=c++17", "-DNDEBUG",
             "--expt-relaxed-constexpr", *VARIANTS[variant], *includes]  # fmt: skip
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *flags]).encode()).hexdigest()
    lib = cache_dir() / f"sparse24_cutlass-{key[:16]}.so"
    if not lib.exists():
        logger.info("building the CUTLASS 2:4 GEMM (%s) with nvcc (about 2 minutes, once)", variant)
        compile_into(lib, [cc, *flags, str(SOURCE), "-o", "{out}"], timeout_s=900)
        logger.info("built the CUTLASS 2:4 GEMM: %s", lib)
    return lib


def build_all() -> None:
    """Build every variant, up to one nvcc process a CPU side by side (each takes GBs)."""
    with ThreadPoolExecutor(min(len(VARIANTS), os.cpu_count() or 1)) as pool:
        list(pool.map(build, VARIANTS))


@functools.cache
def library(variant: str = VARIANT) -> ctypes.CDLL:
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0):
        raise RuntimeError(
            f"the CUTLASS 2:4 GEMM is built for Hopper (sm_90a) only; "
            f"{torch.cuda.get_device_name()} is {major}.{minor}: use the Triton 2:4 kernel"
        )
    lib = ctypes.CDLL(str(build(variant)))
    lib.s24c_sizes.argtypes = [_INT, _INT, ctypes.POINTER(_I64), ctypes.POINTER(_I64)]
    lib.s24c_workspace.argtypes, lib.s24c_workspace.restype = [_INT, _INT, _INT], _I64
    lib.s24c_compress.argtypes = [_PTR, _PTR, _PTR, _INT, _INT, _PTR, _I64, _PTR]
    lib.s24c_gemm.argtypes = [_PTR, _PTR, _PTR, _PTR, _INT, _INT, _INT, _PTR, _I64, _PTR]
    lib.s24c_gemm_bf16.argtypes = [_PTR] * 6 + [_INT, _INT, _INT, _PTR, _I64, _PTR]
    return lib


def _check(status: int, what: str) -> None:
    if status == -1:
        raise RuntimeError(f"CUTLASS {what}: the workspace is too small")
    if status != 0:
        raise RuntimeError(f"CUTLASS {what} failed: cutlass::Status {status - 1}")


@functools.cache
def _workspace_bytes(n: int, t: int, k: int, variant: str) -> int:
    """CUTLASS's workspace for a shape (t == 0: the compressor's), asked once a shape."""
    return max(library(variant).s24c_workspace(n, t, k), 1)


def _workspace(n: int, t: int, k: int, device: torch.device, variant: str) -> torch.Tensor:
    return torch.empty(_workspace_bytes(n, t, k, variant), dtype=torch.uint8, device=device)


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def compress(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A pruned 2:4 e4m3 weight [N, K] (CUDA) in CUTLASS's layout: (values, metadata bytes)."""
    if w.dtype != torch.float8_e4m3fn or not w.is_cuda or not w.is_contiguous():
        raise ValueError("w must be a contiguous CUDA e4m3 tensor [N, K]")
    n, k = w.shape
    lib = library()
    w_elems, e_bytes = _I64(), _I64()
    lib.s24c_sizes(n, k, ctypes.byref(w_elems), ctypes.byref(e_bytes))
    values = torch.empty(w_elems.value, dtype=torch.float8_e4m3fn, device=w.device)
    meta = torch.zeros(e_bytes.value, dtype=torch.uint8, device=w.device)
    work = _workspace(n, 0, k, w.device, VARIANT)
    status = lib.s24c_compress(w.data_ptr(), values.data_ptr(), meta.data_ptr(), n, k,
                               work.data_ptr(), work.numel(), _stream(w.device))  # fmt: skip
    _check(status, "compress")
    return values, meta


def sparse24_cutlass_gemm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    variant: str = VARIANT,
) -> torch.Tensor:
    """xq [T, K] e4m3 times x_scale [T] . (W * w_scale [N])^T, W compressed by `compress`
    -> [T, N] out_dtype (fp32, bf16 or f16), on one of VARIANTS."""
    t, k = xq.shape
    n = w_scale.numel()
    if xq.dtype != torch.float8_e4m3fn or not xq.is_contiguous() or k % 16:
        raise ValueError("xq must be contiguous e4m3 [T, K], K a multiple of 16")
    if values.numel() * 2 < n * k:  # CUTLASS may pad K
        raise ValueError(f"compressed values {values.numel()} are not for [{n}, {k}]")
    lib = library(variant)
    work = _workspace(n, t, k, xq.device, variant)
    stream = _stream(xq.device)
    xs = x_scale.reshape(t).float().contiguous()
    ws = w_scale.reshape(n).float().contiguous()
    out = torch.empty(t, n, dtype=out_dtype, device=xq.device)
    ptrs = (values.data_ptr(), meta.data_ptr(), xq.data_ptr())
    if out_dtype == torch.bfloat16:  # the scales and the cast in CUTLASS's epilogue
        scales = xs.data_ptr(), ws.data_ptr()
        status = lib.s24c_gemm_bf16(*ptrs, out.data_ptr(), *scales, n, t, k,
                                          work.data_ptr(), work.numel(), stream)  # fmt: skip
        _check(status, "GEMM")
        return out
    d = torch.empty(t, n, dtype=torch.float32, device=xq.device)
    status = lib.s24c_gemm(*ptrs, d.data_ptr(), n, t, k, work.data_ptr(), work.numel(), stream)
    _check(status, "GEMM")
    reduce_splits(d.view(1, t, n), xs, ws, out)
    return out


def decompress(values: torch.Tensor, meta: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of `compress`: -> [N, K] e4m3 (for the fp32 reference): the GEMM of the identity
    by W, exact (each output one e4m3 value times 1)."""
    eye = torch.eye(k, dtype=torch.float32, device=values.device).to(torch.float8_e4m3fn)
    ones = torch.ones(max(n, k), dtype=torch.float32, device=values.device)
    w_t = sparse24_cutlass_gemm(eye, ones[:k], values, meta, ones[:n], torch.float32)  # [K, N]
    return w_t.t().to(torch.float8_e4m3fn).contiguous()
