"""Scheduler: token budget, chunked prefill, preemption and resume, stop rules (plain Python)."""

from __future__ import annotations

import pytest

from harness.engine.kv_cache import BlockManager
from harness.engine.outputs import ModelRunnerOutput, SchedulerOutput
from harness.engine.request import Request, RequestStatus, SamplingParams
from harness.engine.scheduler import RequestTooLongError, Scheduler, SchedulerConfig

EOS = 2


def make_scheduler(num_blocks: int = 100, block_size: int = 4, **config_overrides) -> Scheduler:
    config = SchedulerConfig(
        **{"max_num_seqs": 8, "max_num_batched_tokens": 64, **config_overrides}
    )
    return Scheduler(config, BlockManager(num_blocks, block_size))


def make_requests(
    n: int, num_prompt: int | list[int] = 8, max_new_tokens: int = 4, **sampling
) -> list[Request]:
    lens = num_prompt if isinstance(num_prompt, list) else [num_prompt] * n
    params = SamplingParams(max_new_tokens=max_new_tokens, eos_token_ids=(EOS,), **sampling)
    return [
        Request(request_id=i, prompt_token_ids=[10 + i] * lens[i], sampling=params)
        for i in range(n)
    ]


def fake_output(sched: SchedulerOutput, token: int = 7) -> ModelRunnerOutput:
    return ModelRunnerOutput({s.request_id: token for s in sched.scheduled if s.needs_sample})


def run_to_completion(s: Scheduler, token: int = 7, max_steps: int = 1000):
    finished = {}
    for _ in range(max_steps):
        if not s.has_unfinished():
            return finished
        sched = s.schedule()
        assert not sched.is_empty, "scheduler stalled"
        for ev in s.update_from_output(sched, fake_output(sched, token)):
            if ev.is_finished:
                finished[ev.request_id] = list(ev.output_token_ids)
    raise AssertionError("did not finish")


def test_whole_prompts_fit_in_one_step():
    s = make_scheduler()
    for r in make_requests(3, num_prompt=8):
        s.add_request(r)
    sched = s.schedule()
    assert [x.num_tokens for x in sched.scheduled] == [8, 8, 8]
    assert all(x.needs_sample for x in sched.scheduled)
    assert sched.num_batched_tokens == 24


def test_prefill_is_chunked_at_the_budget_and_resumes_at_the_boundary():
    s = make_scheduler(max_num_batched_tokens=5)
    [r] = make_requests(1, num_prompt=12)
    s.add_request(r)
    chunks = []
    for _ in range(3):
        sched = s.schedule()
        [x] = sched.scheduled
        chunks.append((x.start_position, x.num_tokens, x.needs_sample))
        s.update_from_output(sched, fake_output(sched))
    assert chunks == [(0, 5, False), (5, 5, False), (10, 2, True)]
    assert r.num_output_tokens == 1


def test_decodes_run_alongside_a_new_prefill_chunk():
    s = make_scheduler(max_num_batched_tokens=10)
    a, b = make_requests(2, num_prompt=[8, 20], max_new_tokens=8)
    s.add_request(a)
    sched = s.schedule()
    s.update_from_output(sched, fake_output(sched))
    s.add_request(b)
    sched = s.schedule()
    assert [(x.request_id, x.num_tokens) for x in sched.scheduled] == [(0, 1), (1, 9)]


def test_budget_exhaustion_leaves_requests_waiting():
    s = make_scheduler(max_num_batched_tokens=16)
    for r in make_requests(3, num_prompt=8):
        s.add_request(r)
    sched = s.schedule()
    assert [x.num_tokens for x in sched.scheduled] == [8, 8]
    assert s.num_waiting == 1


def test_max_num_seqs_caps_running():
    s = make_scheduler(max_num_seqs=2)
    for r in make_requests(4, num_prompt=2):
        s.add_request(r)
    assert len(s.schedule().scheduled) == 2


def test_longest_first_admission():
    s = make_scheduler(admission="longest_first", max_num_seqs=1)
    for r in make_requests(3, num_prompt=[3, 9, 5]):
        s.add_request(r)
    assert [x.request_id for x in s.schedule().scheduled] == [1]


