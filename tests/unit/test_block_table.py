"""Persistent host block tables: every gather equals the tables rebuilt from the lists."""

from __future__ import annotations

import random

import numpy as np

from harness.engine.block_table import BlockTables


def _rebuilt(requests: list[tuple[int, list[int], int]], width: int) -> np.ndarray:
    """The tables as the runner built them before: each row padded with its first block."""
    return np.array([b[:n] + [b[0]] * (width - n) for _, b, n in requests], dtype=np.int64)


def test_gathers_match_rebuilt_tables_through_growth_preemption_and_id_reuse():
    rng = random.Random(0)
    tables = BlockTables(width=40, num_rows=4)  # starts small: must grow
    lists: dict[int, list[int]] = {}
    used: dict[int, int] = {}
    next_block = 0
    for step in range(400):
        for rid in list(lists):
            if rng.random() < 0.05:  # finished (the id may come back) or preempted: new list
                del lists[rid]
        while len(lists) < 12 and rng.random() < 0.5:
            rid = rng.randrange(20)
            if rid not in lists:
                lists[rid], used[rid] = [], 0
        requests = []
        for rid, blocks in lists.items():
            if rng.random() < 0.2:
                continue  # not scheduled this step (token budget)
            used[rid] = min(40, used[rid] + rng.choice([1, 1, 1, 3]))
            while len(blocks) < used[rid]:
                blocks.append(next_block % 1000)
                next_block += 1
            requests.append((rid, blocks, used[rid]))
        if not requests:
            continue
        rng.shuffle(requests)
        width = max(n for _, _, n in requests)
        got = tables.gather(requests, width)
        assert got.shape == (len(requests), width)
        np.testing.assert_array_equal(got, _rebuilt(requests, width), err_msg=f"step {step}")
    assert tables.table.shape[0] >= 12


def test_a_new_list_for_the_same_id_rewrites_the_row():
    tables = BlockTables(width=8)
    first = [5, 6, 7]
    np.testing.assert_array_equal(tables.gather([(1, first, 3)], 4), [[5, 6, 7, 5]])
    recomputed = [9]  # preempted: the block manager hands the request a new list
    np.testing.assert_array_equal(tables.gather([(1, recomputed, 1)], 3), [[9, 9, 9]])
