"""BlockManager: allocation, growth by append, ref counts and frees (plain Python, ms)."""

import pytest

from harness.engine.kv_cache import BlockManager, NoFreeBlocksError
from harness.engine.request import Request


def make_request(num_prompt: int, request_id: int = 0) -> Request:
    return Request(request_id=request_id, prompt_token_ids=list(range(1, num_prompt + 1)))


def test_allocate_and_free_round_trip():
    bm = BlockManager(num_blocks=4, block_size=2)
    ids = bm.allocate(3)
    assert len(set(ids)) == 3 and bm.num_free_blocks == 1
    bm.free(ids)
    assert bm.num_free_blocks == 4 and bm.ref_counts == [0] * 4


def test_allocate_more_than_free_raises():
    bm = BlockManager(num_blocks=2, block_size=4)
    with pytest.raises(NoFreeBlocksError):
        bm.allocate(3)
    assert bm.num_free_blocks == 2


def test_ref_counts_keep_shared_block_until_last_free():
    bm = BlockManager(num_blocks=2, block_size=4)
    [b] = bm.allocate(1)
    bm.incref([b])
    bm.free([b])
    assert bm.num_free_blocks == 1 and bm.ref_counts[b] == 1
    bm.free([b])
    assert bm.num_free_blocks == 2


def test_double_free_is_an_internal_bug():
    bm = BlockManager(num_blocks=2, block_size=4)
    ids = bm.allocate(1)
    bm.free(ids)
    with pytest.raises(AssertionError):
        bm.free(ids)


@pytest.mark.parametrize(
    ("num_prompt", "block_size", "num_blocks_expected"),
    [(1, 4, 1), (4, 4, 1), (5, 4, 2), (16, 16, 1), (17, 16, 2)],
)
def test_append_slots_allocates_exact_block_count(num_prompt, block_size, num_blocks_expected):
    bm = BlockManager(num_blocks=8, block_size=block_size)
    req = make_request(num_prompt)
    assert bm.append_slots(req, num_prompt)
    assert len(req.block_ids) == num_blocks_expected


def test_append_grows_only_at_block_boundary():
    bm = BlockManager(num_blocks=8, block_size=4)
    req = make_request(4)
    bm.append_slots(req, 4)
    req.num_computed_tokens = 4
    assert bm.num_new_blocks_needed(req, 1) == 1
    bm.append_slots(req, 1)
    req.num_computed_tokens = 5
    assert bm.num_new_blocks_needed(req, 3) == 0
    assert bm.num_new_blocks_needed(req, 4) == 1


def test_append_fails_cleanly_when_full():
    bm = BlockManager(num_blocks=2, block_size=4)
    req = make_request(12)
    assert not bm.append_slots(req, 12)
    assert req.block_ids == [] and bm.num_free_blocks == 2


def test_free_request_returns_blocks_and_first_block_is_reused_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    req = make_request(6)
    bm.append_slots(req, 6)
    first = req.block_ids[0]
    bm.free_request(req)
    assert req.block_ids == [] and bm.num_free_blocks == 4
    assert bm.allocate(1) == [first]
