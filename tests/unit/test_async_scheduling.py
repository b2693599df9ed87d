"""Async scheduling in the scheduler: step n+1 is scheduled before step n's tokens arrive.

A fake model stands in for the runner: each request's sampled token is a function of all the
tokens fed to it so far, so a wrong pending input, a lost token or a stale row changes every
later token. Async and synchronous loops must give the same outputs and events.
"""

from __future__ import annotations

import random

import pytest

from harness.engine.kv_cache import BlockManager
from harness.engine.outputs import ModelRunnerOutput, RequestOutput, SchedulerOutput
from harness.engine.request import PENDING_TOKEN, Request, RequestStatus, SamplingParams
from harness.engine.scheduler import Scheduler, SchedulerConfig

EOS = 2


class FakeModel:
    """Per request, the tokens at each position ("the KV cache"); samples from their hash."""

    def __init__(self) -> None:
        self.seqs: dict[int, list[int]] = {}
        self.last: dict[int, int] = {}  # the previous step's samples: pending inputs
        self.sampled_rows = 0

    def run(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        out = {}
        for s in sched.scheduled:
            fed = [self.last[s.request_id] if t == PENDING_TOKEN else t for t in s.token_ids]
            seq = self.seqs.setdefault(s.request_id, [])
            assert len(seq) >= s.start_position, "a step skipped positions"
            del seq[s.start_position :]
            seq.extend(fed)
            if s.needs_sample:
                token = sum((p + 1) * t for p, t in enumerate(seq)) * 31 % 13 + EOS
                out[s.request_id] = 3 if token in s.suppress_token_ids else token
        self.last = out
        self.sampled_rows += len(out)
        return ModelRunnerOutput(out)


def _scheduler(num_blocks: int, **config) -> Scheduler:
    return Scheduler(SchedulerConfig(**config), BlockManager(num_blocks, 2))


def _requests(n: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        prompt = [rng.randrange(3, 50) for _ in range(rng.randrange(1, 12))]
        max_new = rng.randrange(1, 9)
        sp = SamplingParams(max_new, min(max_new, 1 + i % 3), eos_token_ids=(EOS,))
        requests.append(Request(i, prompt, sp))
    return requests


def _run(s: Scheduler, model: FakeModel, is_async: bool) -> list[RequestOutput]:
    events: list[RequestOutput] = []
    in_flight = None
    for _ in range(10_000):
        if not (s.has_unfinished() or in_flight):
            return events
        sched = s.schedule()
        queued = None if sched.is_empty else (sched, model.run(sched))
        if is_async:
            queued, in_flight = in_flight, queued
        assert queued or in_flight, "scheduler stalled"
        if queued:
            events += s.update_from_output(*queued)
    raise AssertionError("did not finish")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "config",
    [
        {"num_blocks": 200, "max_num_batched_tokens": 64},
        {"num_blocks": 12, "max_num_batched_tokens": 7, "max_num_seqs": 5},  # preempts
        {"num_blocks": 10, "max_num_batched_tokens": 5, "max_num_seqs": 3},
    ],
    ids=["roomy", "tiny_pool", "tinier_pool"],
)
def test_async_loop_gives_the_sync_loop_outputs_and_events(seed, config):
    results = []
    for is_async in (False, True):
        s = _scheduler(**config)
        for r in _requests(12, seed):
            s.add_request(r)
        model = FakeModel()
        events = _run(s, model, is_async)
        finished = {e.request_id: e.output_token_ids for e in events if e.is_finished}
        firsts = sorted((e.request_id, e.new_token_ids[0]) for e in events if e.is_first_token)
        assert sorted(finished) == list(range(12)) and len(firsts) == 12
        assert s.block_manager.num_free_blocks == s.block_manager.num_blocks
        results.append((finished, firsts, model.sampled_rows, s.num_preemptions))
    (sync_out, sync_firsts, sync_rows, _), (async_out, async_firsts, async_rows, _) = results
    assert async_out == sync_out and async_firsts == sync_firsts
    # rows sampled after a request's EOS (its stop was not known yet) are the only extra work
    num_eos = sum(o[-1] == EOS for o in sync_out.values())
    assert sync_rows <= async_rows <= sync_rows + num_eos
    assert s.num_output_tokens == sum(map(len, async_out.values()))  # dropped rows not counted


def test_preemption_happens_with_async_too():
    s = _scheduler(num_blocks=12, max_num_batched_tokens=7, max_num_seqs=5)
    for r in _requests(12, seed=0):
        s.add_request(r)
    _run(s, FakeModel(), is_async=True)
    assert s.num_preemptions > 0


def test_request_whose_last_token_is_pending_is_not_scheduled():
    s = _scheduler(num_blocks=20)
    req = Request(0, [5, 6, 7], SamplingParams(max_new_tokens=2, eos_token_ids=(EOS,)))
    s.add_request(req)
    first = s.schedule()  # prefill: output 1 pending
    second = s.schedule()  # decode fed the pending token: output 2 pending
    assert second.scheduled[0].token_ids == [PENDING_TOKEN]
    assert s.schedule().is_empty and s.has_unfinished()  # both outputs pending: nothing to run
    s.update_from_output(first, ModelRunnerOutput({0: 9}))
    [event] = s.update_from_output(second, ModelRunnerOutput({0: 8}))
    assert event.is_finished and event.output_token_ids == [9, 8]
    assert not s.has_unfinished() and s.block_manager.num_used_blocks == 0


def test_eos_while_the_next_step_runs_then_the_id_is_reused():
    """The extra row of a request that stopped at EOS is dropped, even when a new request
    with the same id has started since."""
    s = _scheduler(num_blocks=20)
    sp = SamplingParams(max_new_tokens=8, eos_token_ids=(EOS,))
    s.add_request(Request(5, [10] * 4, sp))
    st1 = s.schedule()
    st2 = s.schedule()  # decode of request 5, fed its pending first token
    [ev] = s.update_from_output(st1, ModelRunnerOutput({5: EOS}))
    assert ev.is_finished and ev.output_token_ids == [EOS]
    newer = Request(5, [20] * 4, sp)
    s.add_request(newer)
    st3 = s.schedule()
    assert [x.token_ids for x in st3.scheduled] == [[20] * 4]
    assert s.update_from_output(st2, ModelRunnerOutput({5: 9})) == []  # the old request's row
    [ev] = s.update_from_output(st3, ModelRunnerOutput({5: 11}))
    assert ev.is_first_token and newer.output_token_ids == [11]


def test_preempted_while_its_step_runs_and_that_token_stops_it():
    # 2 prompts of 8 take 4 blocks of 4; the one free block goes to request 0's decode.
    s = Scheduler(SchedulerConfig(max_num_seqs=8), BlockManager(5, 4))
    reqs = [
        Request(i, [10 + i] * 8, SamplingParams(max_new_tokens=6, eos_token_ids=(EOS,)))
        for i in range(2)
    ]
    for r in reqs:
        s.add_request(r)
    st1 = s.schedule()
    st2 = s.schedule()  # both need a 3rd block: request 1 is preempted, its token pending
    assert st2.preempted_request_ids == [1] and reqs[1].status is RequestStatus.PREEMPTED
    events = s.update_from_output(st1, ModelRunnerOutput({0: 7, 1: EOS}))
    assert [(e.request_id, e.is_finished) for e in events] == [(0, False), (1, True)]
    assert reqs[1].status is RequestStatus.FINISHED_STOPPED and not s.preempted
    s.update_from_output(st2, ModelRunnerOutput({0: 7}))
    while s.has_unfinished():
        sched = s.schedule()
        s.update_from_output(sched, ModelRunnerOutput({0: 7}))
    assert reqs[0].output_token_ids == [7] * 6 and s.block_manager.num_free_blocks == 5
