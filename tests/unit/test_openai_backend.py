"""OpenAIBackend against an in-test fake OpenAI server: token sources, fallbacks, failures.

The fake server (also used by the e2e tests) runs aiohttp.web on a thread on 127.0.0.1 and
stops when its `with` block ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest
from aiohttp import web

from harness.backends.base import BackendError, GenerationRequest
from harness.backends.openai import EndpointSettings, OpenAIBackend, check_endpoint
from harness.backends.openai_protocol import (
    CompletionStream,
    EndpointCaps,
    EndpointError,
    completion_body,
    normalize_url,
)
from harness.config.schema import HarnessConfig
from tests.unit.sinks import RecordingSink

EOS = 2


class CharTokenizer:
    """ids 3..28 <-> 'a'..'z'; EOS (2) is special and decodes to ''."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) - 97 + 3 for c in text if "a" <= c <= "z"]

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + t - 3) for t in token_ids if 3 <= t <= 28)


def fake_output(prompt: list[int], n: int) -> list[int]:
    """Deterministic 'generation': n ids in 3..28 from the prompt."""
    return [3 + (sum(prompt) + 7 * i) % 26 for i in range(n)]


class FakeServer:
    """A scriptable OpenAI-compatible server (SSE streaming only)."""

    def __init__(
        self,
        model: str = "fake",
        token_source: str = "token_ids",  # token_ids | logprobs | text
        accept_token_prompt: bool = True,
        accept_extras: bool = True,
        break_after: int = 0,  # > 0: drop the connection after this many tokens (not probes)
        error_after: int = 0,  # > 0: send an error chunk after this many tokens (not probes)
        delay_s: float = 0.0,  # sleep before the response (not probes)
        busy_first: int = 0,  # answer 503 to the first N non-probe requests
    ) -> None:
        self.model, self.token_source = model, token_source
        self.accept_token_prompt, self.accept_extras = accept_token_prompt, accept_extras
        self.break_after, self.error_after = break_after, error_after
        self.delay_s, self.busy_first = delay_s, busy_first
        self.bodies: list[dict] = []
        self.tok = CharTokenizer()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(app), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _start(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model}]})

    def _reject(self, message: str) -> web.Response:
        return web.json_response({"error": {"message": message}}, status=400)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        is_probe = body["max_tokens"] <= 2
        prompt = body["prompt"]
        if isinstance(prompt, list) and not self.accept_token_prompt:
            return self._reject("prompt must be a string")
        if "min_tokens" in body and not self.accept_extras:
            return self._reject("unknown field min_tokens")
        if not is_probe:
            if self.busy_first > 0:
                self.busy_first -= 1
                return web.json_response({"error": {"message": "busy"}}, status=503)
            await asyncio.sleep(self.delay_s)
        ids = prompt if isinstance(prompt, list) else self.tok.encode(prompt)
        out = fake_output(ids, body["max_tokens"] - 1) + [EOS]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, t in enumerate(out):
            if not is_probe and i == self.break_after > 0:
                request.transport.close()  # the stream breaks mid-way
                return resp
            if not is_probe and i == self.error_after > 0:
                await resp.write(b'data: {"error": {"message": "engine died"}}\n\n')
                return resp
            choice = {"index": 0, "text": self.tok.decode([t]), "finish_reason": None}
            if self.token_source == "token_ids" and body.get("return_token_ids"):
                choice["token_ids"] = [t]
            if self.token_source == "logprobs" and body.get("return_tokens_as_token_ids"):
                choice["logprobs"] = {"tokens": [f"token_id:{t}"]}
            if i == len(out) - 1:
                choice["finish_reason"] = "stop"
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


def requests(n: int = 4, max_new: int = 6) -> list[GenerationRequest]:
    return [GenerationRequest(i, [3 + i, 4, 5], max_new, 1, EOS) for i in range(n)]


def run_backend(server: FakeServer, reqs: list[GenerationRequest], **settings) -> tuple:
    s = EndpointSettings(url=server.url, model=server.model, **settings)
    backend = OpenAIBackend(s, CharTokenizer(), EOS)
    sink = RecordingSink()
    backend.start(sink)
    backend.submit(reqs)
    error = None
    try:
        backend.stop()
    except BackendError as e:
        error = e
    return backend, sink, error


