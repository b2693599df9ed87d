"""One generation request as the engine tracks it: tokens, progress, status, blocks.

Plain Python over ints and lists (no torch): the scheduler and its tests build these directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# Stands for a token sampled by a step still running (async scheduling); the model runner
# feeds that step's sampled token in its place.
PENDING_TOKEN = -1


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # blocks freed; waits again and recomputes prompt + outputs so far
    # Anything from here on is finished.
    FINISHED_STOPPED = 3  # sampled EOS
    FINISHED_LENGTH = 4  # reached max_new_tokens (or fixed_output_len)

    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


@dataclass(frozen=True)
class SamplingParams:
    """Greedy decoding limits. ignore_eos: never stop at (nor emit) EOS; for speed runs."""

    max_new_tokens: int = 16
    min_new_tokens: int = 1
    eos_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens={self.min_new_tokens} > max_new_tokens={self.max_new_tokens}:"
                " lower min_new_tokens"
            )


@dataclass
class Request:
    request_id: int
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    arrival_index: int = 0  # set by the scheduler; preemption picks the newest first
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V sit in the cache or are being computed
    num_pending_tokens: int = 0  # sampled by a scheduled step, not yet in output_token_ids
    block_ids: list[int] = field(default_factory=list)
    num_preemptions: int = 0
    has_emitted_first_token: bool = False

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.request_id}: empty prompt; give at least one token")

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus outputs, pending ones included: what a recompute must prefill."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_pending_tokens

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_scheduled_outputs(self) -> int:
        """Outputs known or pending: how many this request will have once its steps end."""
        return len(self.output_token_ids) + self.num_pending_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished()

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + outputs, without building the full list; pending
        tokens read as PENDING_TOKEN."""
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        known = n + len(self.output_token_ids)
        pending = [PENDING_TOKEN] * (end - max(start, known)) if end > known else []
        if start >= n:
            return self.output_token_ids[start - n : end - n] + pending
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n] + pending
