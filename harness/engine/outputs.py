"""Step contracts between scheduler, model runner and engine: small dataclasses of ints.

Plain Python (no torch); these are the engine's internal API, each field with its shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScheduledRequest:
    """One request's share of a step: tokens [start, start + num_tokens) of prompt+outputs."""

    request_id: int
    token_ids: list[int]  # [num_tokens] the inputs fed this step
    start_position: int  # == num_computed_tokens before the step
    block_ids: list[int]  # the request's whole block table (covers start + num_tokens)
    needs_sample: bool  # the chunk reaches the last known token: sample the next one
    suppress_token_ids: tuple[int, ...]  # EOS ids to mask: below min_new_tokens, ignore_eos

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)  # [num_reqs] in batch order
    preempted_request_ids: list[int] = field(default_factory=list)
    num_batched_tokens: int = 0  # sum of num_tokens over scheduled

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class ModelRunnerOutput:
    sampled_token_ids: dict[int, int] = field(default_factory=dict)  # req_id -> next token
    # CUDA: from the forward's first launch to the tokens on the host, GPU clock (the device's
    # work, with any wait for the host's launches inside the step); 0.0 elsewhere
    gpu_seconds: float = 0.0


@dataclass
class RequestOutput:
    """An event for the caller: a first token, or a finished request with all its tokens."""

    request_id: int
    new_token_ids: list[int]  # tokens produced this step (0 or 1 of them)
    output_token_ids: list[int]  # all tokens so far; final on finish
    is_first_token: bool = False
    is_finished: bool = False
    finish_reason: str = ""  # "stop" (EOS) | "length"
