"""The `openai` backend: any OpenAI-compatible server behind the Backend protocol.

An asyncio loop on its own thread streams `/v1/completions` over a bounded aiohttp pool;
submit() only hands requests to that loop. It never retries a request that streamed tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from harness.backends.base import BackendError, GenerationRequest, OutputSink
from harness.backends.openai_protocol import (
    CompletionStream,
    EndpointCaps,
    EndpointError,
    StreamError,
    Tokenizer,
    completion_body,
    error_excerpt,
    normalize_url,
    parse_sse_line,
    probe_ids,
)
from harness.config.schema import HarnessConfig

logger = logging.getLogger(__name__)

RETRY_STATUSES = (429, 502, 503, 504)  # the server refused before generating anything
MAX_RETRIES = 3
RETRY_BACKOFF_S = 0.5


@dataclass(frozen=True)
class EndpointSettings:
    url: str  # normalized: no trailing /v1
    model: str  # "" : the server's only model
    max_concurrency: int = 64
    timeout_s: float = 600.0  # total per request, streaming included
    connect_timeout_s: float = 10.0
    api_key: str = ""

    @classmethod
    def from_config(cls, cfg: HarnessConfig) -> EndpointSettings:
        e = cfg.engine
        if not e.endpoint_url:
            raise EndpointError(
                "--backend=openai needs the server: pass --endpoint_url=http://host:port "
                "(our engine: `python -m harness serve --port 8000`)"
            )
        if e.endpoint_max_concurrency < 1 or e.endpoint_timeout_s <= 0:
            raise EndpointError(
                f"endpoint_max_concurrency={e.endpoint_max_concurrency}, endpoint_timeout_s="
                f"{e.endpoint_timeout_s}: both must be positive"
            )
        key = ""
        if e.endpoint_api_key_env:
            key = os.environ.get(e.endpoint_api_key_env, "")
            if not key:
                raise EndpointError(
                    f"--endpoint_api_key_env={e.endpoint_api_key_env}: that environment variable "
                    "is unset or empty; export it with the API key"
                )
        return cls(
            url=normalize_url(e.endpoint_url),
            model=e.endpoint_model,
            max_concurrency=e.endpoint_max_concurrency,
            timeout_s=e.endpoint_timeout_s,
            connect_timeout_s=min(10.0, e.endpoint_timeout_s),
            api_key=key,
        )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


async def resolve_model(session: aiohttp.ClientSession, s: EndpointSettings) -> str:
    """GET /v1/models; returns the model name to use or raises EndpointError with the fix."""
    url = f"{s.url}/v1/models"
    try:
        async with session.get(url, headers=s.headers()) as resp:
            body = await resp.text()
            if resp.status in (401, 403):
                raise EndpointError(
                    f"{url}: HTTP {resp.status} (unauthorized); put the key in an environment "
                    "variable and pass its name with --endpoint_api_key_env=<NAME>"
                )
            if resp.status != 200:
                raise EndpointError(
                    f"{url}: HTTP {resp.status} {error_excerpt(body)!r}; is --endpoint_url an "
                    "OpenAI-compatible server?"
                )
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise EndpointError(
            f"{url}: cannot reach the server ({type(e).__name__}: {e}); start it (our engine: "
            "`python -m harness serve --port 8000`) or fix --endpoint_url"
        ) from e
    names = [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]
    if s.model:
        if s.model not in names:
            raise EndpointError(
                f"{url}: model {s.model!r} is not served; the server lists {names}; pass "
                "--endpoint_model=<one of them>"
            )
        return s.model
    if len(names) != 1:
        raise EndpointError(f"{url}: the server lists {names}; pass --endpoint_model=<one of them>")
    return names[0]


def check_endpoint(cfg: HarnessConfig) -> str:
    """Preflight (before LoadGen starts): the server answers and serves the model."""

    async def _check() -> str:
        s = EndpointSettings.from_config(cfg)
        timeout = aiohttp.ClientTimeout(total=min(30.0, s.timeout_s), connect=s.connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await resolve_model(session, s)

    return asyncio.run(_check())


class OpenAIBackend:
    name = "openai"

    def __init__(
        self, settings: EndpointSettings, tokenizer: Tokenizer | None, eos_token_id: int | None
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.model = settings.model
        self.caps = EndpointCaps()
        self.sink: OutputSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures: dict[int, str] = {}  # request_id -> reason
        self.num_submitted = 0
        self.num_finished = 0
        self.num_retries = 0

    @classmethod
    def from_config(cls, cfg: HarnessConfig) -> OpenAIBackend:
        from transformers import AutoTokenizer

        settings = EndpointSettings.from_config(cfg)
        try:
            tok = AutoTokenizer.from_pretrained(cfg.benchmark.model_path)
        except (OSError, ValueError) as e:
            raise BackendError(
                f"{cfg.benchmark.model_path}: no tokenizer ({e}); the openai backend needs the "
                "checkpoint's tokenizer; run `make preprocess_data` or pass --model_path=<dir>"
            ) from e
        return cls(settings, tok, cfg.benchmark.eos_token_id)

    # --- Backend protocol --------------------------------------------------------------

    def start(self, sink: OutputSink) -> None:
        """Open the pool, check the model and probe what the server accepts (before LoadGen)."""
        self.sink = sink
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-io")
        self._thread.daemon = True
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        except BaseException:
            self._shutdown_loop()
            raise
        logger.info(
            "openai backend: %s model %r, %d connections; %s",
            self.settings.url, self.model, self.settings.max_concurrency, self.caps.describe(),
        )  # fmt: skip

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        if self._loop is None:
            raise BackendError("openai backend: submit() before start()")
        self.num_submitted += len(requests)
        for r in requests:
            self._loop.call_soon_threadsafe(self._spawn, r)

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        """Wait for every submitted request, close the pool; raise if any request failed."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result()
            self._shutdown_loop()
        if self.failures:
            shown = "; ".join(f"request {k}: {v}" for k, v in sorted(self.failures.items())[:5])
            more = f" (+{len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
            raise BackendError(
                f"openai backend: {len(self.failures)} of {self.num_submitted} requests failed "
                f"and were completed to LoadGen with partial output: {shown}{more}; check the "
                f"server at {self.settings.url} (its log) and --endpoint_timeout_s"
            )

    # --- event loop side ---------------------------------------------------------------

    async def _open(self) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(limit=s.max_concurrency)
        timeout = aiohttp.ClientTimeout(
            total=s.timeout_s, connect=s.connect_timeout_s, sock_read=s.timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=s.headers()
        )
        self._sem = asyncio.Semaphore(s.max_concurrency)
        try:
            self.model = await resolve_model(self._session, s)
            self.caps = await self._probe()
        except BaseException:
            await self._session.close()
            raise

    async def _close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _shutdown_loop(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join()
        self._loop.close()
        self._loop = None

    async def _probe(self) -> EndpointCaps:
        """Tiny requests that find the richest form the server accepts."""
        prompt = self.tokenizer.encode("Hello", add_special_tokens=False) if self.tokenizer else []
        probe = GenerationRequest(-1, prompt or [1], max_new_tokens=2, min_new_tokens=1)
        last = ""
        for token_prompt in (True, False) if self.tokenizer else (True,):
            for extra in (True, False):
                caps = EndpointCaps(token_prompt, extra, "token_ids")
                status, chunks, text = await self._post_probe(probe, caps)
                if status == 200:
                    source = probe_ids(chunks)
                    if source == "retokenize":
                        logp = EndpointCaps(token_prompt, extra, "logprobs")
                        status, chunks, _ = await self._post_probe(probe, logp)
                        if status == 200 and probe_ids(chunks) == "logprobs":
                            source = "logprobs"
                    if source == "retokenize" and self.tokenizer is None:
                        raise EndpointError("server returns no token ids; the tokenizer is needed")
                    return EndpointCaps(token_prompt, extra, source)
                last = f"HTTP {status}: {error_excerpt(text)}"
                logger.info("openai probe (%s) refused: %s", caps.describe(), last)
        raise EndpointError(
            f"{self.settings.url}/v1/completions refused every request form ({last}); check that "
            f"model {self.model!r} serves completions"
        )

    async def _post_probe(
        self, req: GenerationRequest, caps: EndpointCaps
    ) -> tuple[int, list[dict[str, Any]], str]:
        assert self._session is not None
        body = completion_body(self.model, req, caps, self.tokenizer)
        url = f"{self.settings.url}/v1/completions"
        try:
            async with self._session.post(url, json=body) as resp:
                if resp.status != 200:
                    return resp.status, [], await resp.text()
                chunks = []
                async for line in resp.content:
                    payload = parse_sse_line(line)
                    if payload:
                        chunks.append(payload)
                return 200, chunks, ""
        except (aiohttp.ClientError, asyncio.TimeoutError, StreamError) as e:
            raise EndpointError(f"{url}: probe request failed ({type(e).__name__}: {e})") from e

    def _spawn(self, r: GenerationRequest) -> None:
        task = asyncio.get_running_loop().create_task(self._run(r))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, r: GenerationRequest) -> None:
        """One sample: stream it, then complete it to the sink exactly once, whatever happens."""
        assert self._sem is not None and self.sink is not None
        stream = CompletionStream(
            self.caps.token_source, self.eos_token_id, r.fixed_output_len > 0, self.tokenizer
        )
        async with self._sem:
            for attempt in range(MAX_RETRIES + 1):
                try:
                    await self._stream(r, stream)
                    break
                except _Retryable as e:
                    if stream.has_output or attempt == MAX_RETRIES:  # never a silent duplicate
                        self._fail(r, stream, f"{e} (after {attempt} retries)")
                        break
                    self.num_retries += 1
                    logger.warning("request %d: %s; retry %d", r.request_id, e, attempt + 1)
                    await asyncio.sleep(RETRY_BACKOFF_S * (attempt + 1))
                except (aiohttp.ClientError, asyncio.TimeoutError, StreamError, OSError) as e:
                    reason = "timed out" if isinstance(e, asyncio.TimeoutError) else repr(e)
                    self._fail(r, stream, reason)
                    break
                except Exception as e:  # noqa: BLE001 (must still complete the sample)
                    logger.exception("request %d: unexpected failure", r.request_id)
                    self._fail(r, stream, repr(e))
                    break
        try:
            tokens = stream.tokens()
        except Exception as e:  # noqa: BLE001 (a broken tokenizer must not hang LoadGen)
            self._fail(r, stream, f"cannot read output tokens: {e!r}")
            tokens = list(stream.token_ids)
        self.num_finished += 1
        self.sink.on_finished(r.request_id, tokens)

    async def _stream(self, r: GenerationRequest, stream: CompletionStream) -> None:
        assert self._session is not None and self.sink is not None
        body = completion_body(self.model, r, self.caps, self.tokenizer)
        url = f"{self.settings.url}/v1/completions"
        start = time.perf_counter()
        try:
            async with self._session.post(url, json=body) as resp:
                if resp.status in RETRY_STATUSES:
                    raise _Retryable(f"HTTP {resp.status} {error_excerpt(await resp.text())!r}")
                if resp.status != 200:
                    raise StreamError(f"HTTP {resp.status} {error_excerpt(await resp.text())!r}")
                async for line in resp.content:
                    payload = parse_sse_line(line)
                    if payload is None:
                        continue
                    if stream.add(payload):
                        logger.debug("request %d: first token after %.3f s", r.request_id,
                                     time.perf_counter() - start)  # fmt: skip
                        self.sink.on_first_token(r.request_id, int(stream.first_token_id))
                    if stream.is_done:
                        return
        except aiohttp.ClientConnectorError as e:  # never reached the server
            raise _Retryable(f"cannot connect: {e}") from e
        raise StreamError(f"stream ended without [DONE] (finish_reason={stream.finish_reason})")

    def _fail(self, r: GenerationRequest, stream: CompletionStream, reason: str) -> None:
        n = len(stream.token_ids) if stream.token_source != "retokenize" else len(stream.text)
        unit = "tokens" if stream.token_source != "retokenize" else "characters"
        msg = f"{reason} after {n} {unit}"
        self.failures[r.request_id] = msg
        logger.error("openai request %d failed: %s", r.request_id, msg)


class _Retryable(RuntimeError):
    """The server never started this request (connect refused, 429/503): safe to resend."""
