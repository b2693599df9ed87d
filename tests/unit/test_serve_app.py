"""The serve HTTP API over a fake engine backend: SSE chunks, validation, shared batching."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence

from aiohttp.test_utils import TestClient, TestServer

from harness.backends.base import GenerationRequest, OutputSink
from harness.serve.app import EngineBridge, IncrementalDetokenizer, ServeLimits, make_app
from tests.unit.test_openai_backend import CharTokenizer, fake_output

EOS = 2
MODEL = "tiny"


class FakeEngineBackend:
    """Runs every submitted request on one worker thread, token by token, like the engine."""

    name = "fake"

    def __init__(self) -> None:
        self.sink: OutputSink | None = None
        self.submitted: list[GenerationRequest] = []
        self._lock = threading.Lock()

    def start(self, sink: OutputSink) -> None:
        self.sink = sink

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        with self._lock:
            self.submitted.extend(requests)
        for r in requests:
            threading.Thread(target=self._run, args=(r,), daemon=True).start()

    def _run(self, r: GenerationRequest) -> None:
        n = r.fixed_output_len or r.max_new_tokens
        out = fake_output(r.prompt_token_ids, n)
        if not r.fixed_output_len and n >= 4:
            out = out[:3] + [EOS]  # stops on EOS early
        self.sink.on_first_token(r.request_id, out[0])
        for t in out[1:-1]:
            self.sink.on_tokens(r.request_id, [t])
        self.sink.on_finished(r.request_id, out)

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        pass


class DyingEngineBackend(FakeEngineBackend):
    """Its worker dies on the first request."""

    def _run(self, r: GenerationRequest) -> None:
        self.sink.on_failed("CUDA out of memory (pretend)")


def limits() -> ServeLimits:
    def check_fits(prompt_len: int, max_tokens: int) -> str | None:
        return "too long" if prompt_len + max_tokens > 64 else None

    return ServeLimits(vocab_size=32, eos_token_ids=(EOS,), check_fits=check_fits)


def with_client(test, backend: FakeEngineBackend | None = None) -> tuple:  # noqa: ANN001
    """Runs an async test body taking (client, backend)."""
    backend = backend or FakeEngineBackend()

    async def main():
        def factory(loop: asyncio.AbstractEventLoop) -> EngineBridge:
            bridge = EngineBridge(backend, loop)
            backend.start(bridge)
            return bridge

        app = make_app(factory, CharTokenizer(), MODEL, limits())
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await test(client, backend)

    return asyncio.run(main()), backend


def body(**kw) -> dict:
    return {"model": MODEL, "prompt": [3, 4, 5], "max_tokens": 6, "temperature": 0, **kw}


async def read_sse(resp) -> list[dict]:  # noqa: ANN001
    chunks, done = [], False
    async for line in resp.content:
        text = line.decode().strip()
        if text == "data: [DONE]":
            done = True
        elif text.startswith("data: "):
            chunks.append(json.loads(text[6:]))
    assert done, "stream must end with [DONE]"
    return chunks


def test_models_lists_the_served_name():
    async def t(client, _backend):
        resp = await client.get("/v1/models")
        return [m["id"] for m in (await resp.json())["data"]]

    assert with_client(t)[0] == [MODEL]


def test_stream_chunks_carry_text_and_token_ids():
    async def t(client, _backend):
        resp = await client.post("/v1/completions", json=body(stream=True))
        assert resp.status == 200
        return await read_sse(resp)

    chunks, _ = with_client(t)
    choices = [c["choices"][0] for c in chunks]
    ids = [t for c in choices for t in c["token_ids"]]
    want = fake_output([3, 4, 5], 6)[:3] + [EOS]
    assert ids == want
    assert "".join(c["text"] for c in choices) == CharTokenizer().decode(want)
    assert all(c["text"] for c in choices[:3])  # text streams token by token
    assert [c["finish_reason"] for c in choices][-1] == "stop"


def test_whole_response_ignore_eos_and_text_prompt():
    async def t(client, backend):
        resp = await client.post("/v1/completions", json=body(prompt="abc", ignore_eos=True))
        return await resp.json()

    out, backend = with_client(t)
    assert backend.submitted[0].prompt_token_ids == [3, 4, 5]
    assert backend.submitted[0].fixed_output_len == 6
    choice = out["choices"][0]
    assert choice["token_ids"] == fake_output([3, 4, 5], 6)
    assert choice["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 6


def test_bad_requests_get_openai_errors():
    cases = [
        (body(temperature=0.7), 400, "temperature"),
        ({k: v for k, v in body().items() if k != "temperature"}, 400, "temperature"),
        (body(model="other"), 404, "model"),
        (body(prompt=[3, 99]), 400, "prompt"),
        (body(prompt=[]), 400, "prompt"),
        (body(prompt=[[3], [4]]), 400, "prompt"),
        (body(max_tokens=0), 400, "max_tokens"),
        (body(max_tokens=100), 400, "max_tokens"),  # does not fit
        (body(n=2), 400, "n"),
    ]

    async def t(client, _backend):
        out = []
        for b, _, _ in cases:
            resp = await client.post("/v1/completions", json=b)
            out.append((resp.status, (await resp.json())["error"]["param"]))
        return out

    got, backend = with_client(t)
    assert got == [(status, param) for _, status, param in cases]
    assert backend.submitted == []  # nothing bad reaches the engine


def test_concurrent_requests_share_the_one_backend():
    async def t(client, _backend):
        async def one(i: int) -> list[int]:
            resp = await client.post("/v1/completions", json=body(prompt=[3 + i], stream=True))
            return [t for c in await read_sse(resp) for t in c["choices"][0]["token_ids"]]

        return await asyncio.gather(*(one(i) for i in range(8)))

    outs, backend = with_client(t)
    assert len(backend.submitted) == 8
    assert len({r.request_id for r in backend.submitted}) == 8
    for i, ids in enumerate(outs):  # each stream got its own request's tokens
        assert ids == fake_output([3 + i], 6)[:3] + [EOS]


class ByteTokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(token_ids).decode("utf-8", errors="replace")


def test_detokenizer_holds_back_a_partial_character():
    d = IncrementalDetokenizer(ByteTokenizer())
    assert d.add(list(b"a")) == "a"
    assert d.add([0xC3]) == ""  # half of "é"
    assert d.add([0xA9]) == "é"
    assert d.add([0xC3], final=True) == "\ufffd"


def test_an_engine_failure_ends_open_requests_and_refuses_new_ones():
    async def test(client, backend):  # noqa: ANN001, ANN202
        resp = await client.post("/v1/completions", json=body(stream=True))
        chunks = await read_sse(resp)
        whole = await client.post("/v1/completions", json=body())
        health = await client.get("/health")
        return chunks, whole.status, await whole.json(), health.status, await health.json()

    (chunks, status, whole, h_status, health), _ = with_client(test, DyingEngineBackend())
    assert chunks == [{"error": {"message": "the engine failed: CUDA out of memory (pretend)",
                                 "type": "server_error"}}]  # fmt: skip
    assert status == 503 and whole["error"]["type"] == "server_error"
    assert "restart the server" in whole["error"]["message"]
    assert h_status == 503 and health == {"status": "failed",
                                          "error": "CUDA out of memory (pretend)"}  # fmt: skip


def test_an_engine_failure_during_a_whole_response_is_a_500():
    async def test(client, backend):  # noqa: ANN001, ANN202
        resp = await client.post("/v1/completions", json=body())
        return resp.status, await resp.json()

    (status, out), _ = with_client(test, DyingEngineBackend())
    assert status == 500
    assert out["error"]["message"] == "the engine failed: CUDA out of memory (pretend)"
