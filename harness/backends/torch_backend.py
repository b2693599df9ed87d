"""The `torch` backend: the native engine (harness.engine) behind the Backend protocol.

submit() only enqueues; one worker thread drains new requests into the engine, runs
engine.step() and forwards first-token and finished events to the sink.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.backends.base import BackendError, GenerationRequest, OutputSink
from harness.config.schema import HarnessConfig

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.05


class TorchBackend:
    name = "torch"

    def __init__(self, engine) -> None:  # noqa: ANN001 (harness.engine.llm_engine.LLMEngine)
        self.engine = engine
        self.sink: OutputSink | None = None
        self._queue: queue.SimpleQueue[list[GenerationRequest]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self.num_submitted = 0
        self.num_finished = 0
        self._gc = None  # host_memory.GcPauses from start() to stop()

    @classmethod
    def from_config(
        cls, cfg: HarnessConfig, engine_dir: Path | None = None,
        on_rank_exit: Callable[[str], None] | None = None,
    ) -> TorchBackend:  # fmt: skip
        """Load the engine built by `make generate_engines --backend=torch` (preflight checks
        the manifest against cfg before any model memory is touched). on_rank_exit: see
        launch_tensor_parallel."""
        from harness.engine.builder import EngineManifestError, check_engine, default_engine_dir
        from harness.engine.kv_plan import KVCacheCapacityError
        from harness.engine.llm_engine import EngineArgs, LLMEngine
        from harness.engine.scheduler import RequestTooLongError

        e = cfg.engine
        engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(cfg)
        try:
            check_engine(cfg, engine_dir)
        except EngineManifestError as err:
            raise BackendError(str(err)) from err
        args = EngineArgs(
            model_path=str(engine_dir),
            weights="dummy" if e.dummy_weights else "engine",
            model_opt=e.model_opt,
            dtype=e.dtype,
            device=e.device,
            block_size=e.block_size,
            num_kv_blocks=e.num_kv_blocks,
            gpu_memory_utilization=e.gpu_memory_utilization,
            max_num_seqs=e.max_num_seqs,
            max_num_batched_tokens=e.max_num_batched_tokens,
            admission=e.admission,
            admission_batch=e.admission_batch,
            admission_headroom_tokens=e.admission_headroom_tokens,
            num_threads=e.num_threads,
            kv_cache_dtype=e.kv_cache_dtype,
            use_cuda_graph=e.use_cuda_graph,
            cuda_graph_max_tokens=e.cuda_graph_max_tokens,
            cuda_graph_fastest_buckets=e.cuda_graph_fastest_buckets,
            cuda_graph_min_decode_rows=e.cuda_graph_min_decode_rows,
            decode_split_keys=e.decode_split_keys,
            max_model_len=e.max_model_len,
            fused_kernels=e.fused_kernels,
            fp8_triton_max_rows=e.fp8_triton_max_rows,
            sparse_triton_max_rows=e.sparse_triton_max_rows,
            sparse_kernel=e.sparse_kernel,
            fp8_dense_layers=e.fp8_dense_layers_applied(),
            dense_triton_max_rows=e.dense_triton_max_rows,
            cpu_attention_kernel=e.cpu_attention_kernel,
            cpu_kv_commit_gib=e.cpu_kv_commit_gib,
            cpu_gemm=e.cpu_gemm,
            async_scheduling=e.async_scheduling,
            embedding_on_host=e.embedding_on_host,
        )
        try:
            if e.tensor_parallelism > 1:  # one process per rank (harness.engine.parallel)
                from harness.engine.parallel.launcher import launch_tensor_parallel

                engine = launch_tensor_parallel(args, e.tensor_parallelism,
                                                on_rank_exit=on_rank_exit)  # fmt: skip
            else:
                engine = LLMEngine.from_args(args)
        except KVCacheCapacityError as err:  # the memory plan, checked before any query
            raise BackendError(
                f"torch backend cannot start from {engine_dir}: {err}. This run's values come "
                f"from systems/{cfg.system.name}.yaml (benchmarks.{cfg.benchmark.name}."
                f"{cfg.scenario.scenario}.engine) unless the command line set them"
            ) from err
        except (RequestTooLongError, RuntimeError, ValueError, NotImplementedError) as err:
            raise BackendError(f"torch backend cannot start from {engine_dir}: {err}") from err
        logger.info("torch backend: engine %s (%s, %s)", engine_dir, e.model_opt, e.dtype)
        return cls(engine)

    # --- Backend protocol --------------------------------------------------------------

    def start(self, sink: OutputSink) -> None:
        from harness.engine.host_memory import GcPauses

        self.sink = sink
        self._gc = GcPauses.begin()  # the heap as loaded, frozen: full collections stay short
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="torch-engine", daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """One queue item per call: the worker adds a query's samples to the engine together,
        so an Offline query's batches (and so its numerics) do not depend on thread timing."""
        self._raise_if_failed()
        self._queue.put(list(requests))
        self.num_submitted += len(requests)

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        """Finish everything submitted, then end the worker thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        gc_account = self._gc.end() if self._gc is not None else ""
        self._gc = None
        self._raise_if_failed()
        log = self.engine.step_log
        if log.num_tokens:
            logger.info(
                "engine: %d tokens in %d steps over %.1f s; steady state (10-90%% of tokens) "
                "%.1f tokens/s; %d preemptions; decode-only steps %d (%.1f s), steps with "
                "prompt tokens %d (%.1f s); per step: queue %.2f ms, wait for tokens %.2f ms, "
                "apply %.2f ms%s%s", log.num_tokens, len(log.times),
                log.span, log.rate_between(),
                self.engine.scheduler.num_preemptions, *log.time_split(), *log.loop_split_ms(),
                " (async scheduling)" if self.engine.async_scheduling else "", self._gpu_memory(),
            )  # fmt: skip
            if groups := log.format_decode_steps_by_sequences():  # the ramp and drain show here
                logger.info("engine decode-only steps by sequences: %s", groups)
            logger.info("engine time by share of its tokens: %s", log.format_time_by_token_share())
            if gc_account:
                logger.info("engine host: %s", gc_account)
            n_dec, decode_s, n_pre, prompt_s = log.time_split()
            decode_gpu, prompt_gpu = log.gpu_split()
            if decode_gpu or prompt_gpu:  # CUDA: the rest of a step's time the GPU waited
                logger.info(
                    "engine GPU time (forward to sampled tokens, CUDA events): decode-only "
                    "steps %.1f of %.1f s (%.1f of %.1f ms a step), steps with prompt tokens "
                    "%.1f of %.1f s (%.1f of %.1f ms a step)",
                    decode_gpu, decode_s, decode_gpu * 1e3 / max(n_dec, 1),
                    decode_s * 1e3 / max(n_dec, 1), prompt_gpu, prompt_s,
                    prompt_gpu * 1e3 / max(n_pre, 1), prompt_s * 1e3 / max(n_pre, 1),
                )  # fmt: skip
            runner = self.engine.model_runner
            if runner.graphs is not None:  # the other steps ran eagerly
                graph_decode, graph_prompt = runner.graph_replays
                logger.info(
                    "engine CUDA graphs replayed for %d of %d decode-only steps and %d of %d "
                    "steps with prompt tokens", graph_decode, n_dec, graph_prompt, n_pre,
                )  # fmt: skip

    def _gpu_memory(self) -> str:
        """CUDA: the memory free at the end and at its lowest since the graphs' capture began
        (the capture may peak above the run), which the KV cache could have had."""
        runner = self.engine.model_runner
        if runner.device.type != "cuda":
            return ""
        import torch

        free, total = torch.cuda.mem_get_info(runner.device)
        low = runner.lowest_free_gpu_bytes()
        return (f"; GPU memory at the end: {free / 2**30:.2f} GiB free of {total / 2**30:.2f} "
                f"GiB, {low / 2**30:.2f} GiB at the lowest (graph capture included: "
                f"gpu_memory_utilization could rise by about {low / total:.3f})")  # fmt: skip

    # --- worker ------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                self._drain(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    self._forward(self.engine.step())
                elif self._stopping.is_set() and self._queue.empty():
                    return
        except BaseException as err:  # surfaced by submit()/stop(); the thread must not vanish
            self._error = err
            logger.exception("torch backend worker failed")
            self.sink.on_failed(f"torch backend worker failed: {err!r}")

    def _drain(self, block: bool) -> None:
        """Move submitted requests into the engine; wait briefly for work when idle."""
        try:
            item = self._queue.get(timeout=_IDLE_WAIT_S) if block else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            for r in item:
                self._add(r)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def _add(self, r: GenerationRequest) -> None:
        from harness.engine.request import SamplingParams

        if r.fixed_output_len > 0:  # dummy-weight speed runs: exactly this many tokens
            n = r.fixed_output_len
            sp = SamplingParams(max_new_tokens=n, min_new_tokens=n, ignore_eos=True,
                                eos_token_ids=self._eos_ids(r))  # fmt: skip
        else:
            sp = SamplingParams(
                max_new_tokens=r.max_new_tokens,
                min_new_tokens=min(r.min_new_tokens, r.max_new_tokens),
                eos_token_ids=self._eos_ids(r),
            )
        self.engine.add_request(r.request_id, r.prompt_token_ids, sp)

    def _eos_ids(self, r: GenerationRequest) -> tuple[int, ...]:
        return (r.eos_token_id,) if r.eos_token_id is not None else self.engine.eos_token_ids

    def _forward(self, events) -> None:  # noqa: ANN001 (list[RequestOutput])
        for ev in events:
            if ev.is_first_token:
                self.sink.on_first_token(ev.request_id, ev.new_token_ids[0])
            if ev.is_finished:
                self.num_finished += 1
                self.sink.on_finished(ev.request_id, list(ev.output_token_ids))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise BackendError(f"torch backend worker failed: {self._error!r}") from self._error
