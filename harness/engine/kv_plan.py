"""How many KV-cache blocks fit: from free device memory after the weights are loaded (CUDA) or
from MemAvailable (CPU), capped by what max_num_seqs full-length requests could ever use."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.engine.model.llama import LlamaConfig

logger = logging.getLogger(__name__)

GIB = 1 << 30

# Tensor parallelism: every rank's values reduced by "min" or "max", the same list on each rank
Agree = Callable[[list[float], str], list[float]]


class KVCacheCapacityError(RuntimeError):
    """Not even one request fits the KV-cache memory; the message says which knob to raise."""


@dataclass(frozen=True)
class KVCacheSpec:
    num_blocks: int
    block_size: int
    bytes_per_block: int  # all layers, K and V

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def gib(self) -> float:
        return self.num_blocks * self.bytes_per_block / GIB


def kv_bytes_per_block(config: LlamaConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    return per_token * block_size * dtype.itemsize


def plan_kv_cache(
    config: LlamaConfig,
    dtype: torch.dtype,
    device: torch.device,
    block_size: int,
    gpu_memory_utilization: float,
    num_kv_blocks: int = 0,
    max_blocks_useful: int = 0,
    agree: Agree | None = None,
) -> KVCacheSpec:
    """Blocks from num_kv_blocks if set, else a fraction of free memory (call after loading
    the weights). On CPU the fraction applies to MemAvailable; max_blocks_useful caps it
    (no more than max_num_seqs full-length requests can ever be resident). agree (tensor
    parallelism): every rank takes the least of the ranks' counts, and every rank raises if
    one has no room, so rank 0 reports it rather than waiting on a rank that died."""
    per_block = kv_bytes_per_block(config, block_size, dtype)
    if num_kv_blocks > 0:
        num_blocks = num_kv_blocks
    else:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # cached temporaries of weight loading count as used
            free, total = torch.cuda.mem_get_info(device)
            budget = total * gpu_memory_utilization - (total - free)
        else:
            budget = _cpu_available_bytes() * gpu_memory_utilization
        num_blocks = int(budget // per_block)
        if max_blocks_useful:
            num_blocks = min(num_blocks, max_blocks_useful)
    fix = f"raise gpu_memory_utilization (now {gpu_memory_utilization}) or set num_kv_blocks"
    if agree is not None:
        least = int(agree([num_blocks], "min")[0])
        if least < 1:
            raise KVCacheCapacityError(
                f"a tensor-parallel rank has no room for a KV block of "
                f"{per_block / 2**20:.1f} MiB ({num_blocks} blocks fit on this rank's {device}, "
                f"{least} on the fullest); {fix}, or free that GPU's memory"
            )
        num_blocks = least
    if num_blocks < 1:
        raise KVCacheCapacityError(
            f"no room for a KV block of {per_block / 2**20:.1f} MiB on {device}; {fix}"
        )
    spec = KVCacheSpec(num_blocks, block_size, per_block)
    logger.info(
        "KV cache: %d blocks x %d tokens = %d tokens, %.2f GiB (%s, %s)",
        spec.num_blocks, block_size, spec.num_tokens, spec.gib, device, dtype,
    )  # fmt: skip
    return spec


def lowest_free_bytes(device: torch.device) -> int:
    """CUDA: the least free memory since the caching allocator's peak statistics were last
    reset: free now plus what the allocator holds now less its peak. Memory outside the
    allocator (the CUDA context, lazily loaded kernels) only grows, so this never overstates."""
    free = torch.cuda.mem_get_info(device)[0]
    return free + torch.cuda.memory_reserved(device) - torch.cuda.max_memory_reserved(device)


def oom_detail(err: BaseException) -> str:
    """The first line of a torch out-of-memory message (what it tried to allocate, what was
    free), for an error that names the knobs."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _cpu_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise KVCacheCapacityError("cannot read MemAvailable from /proc/meminfo; set num_kv_blocks")
