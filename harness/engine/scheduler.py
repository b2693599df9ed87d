"""Token-budget continuous batching: who runs this step, with how many tokens, and preemption.

Plain Python (no torch). Each step gives every scheduled request a number of tokens: a whole
prompt, a prefill chunk, or 1 for decode. When KV blocks run out the newest running requests
are preempted (blocks freed) and later recomputed from prompt + outputs so far.

A request's progress advances when it is scheduled; its sampled token arrives with
`update_from_output`. In between the token is pending, so the next step may be scheduled
before this one's tokens are known (async scheduling): a pending token's decode row is fed
the sampled token on the device, and a request whose last token is pending is not scheduled.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass

from harness.engine.kv_cache import BlockManager
from harness.engine.outputs import (
    ModelRunnerOutput,
    RequestOutput,
    ScheduledRequest,
    SchedulerOutput,
)
from harness.engine.request import Request, RequestStatus

logger = logging.getLogger(__name__)

ADMISSION_POLICIES = ("fifo", "longest_first")


class RequestTooLongError(ValueError):
    """A request can never fit the KV pool or the model's context, even running alone."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # running requests at once
    max_num_batched_tokens: int = 2048  # tokens per step, prefill chunks and decodes together
    admission: str = "fifo"  # fifo | longest_first (longest prompt first; Offline)
    max_model_len: int = 0  # prompt + outputs limit; 0: only the KV pool limits it
    # While others decode, new requests start only in groups of this many (Offline: most
    # steps then stay decode-only, replayed as CUDA graphs); 1: as soon as one fits.
    admission_batch: int = 1
    # A new request starts only if the free blocks left after its prompt still hold this many
    # more tokens for every running sequence; 0: whenever its prompt fits. Preempted requests
    # resume without this check.
    admission_headroom_tokens: int = 0

    def __post_init__(self) -> None:
        if self.admission not in ADMISSION_POLICIES:
            raise ValueError(f"admission={self.admission!r}: use one of {ADMISSION_POLICIES}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.admission_batch < 1:
            raise ValueError(
                f"max_num_seqs={self.max_num_seqs}, max_num_batched_tokens="
                f"{self.max_num_batched_tokens}, admission_batch={self.admission_batch}: "
                "each must be >= 1"
            )
        if self.admission_headroom_tokens < 0:
            raise ValueError(
                f"admission_headroom_tokens={self.admission_headroom_tokens}: must be >= 0"
            )


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.requests: dict[int, Request] = {}
        self.running: list[Request] = []  # admission order; preemption takes from the end
        self.preempted: deque[Request] = deque()  # resumed before any new request
        self._waiting: list[tuple[tuple[int, int], Request]] = []  # (sort key, request)
        self._num_arrivals = 0
        self.num_preemptions = 0
        self.num_output_tokens = 0  # tokens appended to outputs (not rows dropped after a stop)
        self._in_flight: deque[list[Request]] = deque()  # requests of steps not yet updated

    # --- intake ------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id} is already in the engine")
        self._check_fits(request)
        request.arrival_index = self._num_arrivals
        self._num_arrivals += 1
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        if self.config.admission == "longest_first":
            key = (-request.num_prompt_tokens, request.arrival_index)
        else:
            key = (0, request.arrival_index)
        bisect.insort(self._waiting, (key, request), key=lambda item: item[0])

    def _check_fits(self, request: Request) -> None:
        max_len = request.num_prompt_tokens + request.sampling.max_new_tokens
        bm = self.block_manager
        if bm.num_blocks_for(max_len) > bm.num_blocks:
            raise RequestTooLongError(
                f"request {request.request_id}: prompt {request.num_prompt_tokens} + "
                f"max_new_tokens {request.sampling.max_new_tokens} needs "
                f"{bm.num_blocks_for(max_len)} KV blocks, the pool has {bm.num_blocks}; "
                "raise num_kv_blocks / gpu_memory_utilization or lower max_new_tokens"
            )
        if self.config.max_model_len and max_len > self.config.max_model_len:
            raise RequestTooLongError(
                f"request {request.request_id}: prompt + max_new_tokens = {max_len} > "
                f"max_model_len {self.config.max_model_len}; shorten the prompt or max_new_tokens"
            )

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + len(self.preempted)

    def has_unfinished(self) -> bool:
        return bool(self.running or self._waiting or self.preempted)

    # --- schedule ----------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        scheduled: list[Request] = []  # out.scheduled's requests
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager

        # 1. Running requests first, oldest first: decodes and unfinished prefill chunks.
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            if req.num_scheduled_outputs >= req.sampling.max_new_tokens:
                i += 1  # its last token is pending: it finishes with that step's update
                continue
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            while not bm.append_slots(req, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted_request_ids.append(victim.request_id)
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                break  # req preempted itself: everything after it is gone too
            out.scheduled.append(self._schedule_tokens(req, num_new))
            scheduled.append(req)
            budget -= num_new
            i += 1

        # 2. Then waiting requests (preempted ones first), unless this step had to preempt.
        may_admit = self._may_admit()  # decided once, before this step's admissions
        while (
            may_admit
            and not out.preempted_request_ids
            and budget > 0
            and len(self.running) < self.config.max_num_seqs
            and (self.preempted or self._waiting)
        ):
            req = self.preempted[0] if self.preempted else self._waiting[0][1]
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self.preempted and not self._leaves_headroom(req, num_new):
                break
            if not bm.append_slots(req, num_new):
                break
            if self.preempted:
                self.preempted.popleft()
            else:
                self._waiting.pop(0)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.scheduled.append(self._schedule_tokens(req, num_new))
            scheduled.append(req)
            budget -= num_new

        out.num_batched_tokens = self.config.max_num_batched_tokens - budget
        if scheduled:
            self._in_flight.append(scheduled)
        return out

    def _may_admit(self) -> bool:
        """Batched admission: with requests running, wait until admission_batch free slots
        (or every waiting request) can be filled at once. Preempted requests never wait."""
        group = self.config.admission_batch
        if group <= 1 or not self.running or self.preempted:
            return True
        free_slots = self.config.max_num_seqs - len(self.running)
        return free_slots >= min(group, len(self._waiting))

    def _leaves_headroom(self, req: Request, num_new: int) -> bool:
        """Would admitting req keep admission_headroom_tokens of growth free for each running
        sequence (req included)? Always true with nothing running, so work never stalls."""
        tokens = self.config.admission_headroom_tokens
        if tokens == 0 or not self.running:
            return True
        bm = self.block_manager
        reserve = bm.num_blocks_for(tokens) * (len(self.running) + 1)
        return bm.num_free_blocks - bm.num_new_blocks_needed(req, num_new) >= reserve

    def _schedule_tokens(self, req: Request, num_new: int) -> ScheduledRequest:
        """req's next num_new tokens go into this step; a sampled token becomes pending."""
        start = req.num_computed_tokens
        sp = req.sampling
        suppress = sp.ignore_eos or req.num_scheduled_outputs < sp.min_new_tokens
        scheduled = ScheduledRequest(
            request_id=req.request_id,
            token_ids=req.token_ids(start, start + num_new),
            start_position=start,
            block_ids=req.block_ids,
            needs_sample=start + num_new == req.num_tokens,
            suppress_token_ids=sp.eos_token_ids if suppress else (),
        )
        req.num_computed_tokens += num_new
        req.num_pending_tokens += scheduled.needs_sample
        return scheduled

    def _preempt(self, req: Request) -> None:
        self.block_manager.free_request(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.preempted.appendleft(req)  # newest preempted goes last: oldest resumes first
        logger.debug("preempted request %d (%d tokens)", req.request_id, req.num_tokens)

    # --- results -----------------------------------------------------------------------

    def update_from_output(
        self, sched: SchedulerOutput, runner_out: ModelRunnerOutput
    ) -> list[RequestOutput]:
        """Apply the sampled tokens of the oldest scheduled step not yet updated (`sched`)."""
        requests = self._in_flight.popleft()
        assert len(requests) == len(sched.scheduled), "steps must be updated in schedule order"
        events: list[RequestOutput] = []
        num_finished = 0
        for s, req in zip(sched.scheduled, requests, strict=True):
            if not s.needs_sample or req.is_finished:  # finished: stopped at EOS the step before
                continue
            token = runner_out.sampled_token_ids[s.request_id]
            req.num_pending_tokens -= 1
            req.output_token_ids.append(token)
            self.num_output_tokens += 1
            is_first = not req.has_emitted_first_token
            req.has_emitted_first_token = True
            status = self._stop_status(req, token)
            if status is not None:
                if req.status is RequestStatus.PREEMPTED:  # preempted while its step ran
                    self.preempted.remove(req)
                req.status = status
                self.block_manager.free_request(req)
                del self.requests[req.request_id]
                num_finished += 1
            if is_first or status is not None:
                events.append(
                    RequestOutput(
                        request_id=req.request_id,
                        new_token_ids=[token],
                        output_token_ids=req.output_token_ids,
                        is_first_token=is_first,
                        is_finished=status is not None,
                        finish_reason=_FINISH_REASONS.get(status, ""),
                    )
                )
        if num_finished:
            self.running = [r for r in self.running if not r.is_finished]
        return events

    @staticmethod
    def _stop_status(req: Request, token: int) -> RequestStatus | None:
        sp = req.sampling
        n = req.num_output_tokens
        if not sp.ignore_eos and n >= sp.min_new_tokens and token in sp.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if n >= sp.max_new_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
}
