"""The `trtllm` backend: TensorRT-LLM's LLM API behind the Backend protocol.

An asyncio loop on one thread runs `generate_async(..., streaming=True)` per request; submit()
only hands requests to that loop. In-flight batching is TensorRT-LLM's own. tensorrt_llm is
imported only inside from_config (see trtllm_version.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.backends.base import BackendError, GenerationRequest, OutputSink
from harness.backends.trtllm_config import llm_kwargs, sampling_kwargs, validate
from harness.backends.trtllm_stream import TrtllmStreamError, relay_stream
from harness.config.schema import HarnessConfig

logger = logging.getLogger(__name__)


class TrtllmBackend:
    name = "trtllm"

    def __init__(
        self,
        llm: Any,  # tensorrt_llm LLM (either runtime), or any object with generate_async
        make_sampling_params: Callable[..., Any],  # tensorrt_llm.SamplingParams
        eos_token_id: int | None,
    ) -> None:
        self.llm = llm
        self.make_sampling_params = make_sampling_params
        self.eos_token_id = eos_token_id
        self.sink: OutputSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._num_in_flight = 0  # submitted and not yet reported finished
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs until each task ends
        self._error: BackendError | None = None
        self.num_submitted = 0
        self.num_finished = 0

    @classmethod
    def from_config(cls, cfg: HarnessConfig, engine_dir: Path | None = None) -> TrtllmBackend:
        """Load what `make generate_engines --backend=trtllm` built under <engine_dir>/trtllm
        (its engine.json says which runtime: PyTorch on an HF checkpoint, or a 1.2.x engine)."""
        from harness.backends.trtllm_build import check_trtllm_engine, engine_base_dir
        from harness.backends.trtllm_config import resolve_runtime
        from harness.backends.trtllm_version import (
            import_llm_class,
            import_symbol,
            installed_version,
            require_trtllm,
        )

        if installed_version() is None:  # say so first: nothing below can work without it
            require_trtllm(resolve_runtime(cfg))
        engine_dir = Path(engine_dir) if engine_dir is not None else engine_base_dir(cfg)
        manifest = check_trtllm_engine(cfg, engine_dir)
        runtime = manifest["runtime"]
        validate(cfg, runtime)
        version = require_trtllm(runtime)
        llm_class = import_llm_class(runtime)
        kv_cache_config_class = import_symbol("tensorrt_llm.llmapi", "KvCacheConfig")
        sampling_params_class = import_symbol("tensorrt_llm", "SamplingParams")
        kwargs = llm_kwargs(cfg, runtime, model=str(Path(manifest["model"])))
        kwargs["kv_cache_config"] = kv_cache_config_class(**kwargs["kv_cache_config"])
        logger.info("trtllm backend: tensorrt_llm %s, %s runtime, LLM(%s)", version, runtime,
                    ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))  # fmt: skip
        try:
            llm = llm_class(**kwargs)
        except Exception as err:  # construction errors of the library: any type
            raise BackendError(
                f"trtllm backend cannot start from {engine_dir} ({runtime}, tensorrt_llm "
                f"{version}): {err!r}; if it ran out of GPU memory lower --max_num_seqs or "
                f"--gpu_memory_utilization; if the engine is stale rebuild it with --force"
            ) from err
        return cls(llm, sampling_params_class, cfg.benchmark.eos_token_id)

    # --- Backend protocol --------------------------------------------------------------

    def start(self, sink: OutputSink) -> None:
        self.sink = sink
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="trtllm-loop", daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Hand requests to the event loop and return at once."""
        self._raise_if_failed()
        if self._loop is None:
            raise BackendError("trtllm backend: submit() before start(); call start(sink) first")
        with self._idle:
            self._num_in_flight += len(requests)
        self.num_submitted += len(requests)
        for r in requests:
            self._loop.call_soon_threadsafe(self._spawn, r)

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        """Wait for every submitted request to be reported, then end the loop thread."""
        if self._loop is not None and self._thread is not None:
            with self._idle:
                self._idle.wait_for(lambda: self._num_in_flight == 0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._loop = None
            self._thread = None
        shutdown = getattr(self.llm, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self._raise_if_failed()

    # --- event loop --------------------------------------------------------------------

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _spawn(self, r: GenerationRequest) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._serve(r), name=f"trtllm-request-{r.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, r: GenerationRequest) -> None:
        assert self.sink is not None
        try:
            params = self.make_sampling_params(**sampling_kwargs(r, self.eos_token_id))
            stream = self.llm.generate_async(r.prompt_token_ids, params, streaming=True)
            await relay_stream(
                r.request_id, stream, self.sink, params_end_id(params, self.eos_token_id),
                ignore_eos=r.fixed_output_len > 0,
            )  # fmt: skip
        except TrtllmStreamError as err:
            self._fail(err, r.request_id, err.tokens_so_far)
        except Exception as err:  # the request could not even start (bad params, dead engine)
            self._fail(
                BackendError(f"trtllm request {r.request_id} could not run: {err!r}"),
                r.request_id, [],
            )  # fmt: skip
        finally:
            self.num_finished += 1
            with self._idle:
                self._num_in_flight -= 1
                self._idle.notify_all()

    def _fail(self, err: BackendError, request_id: int, tokens: list[int]) -> None:
        """Keep the first error for submit()/stop() and still complete the request, so LoadGen
        is not left waiting; the run then ends with this error."""
        logger.error("%s", err)
        if self._error is None:
            self._error = err
        assert self.sink is not None
        try:
            self.sink.on_finished(request_id, tokens)
        except Exception:  # the sink may refuse a half request; the error above is what counts
            logger.exception("trtllm backend: completing failed request %d", request_id)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise BackendError(f"trtllm backend failed: {self._error}") from self._error


def params_end_id(params: Any, default: int | None) -> int | None:
    """The EOS id the request was sent with (SamplingParams.end_id), for trimming."""
    end_id = getattr(params, "end_id", None)
    return default if end_id is None else end_id
