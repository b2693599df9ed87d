"""Paged KV-cache bookkeeping: which fixed-size blocks each request owns, with ref counts.

Plain Python over ints (no torch); the KV tensors themselves live in model_runner.py and are
indexed by the block ids handed out here.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.engine.request import Request


class NoFreeBlocksError(RuntimeError):
    """The pool has fewer free blocks than asked for; the caller should preempt or wait."""


class BlockManager:
    """A free list of block ids plus a ref count per block (shared blocks: count > 1)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks}, block_size={block_size}: both must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        # A stack: recently freed (cache-warm, already-touched) blocks are reused first.
        self._free_ids = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_ids)

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- block level -------------------------------------------------------------------

    def allocate(self, num_blocks: int) -> list[int]:
        if num_blocks > len(self._free_ids):
            raise NoFreeBlocksError(
                f"asked for {num_blocks} blocks, {len(self._free_ids)} free of {self.num_blocks}"
            )
        ids = [self._free_ids.pop() for _ in range(num_blocks)]
        for i in ids:
            assert self.ref_counts[i] == 0, f"block {i} on the free list with refs"
            self.ref_counts[i] = 1
        return ids

    def incref(self, block_ids: Iterable[int]) -> None:
        for i in block_ids:
            assert self.ref_counts[i] > 0, f"incref of free block {i}"
            self.ref_counts[i] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference per id; a block returns to the pool when its count hits 0."""
        for i in reversed(list(block_ids)):  # reversed: the first block is reused first
            assert self.ref_counts[i] > 0, f"double free of block {i}"
            self.ref_counts[i] -= 1
            if self.ref_counts[i] == 0:
                self._free_ids.append(i)

    # --- request level -----------------------------------------------------------------

    def num_new_blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        total = self.num_blocks_for(request.num_computed_tokens + num_new_tokens)
        return max(0, total - len(request.block_ids))

    def append_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Grow the request's block table to hold num_new_tokens more; False if no room."""
        needed = self.num_new_blocks_needed(request, num_new_tokens)
        if needed > len(self._free_ids):
            return False
        if needed:
            request.block_ids.extend(self.allocate(needed))
        return True

    def free_request(self, request: Request) -> None:
        self.free(request.block_ids)
        request.block_ids = []