@pytest.mark.parametrize(
    "kwargs, source, token_prompt",
    [
        ({}, "token_ids", True),
        ({"token_source": "logprobs"}, "logprobs", True),
        ({"token_source": "text", "accept_token_prompt": False}, "retokenize", False),
        ({"token_source": "text", "accept_extras": False}, "retokenize", True),
    ],
)
def test_token_sources_give_the_same_ids(kwargs, source, token_prompt, caplog):
    caplog.set_level(logging.INFO)
    with FakeServer(**kwargs) as server:
        backend, sink, error = run_backend(server, requests())
    assert error is None
    assert backend.caps.token_source == source and backend.caps.token_prompt == token_prompt
    for r in requests():
        want = fake_output(r.prompt_token_ids, r.max_new_tokens - 1) + [EOS]
        assert sink.finished[r.request_id] == want
        assert sink.first[r.request_id] == want[0]
    assert "output ids from" in caplog.text  # the log says where the ids came from
    body = server.bodies[-1]
    assert body["temperature"] == 0 and body["stream"] is True and body["max_tokens"] == 6
    assert isinstance(body["prompt"], list) == token_prompt


def test_fixed_length_body_pins_greedy_and_ignores_eos():
    r = GenerationRequest(0, [3, 4], max_new_tokens=50, min_new_tokens=2, fixed_output_len=7)
    body = completion_body("m", r, EndpointCaps(), None)
    assert body["max_tokens"] == body["min_tokens"] == 7 and body["ignore_eos"] is True
    caps = EndpointCaps(token_prompt=False, extra_fields=False, token_source="retokenize")
    text = completion_body("m", r, caps, CharTokenizer())
    assert text["prompt"] == "ab" and "min_tokens" not in text and text["temperature"] == 0


def test_stream_keeps_at_most_one_eos_at_the_end():
    s = CompletionStream("token_ids", EOS, ignore_eos=False)
    s.add({"choices": [{"text": "", "token_ids": [5, EOS, 6, EOS]}]})
    assert s.tokens() == [5, EOS]
    r = CompletionStream("retokenize", EOS, ignore_eos=False, tokenizer=CharTokenizer())
    r.add({"choices": [{"text": "ab", "finish_reason": "stop"}]})
    assert r.first_token_id == 3 and r.tokens() == [3, 4, EOS]


def test_mid_stream_break_completes_the_sample_and_reports_it():
    with FakeServer(break_after=3) as server:
        backend, sink, error = run_backend(server, requests(2))
    assert error is not None and "2 of 2 requests failed" in str(error)
    assert "request 0" in str(error) and "after 3 tokens" in str(error)
    assert sorted(sink.finished) == [0, 1]  # completed to LoadGen: nothing hangs
    assert all(len(v) == 3 for v in sink.finished.values())
    assert len([b for b in server.bodies if b["max_tokens"] > 2]) == 2  # never retried


def test_error_chunk_fails_the_sample():
    with FakeServer(error_after=2) as server:
        _, sink, error = run_backend(server, requests(1))
    assert error is not None and "engine died" in str(error)
    assert len(sink.finished[0]) == 2


def test_slow_server_times_out():
    start = time.perf_counter()
    with FakeServer(delay_s=5) as server:
        _, sink, error = run_backend(server, requests(2), timeout_s=1.0)
        elapsed = time.perf_counter() - start
    assert elapsed < 4.5  # the 1 s timeout fired, not the 5 s answer
    assert error is not None and "timed out" in str(error)
    assert sink.finished == {0: [], 1: []}


def test_busy_server_is_retried_before_any_token():
    with FakeServer(busy_first=2) as server:
        backend, sink, error = run_backend(server, requests(1), max_concurrency=1)
    assert error is None and backend.num_retries == 2
    assert sink.finished[0][-1] == EOS


def test_preflight_names_unreachable_url_and_wrong_model():
    cfg = HarnessConfig()
    cfg.engine.backend = "openai"
    with pytest.raises(EndpointError, match="--endpoint_url"):
        check_endpoint(cfg)  # no URL at all
    cfg.engine.endpoint_url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(EndpointError, match="cannot reach"):
        check_endpoint(cfg)
    with FakeServer(model="served") as server:
        cfg.engine.endpoint_url = server.url + "/v1/"
        cfg.engine.endpoint_model = "other"
        with pytest.raises(EndpointError, match=r"'other' is not served.*\['served'\]"):
            check_endpoint(cfg)
        cfg.engine.endpoint_model = ""
        assert check_endpoint(cfg) == "served"  # the only model


def test_api_key_comes_from_the_named_variable(monkeypatch):
    cfg = HarnessConfig()
    cfg.engine.endpoint_url = "http://127.0.0.1:1"
    cfg.engine.endpoint_api_key_env = "HARNESS_TEST_KEY"
    monkeypatch.delenv("HARNESS_TEST_KEY", raising=False)
    with pytest.raises(EndpointError, match="HARNESS_TEST_KEY"):
        EndpointSettings.from_config(cfg)
    monkeypatch.setenv("HARNESS_TEST_KEY", "sk-test")
    assert EndpointSettings.from_config(cfg).headers() == {"Authorization": "Bearer sk-test"}
    assert normalize_url("http://h:1/v1/") == "http://h:1"
