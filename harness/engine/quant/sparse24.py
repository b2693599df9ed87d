"""2:4-sparse FP8 weights stored compressed on CUDA (`--model_opt=Sparse`).

Engines keep the pruned weight dense ([out, in] e4m3 with at most 2 nonzeros in every 4
consecutive inputs). After loading, each linear keeps only the 2 kept values of every group
([out, in/2] e4m3) and their positions (2 bits each, two groups per byte: [out, in/8] uint8):
62.5% of the FP8 bytes. That frees memory for KV (on one 80 GB H100, 70B FP8 leaves ~12 GiB)
and, where a step streams the weights (decode), reads fewer bytes.

A step of up to `triton_max_rows` rows multiplies the compressed weight directly (the Triton
FP8 GEMM expands each tile in registers: kernels/fp8_gemm.py, sparse24_gemm.py); a larger one
expands it into a shared scratch buffer and runs cuBLAS's dense FP8 GEMM. With sparse_kernel
mma (`repack`), the same bytes are repacked for the sparse tensor cores (kernels/sparse24_mma.py),
which then take those steps, and larger ones expand from that layout. With wgmma or cutlass
(Hopper), they are repacked in 64-row tiles for wgmma.sp (kernels/sparse24_wgmma.py), or by
CUTLASS's compressor for its SM90 sparse GEMM (kernels/sparse24_cutlass.py), which then take
every step: no expansion. compress_24 and decompress_24 here are the plain-torch
reference of the layout.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.engine.kernels.fp8_gemm import fp8_gemm_triton
from harness.engine.kernels.sparse24_cutlass import compress as cutlass_compress
from harness.engine.kernels.sparse24_cutlass import decompress as cutlass_decompress
from harness.engine.kernels.sparse24_cutlass import sparse24_cutlass_gemm
from harness.engine.kernels.sparse24_gemm import decompress_24_triton
from harness.engine.kernels.sparse24_mma import (
    TILE_INPUTS,
    TILE_ROWS,
    Tables,
    expand_from_mma,
    fits_tiles,
    lane_tables,
    pack_for_mma,
    sparse24_mma_linear,
    unpack_from_mma,
    warpgroup_tables,
)
from harness.engine.kernels.sparse24_wgmma import TILE_ROWS as WGMMA_TILE_ROWS
from harness.engine.kernels.sparse24_wgmma import sparse24_wgmma_gemm
from harness.engine.quant.base import Quantized, Unscaled
from harness.engine.quant.fp8 import FP8_DTYPE, reference_fp8_linear
from harness.engine.quant.fp8_gpu import (
    FP8GpuLinearMethod,
    as_quantized,
    output_dtype,
    scaled_mm_unscaled,
)

STORED_BYTES_PER_WEIGHT = 0.5 + 0.125  # one e4m3 value per 2 inputs + 2 bits per value
ROWS_PER_CHUNK = 4096  # compress this many weight rows at a time (bounded temporaries)


def _position_table() -> torch.Tensor:
    """4-bit nonzero mask of a group -> its meta nibble i0 | i1 << 2 with i0 < i1 (padded with
    a zero position when fewer than 2 are nonzero); 255 for masks of 3-4 nonzeros."""
    table = torch.full((16,), 255, dtype=torch.uint8, device="cpu")  # not a caller's default
    for mask in range(16):
        kept = [i for i in range(4) if mask >> i & 1]
        if len(kept) > 2:
            continue
        kept += [i for i in range(4) if i not in kept][: 2 - len(kept)]
        i0, i1 = sorted(kept)
        table[mask] = i0 | i1 << 2
    return table


POSITIONS = _position_table()


def compress_24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] e4m3, 2:4 sparse, K % 8 == 0 -> (values [N, K/2] e4m3, meta [N, K/8] uint8).
    Group g of row r keeps values[r, 2g], values[r, 2g+1] at positions i0 < i1 of its 4
    inputs; meta[r, g // 2] holds i0 | i1 << 2 in its low nibble for even g, high for odd."""
    n, k = weight.shape
    if k % 8:
        raise ValueError(f"compressed 2:4 storage needs in_features divisible by 8, got {k}")
    values = torch.empty(n, k // 2, dtype=torch.uint8, device=weight.device)
    meta = torch.empty(n, k // 8, dtype=torch.uint8, device=weight.device)
    table = POSITIONS.to(weight.device)
    bits = torch.tensor([1, 2, 4, 8], dtype=torch.uint8, device=weight.device)
    for r0 in range(0, n, ROWS_PER_CHUNK):
        raw = weight[r0 : r0 + ROWS_PER_CHUNK].view(torch.uint8).view(-1, k // 4, 4)
        mask = ((raw & 0x7F) != 0).to(torch.uint8).mul_(bits).sum(-1, dtype=torch.uint8)
        nibble = table[mask.long()]  # [rows, K/4]
        if (nibble == 255).any():
            row = r0 + int((nibble == 255).any(-1).nonzero()[0])
            raise ValueError(
                f"weight row {row} has a group of 4 inputs with more than 2 nonzeros: it is not "
                "2:4 sparse; build the engine with --model_opt=Sparse"
            )
        i0, i1 = (nibble & 3).long(), (nibble >> 2).long()
        kept = torch.stack((raw.gather(-1, i0[..., None]), raw.gather(-1, i1[..., None])), -2)
        values[r0 : r0 + ROWS_PER_CHUNK] = kept.reshape(-1, k // 2)
        pairs = nibble.view(-1, k // 8, 2)
        meta[r0 : r0 + ROWS_PER_CHUNK] = pairs[..., 0] | pairs[..., 1] << 4
    return values.view(weight.dtype), meta


def decompress_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Inverse of compress_24: -> [N, K] e4m3 with zeros at the dropped positions."""
    n, half = values.shape
    nibble = torch.stack((meta & 15, meta >> 4), dim=-1).view(n, half // 2)  # [N, K/4]
    raw = values.view(torch.uint8).view(n, half // 2, 2)
    dense = torch.zeros(n, half // 2, 4, dtype=torch.uint8, device=values.device)
    dense.scatter_(-1, (nibble & 3).long()[..., None], raw[..., :1])
    dense.scatter_(-1, (nibble >> 2).long()[..., None], raw[..., 1:])
    return dense.view(n, half * 2).view(values.dtype)


class ScratchWeight:
    """One [N*K] e4m3 buffer shared by a model's compressed linears, for steps too large for
    the sparse kernel; sized to the largest linear as they are processed (before the KV
    cache takes the free memory)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def reserve(self, numel: int, device: torch.device) -> None:
        if self.buffer is None or self.buffer.numel() < numel:
            self.buffer = None  # free the smaller one first
            self.buffer = torch.empty(numel, dtype=FP8_DTYPE, device=device)

    def view(self, n: int, k: int) -> torch.Tensor:
        return self.buffer[: n * k].view(n, k)


def release_unused_scratch(linears: list[nn.Module]) -> None:
    """Free the 2:4 linears' shared expansion buffer where none of them expands any more
    (each repacked for wgmma or cutlass, which take every step): its memory goes to the KV cache."""
    methods = [m.method for m in linears if isinstance(m.method, Sparse24GpuLinearMethod)]
    expands = any(Sparse24GpuLinearMethod._layout(m) in ("rows", "mma") for m in linears)
    if methods and not expands:
        for method in methods:
            method.scratch.buffer = None
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # the buffer's segment back to the driver, for the KV plan


class Sparse24GpuLinearMethod(FP8GpuLinearMethod):
    """Loads like FP8 with sparse24 (prune, quantize), then stores the weight compressed."""

    def __init__(self, scratch: ScratchWeight) -> None:
        super().__init__(sparse24=True)
        self.scratch = scratch

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        super().process_weights_after_loading(layer)
        n, k = layer.weight.shape
        if k % 8:  # tiny test models: keep the dense layout (FP8GpuLinearMethod.apply)
            return
        on_cuda = layer.weight.is_cuda
        if on_cuda:  # cached blocks of loading must not host the compressed tensors: a
            torch.cuda.empty_cache()  # partly reused segment stays held, and KV gets less
        values, meta = compress_24(layer.weight.data)
        del layer.weight
        if on_cuda:
            torch.cuda.empty_cache()  # the dense weight's segment goes back to the driver whole
        layer.register_parameter("weight_values", nn.Parameter(values, requires_grad=False))
        layer.register_parameter("weight_meta", nn.Parameter(meta, requires_grad=False))
        self.scratch.reserve(n * k, values.device)

    def repack(self, layer: nn.Module, kernel: str) -> None:
        """Repack the layer's compressed weight for `kernel` (engine.sparse_kernel), where its
        shape allows; else it keeps the Triton kernel and the expansion. mma: mma.sp, the same
        bytes in 16-row tiles; wgmma: wgmma.sp, in 64-row tiles; cutlass: CUTLASS's own layout,
        made by its compressor from the expanded weight (CUDA, Hopper)."""
        if kernel == "mma":
            self._repack(layer, "mma", lane_tables(), TILE_ROWS)
        elif kernel == "wgmma":
            self._repack(layer, "wg", warpgroup_tables(), WGMMA_TILE_ROWS)
        elif kernel != "cutlass":
            raise ValueError(f"no 2:4 kernel {kernel!r}: mma, wgmma or cutlass")
        elif self._layout(layer) == "rows":
            values, meta = layer.weight_values.data, layer.weight_meta.data
            n, k = values.shape[0], values.shape[1] * 2
            packed = cutlass_compress(decompress_24_triton(values, meta, self.scratch.view(n, k)))
            del layer.weight_values, layer.weight_meta, values, meta
            for part, tensor in zip(("values", "meta"), packed, strict=True):
                layer.register_parameter(f"weight_cl_{part}", nn.Parameter(tensor, False))

    def _repack(self, layer: nn.Module, layout: str, tables: Tables, rows: int) -> None:
        """Row order -> weight_{layout}_values / _meta, packed for the threads of tables."""
        if self._layout(layer) != "rows":
            return
        values, meta = layer.weight_values.data, layer.weight_meta.data
        if not fits_tiles(values.shape[0], values.shape[1] * 2, rows):
            return
        packed = pack_for_mma(values, meta, tables)
        del layer.weight_values, layer.weight_meta, values, meta
        for part, tensor in zip(("values", "meta"), packed, strict=True):
            layer.register_parameter(f"weight_{layout}_{part}", nn.Parameter(tensor, False))

    @staticmethod
    def _layout(layer: nn.Module) -> str | None:
        """How the layer stores its weight: "rows" (compressed, row order), "mma" / "wg" / "cl"
        (repacked for mma / wgmma / cutlass), or None (dense: too small to compress)."""
        if hasattr(layer, "weight_values"):
            return "rows"
        packed = ("mma", "wg", "cl")
        return next((n for n in packed if hasattr(layer, f"weight_{n}_values")), None)

    def _expanded(self, layer: nn.Module, into_scratch: bool) -> torch.Tensor:
        """The dense [N, K] e4m3 weight from any stored layout: into the shared scratch buffer
        (for cuBLAS: row order or mma's), or else fresh (for the fp32 reference: the
        plain-torch expansion, a packed layout read back on the host first)."""
        layout = self._layout(layer)
        if layout == "rows":
            values, meta = layer.weight_values, layer.weight_meta
            if not into_scratch:
                return decompress_24(values, meta)
            n, k = values.shape[0], values.shape[1] * 2
            return decompress_24_triton(values, meta, self.scratch.view(n, k))
        packed = getattr(layer, f"weight_{layout}_values"), getattr(layer, f"weight_{layout}_meta")
        if into_scratch:  # mma's layout (wgmma's and cutlass's never expand)
            n, k = packed[0].shape[0] * TILE_ROWS, packed[0].shape[1] * TILE_INPUTS
            return expand_from_mma(*packed, self.scratch.view(n, k))
        if layout == "cl":
            return cutlass_decompress(*packed, layer.out_features, layer.in_features)
        tables = lane_tables() if layout == "mma" else warpgroup_tables()
        values, meta = (x.to(packed[0].device) for x in unpack_from_mma(*packed, tables))
        return decompress_24(values, meta)

    def _small_step(self, layer: nn.Module, x: torch.Tensor | Quantized) -> torch.Tensor:
        """A step of up to triton_max_rows rows on the stored weight, its scales applied."""
        scale_row = layer.weight_scale_row
        if self._layout(layer) == "mma":
            packed = layer.weight_mma_values, layer.weight_mma_meta
            return sparse24_mma_linear(x, *packed, scale_row, output_dtype(x))
        xq, x_scale = as_quantized(x)
        return fp8_gemm_triton(xq, x_scale, layer.weight_values, scale_row, meta=layer.weight_meta)

    def apply_unscaled(self, layer: nn.Module, x: torch.Tensor | Quantized) -> Unscaled:
        """FP8's contract (apply is FP8's: this with its scales applied); compressed weights
        (row order, or repacked for mma) multiply as stored or expanded for cuBLAS, whose
        scales are left as FP8's are; repacked for wgmma / cutlass, on that kernel at any size."""
        layout = self._layout(layer)
        if layout is None:
            return super().apply_unscaled(layer, x)  # the dense layout: FP8's method
        if output_dtype(x) == torch.float32:  # the reference, as FP8GpuLinearMethod does
            ref = reference_fp8_linear(x, self._expanded(layer, False), layer.weight_scale)
            return ref, None, None
        if layout in ("wg", "cl"):  # repacked for wgmma / cutlass: every step
            packed = (
                getattr(layer, f"weight_{layout}_values"),
                getattr(layer, f"weight_{layout}_meta"),
            )
            gemm = sparse24_wgmma_gemm if layout == "wg" else sparse24_cutlass_gemm
            xq, x_scale = as_quantized(x)
            out = gemm(xq, x_scale, *packed, layer.weight_scale_row, output_dtype(x))
            return out, None, None
        rows = x[0].shape[0] if isinstance(x, tuple) else x.shape[0]
        if rows <= layer.triton_max_rows:
            return self._small_step(layer, x), None, None
        weight = self._expanded(layer, True)
        xq, x_scale = as_quantized(x)
        return scaled_mm_unscaled(xq, x_scale, weight, layer.weight_scale_row, output_dtype(x))