def test_eos_on_first_token_finishes_at_once_and_frees_blocks():
    s = make_scheduler(num_blocks=10)
    [r] = make_requests(1, num_prompt=8, max_new_tokens=5)
    s.add_request(r)
    sched = s.schedule()
    [ev] = s.update_from_output(sched, fake_output(sched, token=EOS))
    assert ev.is_first_token and ev.is_finished and ev.output_token_ids == [EOS]
    assert ev.finish_reason == "stop" and r.status is RequestStatus.FINISHED_STOPPED
    assert s.block_manager.num_free_blocks == 10 and not s.has_unfinished()


def test_min_new_tokens_suppresses_eos_stop():
    s = make_scheduler()
    [r] = make_requests(1, max_new_tokens=5, min_new_tokens=3)
    s.add_request(r)
    sched = s.schedule()
    assert sched.scheduled[0].suppress_token_ids == (EOS,)
    out = run_to_completion(s, token=EOS)
    assert out[0] == [EOS, EOS, EOS]


def test_max_length_finish_and_events():
    s = make_scheduler()
    [r] = make_requests(1, max_new_tokens=3)
    s.add_request(r)
    events = []
    while s.has_unfinished():
        sched = s.schedule()
        events += s.update_from_output(sched, fake_output(sched))
    assert [(e.is_first_token, e.is_finished) for e in events] == [(True, False), (False, True)]
    assert events[-1].output_token_ids == [7, 7, 7] and events[-1].finish_reason == "length"


def test_ignore_eos_runs_to_fixed_length():
    s = make_scheduler()
    [r] = make_requests(1, max_new_tokens=4, min_new_tokens=4, ignore_eos=True)
    s.add_request(r)
    assert run_to_completion(s, token=EOS)[0] == [EOS] * 4


def test_preemption_frees_newest_and_resumes_by_recompute():
    # 2 blocks of 4 per request for the prompt; pool of 5 blocks: growth forces preemption.
    s = make_scheduler(num_blocks=5, block_size=4)
    reqs = make_requests(2, num_prompt=8, max_new_tokens=6)
    for r in reqs:
        s.add_request(r)
    sched = s.schedule()
    s.update_from_output(sched, fake_output(sched))
    assert s.block_manager.num_free_blocks == 1
    sched = s.schedule()  # both need a 3rd block at position 8; only one is left
    assert sched.preempted_request_ids == [1]
    assert [x.request_id for x in sched.scheduled] == [0]
    assert reqs[1].status is RequestStatus.PREEMPTED and reqs[1].num_computed_tokens == 0
    s.update_from_output(sched, fake_output(sched))
    out = run_to_completion(s)
    assert out == {0: [7] * 6, 1: [7] * 6}
    assert reqs[1].num_preemptions >= 1
    assert s.block_manager.num_free_blocks == 5


def test_resumed_request_recomputes_prompt_plus_outputs_without_new_first_token():
    s = make_scheduler(num_blocks=5, block_size=4)
    reqs = make_requests(2, num_prompt=8, max_new_tokens=6)
    for r in reqs:
        s.add_request(r)
    first_events = []
    while s.has_unfinished():
        sched = s.schedule()
        for x in sched.scheduled:
            if x.request_id == 1 and reqs[1].num_preemptions and x.start_position == 0:
                assert x.token_ids == reqs[1].prompt_token_ids + reqs[1].output_token_ids
        first_events += [
            e.request_id
            for e in s.update_from_output(sched, fake_output(sched))
            if e.is_first_token
        ]
    assert sorted(first_events) == [0, 1]


def test_request_larger_than_pool_is_refused():
    s = make_scheduler(num_blocks=2, block_size=4)
    [r] = make_requests(1, num_prompt=8, max_new_tokens=4)
    with pytest.raises(RequestTooLongError, match="num_kv_blocks"):
        s.add_request(r)


