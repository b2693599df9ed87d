"""The OpenAI-compatible HTTP API (`/v1/models`, `/v1/completions`) over one engine backend.

Every connection feeds the same backend (continuous batching); engine-thread events reach
each response through its own asyncio queue. Greedy only: temperature must be 0.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from harness.backends.base import Backend, GenerationRequest
from harness.backends.openai_protocol import Tokenizer

logger = logging.getLogger(__name__)
BRIDGE = web.AppKey("bridge", dict)  # {"bridge": EngineBridge}, filled at startup


@dataclass
class _Event:
    token_ids: list[int]  # new tokens (progress) or all tokens (finished)
    is_finished: bool
    error: str | None = None  # the engine failed: this request will never finish


class EngineBridge:
    """OutputSink for the backend's worker thread; fans events out to per-request queues."""

    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop
        self._lock = threading.Lock()
        self._queues: dict[int, asyncio.Queue[_Event]] = {}
        self._ids = itertools.count()
        self.num_active = 0
        self.last_activity = time.monotonic()
        self.error: str | None = None  # set once the backend can finish nothing more

    def open(self, req_args: dict[str, Any]) -> tuple[int, asyncio.Queue[_Event]]:
        """Register a queue, then submit (events may arrive before submit returns)."""
        if self.error is not None:
            raise BadRequest(503, f"the engine failed ({self.error}); restart the server",
                             error_type="server_error")  # fmt: skip
        request_id = next(self._ids)
        q: asyncio.Queue[_Event] = asyncio.Queue()
        with self._lock:
            self._queues[request_id] = q
        self.num_active += 1
        self.last_activity = time.monotonic()
        self.backend.submit([GenerationRequest(request_id=request_id, **req_args)])
        return request_id, q

    def close(self, request_id: int) -> None:
        """The response is done (or its client left): later events for it are dropped."""
        with self._lock:
            if self._queues.pop(request_id, None) is not None:
                self.num_active -= 1
        self.last_activity = time.monotonic()

    def _push(self, request_id: int, event: _Event) -> None:
        with self._lock:
            q = self._queues.get(request_id)
        if q is not None:
            self.loop.call_soon_threadsafe(q.put_nowait, event)

    # OutputSink (called on the engine thread)
    def on_first_token(self, request_id: int, token_id: int) -> None:
        self._push(request_id, _Event([token_id], False))

    def on_tokens(self, request_id: int, token_ids: list[int]) -> None:
        self._push(request_id, _Event(list(token_ids), False))

    def on_finished(self, request_id: int, token_ids: list[int]) -> None:
        self._push(request_id, _Event(list(token_ids), True))

    def on_failed(self, error: str) -> None:
        """Every open request ends with the error; new ones are refused (503)."""
        logger.error("engine failed: %s", error)
        with self._lock:
            self.error = error
            ids = list(self._queues)
        for request_id in ids:
            self._push(request_id, _Event([], True, error))


