"""The trtllm streaming adapter and backend thread, driven by a FAKE TensorRT-LLM.

FakeLLM / fake_stream below are NOT TensorRT-LLM: they imitate the documented shape of
`LLM.generate_async(prompt_token_ids, sampling_params, streaming=True)` (an async iterator
re-yielding one mutated RequestOutput whose outputs[0].token_ids accumulates, `finished` True
on the last yield) so that these tests check OUR adapter: first token once, EOS trimming,
failures reported as BackendError, no hang. The real library is exercised only by the test
at the bottom, skipped unless tensorrt_llm and CUDA are present.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from harness.backends.base import BackendError, GenerationRequest
from harness.backends.trtllm import TrtllmBackend
from harness.backends.trtllm_config import llm_kwargs, sampling_kwargs
from harness.backends.trtllm_stream import TrtllmStreamError, relay_stream, trim_after_eos

EOS = 2


@dataclass
class FakeCompletion:  # the fields of tensorrt_llm's CompletionOutput this adapter reads
    token_ids: list[int] = field(default_factory=list)


@dataclass
class FakeRequestOutput:  # ... and of RequestOutput
    outputs: list[FakeCompletion] = field(default_factory=lambda: [FakeCompletion()])
    finished: bool = False


async def fake_stream(chunks: list[list[int]], fail_at: int | None = None, finish: bool = True):
    """Yield one mutated RequestOutput per chunk of new tokens, as TensorRT-LLM does."""
    out = FakeRequestOutput()
    for i, chunk in enumerate(chunks):
        await asyncio.sleep(0)
        if fail_at is not None and i == fail_at:
            raise RuntimeError("fake engine fault")
        out.outputs[0].token_ids.extend(chunk)
        out.finished = finish and i == len(chunks) - 1
        yield out


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, Any]] = []
        self.lock = threading.Lock()

    def on_first_token(self, request_id: int, token_id: int) -> None:
        with self.lock:
            self.events.append(("first", request_id, token_id))

    def on_finished(self, request_id: int, token_ids: list[int]) -> None:
        with self.lock:
            self.events.append(("finished", request_id, list(token_ids)))

    def of(self, request_id: int) -> list[tuple[str, Any]]:
        return [(kind, value) for kind, rid, value in self.events if rid == request_id]


def relay(chunks, **kw):
    sink = Sink()
    fail_at = kw.pop("fail_at", None)
    finish = kw.pop("finish", True)
    stream = fake_stream(chunks, fail_at, finish)
    result = asyncio.run(relay_stream(7, stream, sink, EOS, **kw))
    return result, sink.of(7)


# --- the adapter -------------------------------------------------------------------------


def test_first_token_once_then_all_tokens():
    result, events = relay([[11], [12], [13, EOS]])
    assert events == [("first", 11), ("finished", [11, 12, 13, EOS])]
    assert result == [11, 12, 13, EOS]


def test_first_yield_may_hold_several_tokens_or_none():
    _, events = relay([[], [21, 22], [23]])
    assert events == [("first", 21), ("finished", [21, 22, 23])]


def test_eos_trimming_and_padding():
    _, events = relay([[5], [EOS, EOS, EOS]])  # pad_id == end_id: trailing padding
    assert events[-1] == ("finished", [5, EOS])
    assert trim_after_eos([EOS], EOS, False) == [EOS]
    assert trim_after_eos([4, 5], EOS, False) == [4, 5]
    assert trim_after_eos([4, EOS, 5], None, False) == [4, EOS, 5]


def test_ignore_eos_keeps_every_token():
    _, events = relay([[5, EOS], [6, EOS]], ignore_eos=True)
    assert events[-1] == ("finished", [5, EOS, 6, EOS])


def test_failure_mid_stream_is_a_backend_error_with_partial_tokens():
    with pytest.raises(TrtllmStreamError, match="request 7 failed after 2 tokens") as info:
        relay([[1], [2], [3]], fail_at=2)
    assert isinstance(info.value, BackendError)
    assert info.value.tokens_so_far == [1, 2]


def test_stream_without_finished_output_is_an_error():
    with pytest.raises(TrtllmStreamError, match="without a finished output"):
        relay([[1], [2]], finish=False)


# --- the backend thread over a fake LLM --------------------------------------------------


class FakeSamplingParams:  # keeps the keywords the backend passed, like SamplingParams(**kw)
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.end_id = kw["end_id"]


class FakeLLM:
    """Scripted per request (keyed by the first prompt token); NOT TensorRT-LLM."""

    def __init__(self, scripts: dict[int, dict[str, Any]]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[list[int], FakeSamplingParams, bool]] = []
        self.shut_down = False

    def generate_async(self, prompt_token_ids, sampling_params, streaming=False):
        self.calls.append((prompt_token_ids, sampling_params, streaming))
        script = self.scripts[prompt_token_ids[0]]
        if script.get("refuse"):
            raise ValueError("fake: invalid sampling params")
        return fake_stream(script["chunks"], script.get("fail_at"))

    def shutdown(self) -> None:
        self.shut_down = True


def run_backend(llm: FakeLLM, requests: list[GenerationRequest]) -> tuple[Sink, Exception | None]:
    backend = TrtllmBackend(llm, FakeSamplingParams, eos_token_id=EOS)
    sink = Sink()
    backend.start(sink)
    backend.submit(requests)  # one call: a later submit() would raise once a request failed
    error: list[Exception] = []

    def stop() -> None:
        try:
            backend.stop()
        except BackendError as err:
            error.append(err)

    stopper = threading.Thread(target=stop)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive(), "stop() hung"
    assert llm.shut_down
    return sink, error[0] if error else None


def req(i: int, **kw: Any) -> GenerationRequest:
    return GenerationRequest(i, [100 + i, 9], max_new_tokens=8, eos_token_id=EOS, **kw)


def test_backend_reports_each_request_first_token_once_then_finished():
    llm = FakeLLM({100 + i: {"chunks": [[i + 20], [i + 30], [EOS, EOS]]} for i in range(6)})
    sink, error = run_backend(llm, [req(i) for i in range(6)])
    assert error is None
    for i in range(6):
        assert sink.of(i) == [("first", i + 20), ("finished", [i + 20, i + 30, EOS])]
    prompt, params, streaming = llm.calls[0]
    assert streaming is True and prompt == [100, 9]
    assert params.kw == sampling_kwargs(req(0), EOS)


def test_backend_fixed_output_len_ignores_eos():
    llm = FakeLLM({100: {"chunks": [[EOS], [5], [EOS]]}})
    sink, error = run_backend(llm, [req(0, fixed_output_len=3)])
    assert error is None and sink.of(0)[-1] == ("finished", [EOS, 5, EOS])
    assert llm.calls[0][1].kw["ignore_eos"] is True


def test_backend_failure_mid_stream_completes_request_and_raises_at_stop():
    llm = FakeLLM({100: {"chunks": [[1], [2], [3]], "fail_at": 2}, 101: {"chunks": [[4, EOS]]}})
    sink, error = run_backend(llm, [req(0), req(1)])
    assert isinstance(error, BackendError) and "request 0 failed after 2 tokens" in str(error)
    assert sink.of(0) == [("first", 1), ("finished", [1, 2])]  # LoadGen is not left waiting
    assert sink.of(1) == [("first", 4), ("finished", [4, EOS])]


def test_backend_request_that_cannot_start_and_later_submit():
    llm = FakeLLM({100: {"refuse": True}})
    backend = TrtllmBackend(llm, FakeSamplingParams, eos_token_id=EOS)
    sink = Sink()
    backend.start(sink)
    backend.submit([req(0)])
    with backend._idle:
        assert backend._idle.wait_for(lambda: backend._num_in_flight == 0, timeout=10)
    with pytest.raises(BackendError, match="could not run"):
        backend.submit([req(0)])
    with pytest.raises(BackendError, match="could not run"):
        backend.stop()
    assert sink.of(0) == [("finished", [])]


def test_submit_before_start_is_refused():
    with pytest.raises(BackendError, match="start"):
        TrtllmBackend(FakeLLM({}), FakeSamplingParams, EOS).submit([req(0)])


# --- the real library (skipped here: no tensorrt_llm, no CUDA) ---------------------------


def _has_trtllm() -> bool:
    return importlib.util.find_spec("tensorrt_llm") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _has_trtllm(), reason="needs tensorrt_llm (pip install tensorrt-llm)")
def test_real_sampling_params_and_kv_cache_config_accept_our_keywords():
    from tensorrt_llm import SamplingParams
    from tensorrt_llm.llmapi import KvCacheConfig

    from harness.config.loader import load_config

    cfg = load_config("llama2-70b", "Offline", "H100-SXM-80GBx1", {"backend": "trtllm"})
    params = SamplingParams(**sampling_kwargs(req(0), EOS))
    assert params.end_id == EOS and params.top_k == 1
    KvCacheConfig(**llm_kwargs(cfg, "pytorch", model="m")["kv_cache_config"])
