"""Host block tables of decode steps: one numpy row per request, written as blocks are added.

A decode step gives a new block to about one request in block_size, so the rows persist from
step to step and a step's [B, width] table is one gather. Rebuilding it from the requests'
Python lists took ~2 ms of host time per step at 512 sequences (2-core CPU VM).

Plain Python and numpy (no torch). A row is reused for a request while its block list is the
same object (the block manager only appends to it; preemption or a new request with the same
id brings a new list, and the row is rewritten). Cells past a request's blocks hold its first
block, so a kernel that reads a whole padded row reads only that request's own cache.
"""

from __future__ import annotations

import numpy as np


class BlockTables:
    def __init__(self, width: int, num_rows: int = 64) -> None:
        """width: the most blocks one request can hold (max_model_len / block_size)."""
        self.width = width
        self.table = np.zeros((num_rows, width), dtype=np.int64)
        self._owner: list[list[int] | None] = [None] * num_rows  # the block list a row copies
        self._request: list[int] = [-1] * num_rows
        self._written = [0] * num_rows  # leading entries of the owner's list copied
        self._last_step = [-1] * num_rows  # the step that last asked for the row
        self._row_of: dict[int, int] = {}  # request id -> row
        self._step = 0
        self._next = 0  # where the search for a free row starts

    def gather(self, requests: list[tuple[int, list[int], int]], width: int) -> np.ndarray:
        """[B, width] int64 tables of (request id, block ids, blocks used) triples, in order."""
        self._step += 1
        rows = [self._row_of.get(rid, -1) for rid, _, _ in requests]
        for row in rows:  # first mark the rows this step reads: no new request may take them
            if row >= 0:
                self._last_step[row] = self._step
        for i, (rid, blocks, n) in enumerate(requests):
            rows[i] = self._update(rows[i], rid, blocks, n)
        return self.table[rows, :width]

    def _update(self, row: int, rid: int, blocks: list[int], n: int) -> int:
        if row < 0:
            row = self._free_row()
            self._row_of[rid] = row
            self._request[row] = rid
            self._last_step[row] = self._step
        if self._owner[row] is not blocks:
            self._owner[row] = blocks
            self.table[row] = blocks[0]
            self._written[row] = 0
        written = self._written[row]
        if n > written:
            self.table[row, written:n] = blocks[written:n]
            self._written[row] = n
        return row

    def _free_row(self) -> int:
        """A row this step does not read (its request, if it runs again, gets a row
        rewritten); else the table doubles. Scans on from the last row taken."""
        num_rows = self.table.shape[0]
        for k in range(num_rows):
            row = (self._next + k) % num_rows
            if self._last_step[row] < self._step:
                if self._owner[row] is not None:
                    del self._row_of[self._request[row]]
                    self._owner[row] = None
                self._next = row + 1
                return row
        self.table = np.concatenate([self.table, np.zeros_like(self.table)])
        self._owner += [None] * num_rows
        self._request += [-1] * num_rows
        self._written += [0] * num_rows
        self._last_step += [-1] * num_rows
        self._next = num_rows + 1
        return num_rows