def test_many_requests_tiny_pool_all_finish():
    s = make_scheduler(num_blocks=6, block_size=2, max_num_batched_tokens=7, max_num_seqs=4)
    for r in make_requests(10, num_prompt=[1, 3, 5, 2, 7, 4, 6, 1, 2, 3], max_new_tokens=4):
        s.add_request(r)
    out = run_to_completion(s)
    assert sorted(out) == list(range(10)) and all(v == [7] * 4 for v in out.values())
    assert s.num_preemptions > 0 and s.block_manager.num_free_blocks == 6


def _decode_all(s: Scheduler, steps: int) -> list[SchedulerOutput]:
    outs = []
    for _ in range(steps):
        sched = s.schedule()
        s.update_from_output(sched, fake_output(sched))
        outs.append(sched)
    return outs


def test_admission_batch_holds_new_requests_until_a_group_fits():
    s = make_scheduler(max_num_seqs=4, admission_batch=3)
    reqs = make_requests(4, num_prompt=4, max_new_tokens=3) + [
        Request(request_id=10 + i, prompt_token_ids=[20 + i] * 4,
                sampling=SamplingParams(max_new_tokens=50, eos_token_ids=(EOS,)))
        for i in range(5)
    ]  # fmt: skip
    long_running = reqs[4]
    for r in [long_running, *reqs[:3], *reqs[5:]]:
        s.add_request(r)
    first = s.schedule()  # nothing running yet: the first 4 start at once
    assert [x.request_id for x in first.scheduled] == [10, 0, 1, 2]
    s.update_from_output(first, fake_output(first))
    # Requests 0-2 finish after 3 tokens; until then, and with one slot free, nobody joins.
    steps = _decode_all(s, 2)
    assert all(len(x.scheduled) == 4 for x in steps)
    joined = s.schedule()  # 3 slots free now (0, 1, 2 finished): a group of 3 joins
    assert sorted(x.request_id for x in joined.scheduled) == [10, 11, 12, 13]
    assert len(s.running) == 4


def test_admission_batch_admits_the_last_few_when_all_of_them_fit():
    s = make_scheduler(max_num_seqs=5, admission_batch=4)
    for r in make_requests(6, num_prompt=4, max_new_tokens=2):
        s.add_request(r)
    first = s.schedule()
    assert len(first.scheduled) == 5
    s.update_from_output(first, fake_output(first))
    # 1 waiting, 0 free slots: waits; once slots free up it joins though fewer than 4 wait.
    finished = run_to_completion(s)
    assert sorted(finished) == [0, 1, 2, 3, 4, 5]


def test_admission_batch_must_be_positive():
    with pytest.raises(ValueError, match="admission_batch=0"):
        SchedulerConfig(admission_batch=0)


def test_admission_headroom_keeps_growth_room_for_running_requests():
    s = make_scheduler(num_blocks=12, block_size=4, admission_headroom_tokens=8)
    for r in make_requests(6, num_prompt=8, max_new_tokens=16):
        s.add_request(r)
    first = s.schedule()
    # 12 blocks: each start takes 2 and must leave 2 (8 tokens) per running request, so the
    # 4th would leave 4 free blocks for 4 requests' 8: it waits (without headroom, 6 start).
    assert [x.request_id for x in first.scheduled] == [0, 1, 2]
    assert s.block_manager.num_free_blocks == 6


def test_admission_headroom_means_fewer_preemptions_same_outputs():
    def run(headroom: int) -> tuple[dict, int]:
        s = make_scheduler(num_blocks=12, block_size=4, admission_headroom_tokens=headroom)
        for r in make_requests(6, num_prompt=8, max_new_tokens=16):
            s.add_request(r)
        return run_to_completion(s), s.num_preemptions

    (plain, plain_preemptions), (kept, kept_preemptions) = run(0), run(8)
    assert plain == kept and sorted(kept) == list(range(6))
    assert kept_preemptions < plain_preemptions


def test_admission_headroom_must_not_be_negative():
    with pytest.raises(ValueError, match="admission_headroom_tokens=-1"):
        SchedulerConfig(admission_headroom_tokens=-1)
