"""One TensorRT-LLM stream -> our two sink events: first token once, then all tokens.

Pure asyncio over the documented shape of `LLM.generate_async(..., streaming=True)`: an async
iterator of RequestOutput whose `outputs[0].token_ids` holds every token generated so far and
whose `finished` turns True on the last yield. It never imports tensorrt_llm.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

from harness.backends.base import BackendError, OutputSink


class TrtllmStreamError(BackendError):
    """A request's stream failed; tokens_so_far is what had arrived before the failure."""

    def __init__(self, request_id: int, tokens_so_far: list[int], reason: str) -> None:
        super().__init__(
            f"trtllm request {request_id} failed after {len(tokens_so_far)} tokens: {reason}; "
            "see the TensorRT-LLM log above (out of GPU memory: lower --gpu_memory_utilization "
            "or --max_num_seqs)"
        )
        self.request_id = request_id
        self.tokens_so_far = tokens_so_far


def trim_after_eos(token_ids: list[int], eos_token_id: int | None, ignore_eos: bool) -> list[int]:
    """Keep tokens up to and including the first EOS: at most one EOS, at the end, no padding
    (pad_id is the EOS id, so trailing padding goes too). ignore_eos runs keep every token."""
    if ignore_eos or eos_token_id is None:
        return list(token_ids)
    try:
        return list(token_ids[: token_ids.index(eos_token_id) + 1])
    except ValueError:
        return list(token_ids)


async def relay_stream(
    request_id: int,
    stream: AsyncIterable[Any],
    sink: OutputSink,
    eos_token_id: int | None,
    ignore_eos: bool = False,
) -> list[int]:
    """Drive one stream to its end; report first token (once) and finish to the sink.

    Failures of the stream itself become TrtllmStreamError (the caller still completes the
    request so LoadGen does not wait forever); errors raised by the sink propagate unchanged.
    """
    tokens: list[int] = []
    sent_first = False
    finished = False
    iterator = stream.__aiter__()
    try:
        while not finished:
            try:
                output = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except Exception as err:  # the library's own failure, e.g. a RequestError
                raise TrtllmStreamError(request_id, tokens, repr(err)) from err
            # The library mutates and re-yields one object: copy the ids now.
            tokens = list(output.outputs[0].token_ids)
            finished = bool(output.finished)
            if tokens and not sent_first:
                sink.on_first_token(request_id, tokens[0])
                sent_first = True
    finally:
        aclose = getattr(iterator, "aclose", None)  # async generators: finalize here, not at GC
        if aclose is not None:
            await aclose()
    if not finished:
        raise TrtllmStreamError(request_id, tokens, "the stream ended without a finished output")
    final = trim_after_eos(tokens, eos_token_id, ignore_eos)
    sink.on_finished(request_id, final)
    return final