class IncrementalDetokenizer:
    """Text deltas for a growing id list; holds back a trailing partial UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token_ids: list[int], final: bool = False) -> str:
        self.ids.extend(token_ids)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class BadRequest(Exception):
    """An error answered as an OpenAI-style body {"error": {"message", "type", ...}}: a client
    error, or (error_type="server_error", 5xx) a failed engine."""

    def __init__(
        self, status: int, message: str, param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.error_type = error_type

    def response(self) -> web.Response:
        code = "model_not_found" if self.status == 404 else None
        err = {"message": self.message, "type": self.error_type, "param": self.param,
               "code": code}  # fmt: skip
        return web.json_response({"error": err}, status=self.status)


@web.middleware
async def _errors(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as e:
        logger.info("%s %s: %d %s", request.method, request.path, e.status, e.message)
        return e.response()


@dataclass
class ServeLimits:
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    check_fits: Callable[[int, int], str | None]  # (prompt_len, max_tokens) -> error or None


def _prompt_ids(body: dict[str, Any], tokenizer: Tokenizer, vocab_size: int) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        add_special = bool(body.get("add_special_tokens", True))
        ids = list(tokenizer.encode(prompt, add_special_tokens=add_special))
    elif isinstance(prompt, list) and all(type(t) is int for t in prompt):
        ids = prompt
    else:
        raise BadRequest(400, "prompt: give one string or one list of token ids", "prompt")
    if not ids:
        raise BadRequest(400, "prompt is empty", "prompt")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise BadRequest(400, f"prompt token ids {bad[:5]} outside [0, {vocab_size})", "prompt")
    return ids


def _int_field(body: dict[str, Any], key: str, default: int, lo: int) -> int:
    value = body.get(key, default)
    if value is None:
        value = default
    if type(value) is not int or value < lo:
        raise BadRequest(400, f"{key}={value!r}: give an integer >= {lo}", key)
    return value


def parse_completion(
    body: dict[str, Any], model: str, tokenizer: Tokenizer, limits: ServeLimits
) -> dict[str, Any]:
    """Validated request body -> GenerationRequest fields (request_id excluded)."""
    if body.get("model") != model:
        raise BadRequest(404, f"model {body.get('model')!r} is not served; use {model!r}", "model")
    temperature = body.get("temperature")
    if type(temperature) not in (int, float) or temperature != 0:
        raise BadRequest(
            400, f"temperature={temperature!r}: this server is greedy only; pass temperature: 0",
            "temperature",
        )  # fmt: skip
    if body.get("n", 1) != 1 or body.get("best_of", 1) not in (None, 1):
        raise BadRequest(400, "n and best_of must be 1", "n")
    max_tokens = _int_field(body, "max_tokens", 16, 1)
    min_tokens = min(_int_field(body, "min_tokens", 0, 0), max_tokens)
    ids = _prompt_ids(body, tokenizer, limits.vocab_size)
    err = limits.check_fits(len(ids), max_tokens)
    if err:
        raise BadRequest(400, err, "max_tokens")
    return {
        "prompt_token_ids": ids,
        "max_new_tokens": max_tokens,
        "min_new_tokens": max(min_tokens, 1),
        "fixed_output_len": max_tokens if body.get("ignore_eos") else 0,
    }


def make_app(
    bridge_factory: Callable[[asyncio.AbstractEventLoop], EngineBridge],
    tokenizer: Tokenizer,
    model: str,
    limits: ServeLimits,
) -> web.Application:
    app = web.Application(middlewares=[_errors])
    state: dict[str, EngineBridge] = {}

    async def on_startup(_app: web.Application) -> None:
        state["bridge"] = bridge_factory(asyncio.get_running_loop())

    async def models(_request: web.Request) -> web.Response:
        entry = {"id": model, "object": "model", "created": 0, "owned_by": "harness"}
        return web.json_response({"object": "list", "data": [entry]})

    async def health(_request: web.Request) -> web.Response:
        bridge = state["bridge"]
        if bridge.error is not None:
            return web.json_response({"status": "failed", "error": bridge.error}, status=503)
        return web.json_response({"status": "ok", "num_active": bridge.num_active})

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError as e:
            raise BadRequest(400, f"body is not JSON: {e}") from e
        if not isinstance(body, dict):
            raise BadRequest(400, "body must be a JSON object")
        args = parse_completion(body, model, tokenizer, limits)
        bridge = state["bridge"]
        request_id, q = bridge.open(args)
        try:
            if body.get("stream"):
                return await _stream(request, request_id, q, args)
            return await _whole(request_id, q, args)
        finally:
            bridge.close(request_id)

    def _chunk(request_id: int, text: str, ids: list[int], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "token_ids": ids, "logprobs": None,
                  "finish_reason": finish}  # fmt: skip
        return {"id": f"cmpl-{request_id}", "object": "text_completion",
                "created": int(time.time()), "model": model, "choices": [choice]}  # fmt: skip

    def _finish_reason(ids: list[int], args: dict[str, Any]) -> str:
        stopped = ids and ids[-1] in limits.eos_token_ids and not args["fixed_output_len"]
        return "stop" if stopped else "length"

    async def _stream(
        request: web.Request, request_id: int, q: asyncio.Queue[_Event], args: dict[str, Any]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})  # fmt: skip
        await resp.prepare(request)
        detok = IncrementalDetokenizer(tokenizer)
        num_sent = 0
        while True:
            ev = await q.get()
            if ev.error is not None:
                err = {"message": f"the engine failed: {ev.error}", "type": "server_error"}
                await resp.write(f"data: {json.dumps({'error': err})}\n\n".encode())
                break
            new = ev.token_ids[num_sent:] if ev.is_finished else ev.token_ids
            num_sent += len(new)
            text = detok.add(new, final=ev.is_finished)
            finish = _finish_reason(ev.token_ids, args) if ev.is_finished else None
            if new or finish:
                data = json.dumps(_chunk(request_id, text, new, finish))
                await resp.write(f"data: {data}\n\n".encode())
            if ev.is_finished:
                break
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _whole(request_id: int, q: asyncio.Queue[_Event], args: dict[str, Any]):
        while not (ev := await q.get()).is_finished:
            pass
        if ev.error is not None:
            raise BadRequest(500, f"the engine failed: {ev.error}", error_type="server_error")
        ids = ev.token_ids
        out = _chunk(request_id, tokenizer.decode(ids, skip_special_tokens=True), ids,
                     _finish_reason(ids, args))  # fmt: skip
        n_prompt = len(args["prompt_token_ids"])
        out["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": len(ids),
                        "total_tokens": n_prompt + len(ids)}  # fmt: skip
        return web.json_response(out)

    app.on_startup.append(on_startup)
    app[BRIDGE] = state
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", completions)
    return app
