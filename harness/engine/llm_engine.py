"""LLMEngine: wires model, KV cache, scheduler and runner; `step()` advances every request.

Single-threaded; callers (a backend thread, a server) own any concurrency. With
async_scheduling a step is queued on the device before the previous step's tokens are applied,
so the host's bookkeeping runs while the device computes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config.schema import SPARSE_KERNELS
from harness.engine.kv_cache import BlockManager
from harness.engine.kv_plan import GIB, Agree, plan_kv_cache
from harness.engine.loader import build_model
from harness.engine.model.llama import PRESETS, LlamaConfig, LlamaForCausalLM
from harness.engine.model_runner import LaunchedStep, ModelRunner
from harness.engine.outputs import RequestOutput, SchedulerOutput
from harness.engine.quant.base import QuantConfig, dense_layers_from, quant_config_for
from harness.engine.request import Request, SamplingParams
from harness.engine.scheduler import Scheduler, SchedulerConfig
from harness.engine.stats import StepLog

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineArgs:
    """Everything the engine needs; the backend fills it from the harness config."""

    model_path: str = ""  # HF checkpoint folder or engine dir ("" with dummy weights + preset)
    weights: str = "hf"  # hf | engine | dummy
    model_config: LlamaConfig | None = None  # None: read config.json under model_path
    model_opt: str = "Dense"
    dtype: str = "float32"
    device: str = "cpu"
    block_size: int = 16
    num_kv_blocks: int = 0  # 0: from free memory x gpu_memory_utilization
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    admission: str = "fifo"
    admission_batch: int = 1  # new requests join running ones in groups of this many
    admission_headroom_tokens: int = 0  # KV growth kept free per running sequence (0: off)
    max_model_len: int = 0  # 0: the model's max_position_embeddings
    num_threads: int = 0  # CPU intra-op threads; 0: torch's default
    seed: int = 0
    kv_cache_dtype: str = "auto"  # auto: the model dtype | fp8: e4m3 (CUDA kernels only)
    use_cuda_graph: bool = False  # CUDA: replay captured graphs for decode-only steps
    cuda_graph_max_tokens: int = 0  # ... and for mixed steps of up to this many tokens (0: not)
    cuda_graph_fastest_buckets: bool = True  # drop graphs a larger one replays faster
    cuda_graph_min_decode_rows: int = 0  # decode graphs reach at least this many rows (0: off)
    decode_split_keys: int = 0  # CUDA paged decode: splits of this many keys (0: equal parts)
    fused_kernels: bool = True  # norm / RoPE / SwiGLU: Triton (CUDA), C (CPU fp32); False: torch
    fp8_triton_max_rows: int = 32  # CUDA FP8 linears: Triton GEMM up to this many rows
    sparse_triton_max_rows: int = 256  # CUDA Sparse: Triton GEMM on compressed weights, same
    sparse_kernel: str = "triton"  # CUDA Sparse: triton | mma | wgmma | cutlass (schema.py)
    fp8_dense_layers: str = ""  # FP8 / Sparse: decoder layers kept dense, e.g. "0,-1"
    dense_triton_max_rows: int = 1  # CUDA bf16 / fp16 linears: Triton GEMV up to this many rows
    cpu_attention_kernel: bool = True  # CPU fp32: C paged decode attention (False: torch ops)
    cpu_gemm: str = "onednn"  # CPU dense GEMMs: onednn | mkl (HF's rounding; quant/dense.py)
    cpu_kv_commit_gib: float = 2.0  # CPU: KV pool written at start (its page faults paid then)
    # Queue step n+1 before applying step n's tokens (its decode inputs are read on the device):
    # the host's scheduling and input preparation overlap the device's work.
    async_scheduling: bool = False
    embedding_on_host: bool = False  # CUDA: the input embedding in pinned host memory


FP8_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores and Triton's e4m3: Ada (8.9), Hopper (9.0), later


def engine_quant_config(args: EngineArgs, config: LlamaConfig, device: torch.device) -> QuantConfig:
    """args.model_opt's QuantConfig, with args.fp8_dense_layers resolved for this model."""
    dense = dense_layers_from(args.fp8_dense_layers, config.num_hidden_layers)
    return quant_config_for(args.model_opt, device, args.cpu_gemm, dense)


def check_device(args: EngineArgs) -> None:
    """Refuse, before any weight is loaded, what this device cannot run."""
    device = torch.device(args.device)
    if args.kv_cache_dtype == "fp8" and device.type != "cuda":
        raise NotImplementedError(
            f"kv_cache_dtype='fp8' needs the CUDA kernels; on {device} use kv_cache_dtype=auto"
        )
    if args.embedding_on_host and device.type != "cuda":
        raise NotImplementedError(
            f"embedding_on_host=true has the GPU read the embedding from pinned host memory; on "
            f"{device} the embedding is in host memory already: set embedding_on_host=false"
        )
    if args.sparse_kernel not in SPARSE_KERNELS:
        raise ValueError(
            f"sparse_kernel={args.sparse_kernel!r} is none of {', '.join(SPARSE_KERNELS)}"
        )
    if args.sparse_kernel != "triton" and (device.type != "cuda" or args.model_opt != "Sparse"):
        raise NotImplementedError(
            f"sparse_kernel={args.sparse_kernel} runs 2:4 weights on CUDA's sparse tensor cores; "
            f"this engine is model_opt={args.model_opt} on {device}: set sparse_kernel=triton"
        )
    if device.type != "cuda":
        return
    needs_fp8 = [f"kv_cache_dtype={args.kv_cache_dtype}"] if args.kv_cache_dtype == "fp8" else []
    if args.model_opt in ("FP8", "Sparse") and args.dtype != "float32":  # fp32: the reference
        needs_fp8.insert(0, f"model_opt={args.model_opt}")
    major, minor = torch.cuda.get_device_capability(device)
    if needs_fp8 and (major, minor) < FP8_MIN_CAPABILITY:
        raise NotImplementedError(
            f"{' and '.join(needs_fp8)} need FP8 tensor cores (compute capability 8.9 or "
            f"later: Ada, Hopper); {torch.cuda.get_device_name(device)} is {major}.{minor}: "
            "use model_opt=Dense and kv_cache_dtype=auto"
        )
    if args.sparse_kernel in ("wgmma", "cutlass") and (major, minor) != (9, 0):
        raise NotImplementedError(
            f"sparse_kernel={args.sparse_kernel} is Hopper's (compute capability 9.0); "
            f"{torch.cuda.get_device_name(device)} is {major}.{minor}: set sparse_kernel=triton"
        )
    if args.sparse_kernel != "triton":  # its kernel is built now: no nvcc or a compile error
        _build_sparse_kernel(args.sparse_kernel, (major, minor))  # shows before loading


def _build_sparse_kernel(kernel: str, capability: tuple[int, int]) -> None:
    from harness.engine.kernels import sparse24_cutlass, sparse24_mma

    try:
        if kernel == "cutlass":
            sparse24_cutlass.build()
        else:
            sparse24_mma.build(sparse24_mma.arch_for(capability))
    except RuntimeError as e:
        raise RuntimeError(
            f"sparse_kernel={kernel} needs its CUDA kernel, which did not build: {e}. Install the "
            "CUDA compiler (or set NVCC / CUDA_HOME) and, for cutlass, CUTLASS's headers, or set "
            "sparse_kernel=triton"
        ) from e


def cuda_graph_sizes(args: EngineArgs, device: torch.device) -> tuple[int, int]:
    """(largest decode batch the graphs cover in rows, largest mixed graph in tokens) to
    capture; 0: none. Off CUDA or without use_cuda_graph there are none; decode graphs cover
    max_num_seqs or cuda_graph_min_decode_rows, the larger; no step holds more than
    max_num_batched_tokens tokens, so no mixed graph is larger."""
    if not args.use_cuda_graph or device.type != "cuda":
        return 0, 0
    rows = max(args.max_num_seqs, args.cuda_graph_min_decode_rows)
    return rows, min(args.cuda_graph_max_tokens, args.max_num_batched_tokens)


def build_runner(
    args: EngineArgs,
    model: LlamaForCausalLM,
    device: torch.device,
    agree: Agree | None = None,
) -> ModelRunner:
    """The runner of a loaded model: kernels chosen, KV cache sized from the memory left, CUDA
    graphs captured, then (CUDA) the largest step run once (ModelRunner.warm_up). agree (tensor
    parallel): what every rank uses of this rank's numbers; here the smallest block count (each
    rank's KV pool must hold it)."""
    kernels = model.use_fused_kernels(
        args.fused_kernels,
        args.fp8_triton_max_rows,
        args.sparse_triton_max_rows,
        args.dense_triton_max_rows,
        args.sparse_kernel,
    )
    logger.info("norm / RoPE / SwiGLU kernels: %s", kernels)
    if args.embedding_on_host:  # before the KV plan, which takes the memory it frees
        gib = model.move_embedding_to_host() / GIB
        logger.info("input embedding: %.2f GiB moved to pinned host memory (for the KV cache)", gib)
    max_model_len = model_len_limit(args, model.config)
    max_blocks_useful = args.max_num_seqs * -(-max_model_len // args.block_size)
    kv_dtype = torch.float8_e4m3fn if args.kv_cache_dtype == "fp8" else DTYPES[args.dtype]
    kv = plan_kv_cache(
        model.config, kv_dtype, device, args.block_size, args.gpu_memory_utilization,
        args.num_kv_blocks, max_blocks_useful, agree,
    )  # fmt: skip
    graph_rows, graph_tokens = cuda_graph_sizes(args, device)
    runner = ModelRunner(
        model, kv, device, kv_dtype, graph_rows, max_model_len, args.cpu_attention_kernel,
        args.cpu_kv_commit_gib, graph_tokens, args.cuda_graph_fastest_buckets, agree,
        args.decode_split_keys,
    )  # fmt: skip
    if device.type == "cuda":
        runner.warm_up(args.max_num_batched_tokens)
    return runner


def build_scheduler(args: EngineArgs, runner: ModelRunner) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        admission=args.admission,
        admission_batch=args.admission_batch,
        admission_headroom_tokens=args.admission_headroom_tokens,
        max_model_len=model_len_limit(args, runner.model.config),
    )
    return Scheduler(config, BlockManager(runner.kv.num_blocks, runner.kv.block_size))


def model_len_limit(args: EngineArgs, config: LlamaConfig) -> int:
    """Prompt + output tokens of one request: max_model_len, at most the model's positions."""
    return min(args.max_model_len or 1 << 62, config.max_position_embeddings)


def resolve_model_config(args: EngineArgs, preset: str = "") -> LlamaConfig:
    if args.model_config is not None:
        return args.model_config
    config_json = Path(args.model_path) / "config.json"
    if args.model_path and config_json.exists():
        return LlamaConfig.from_hf(json.loads(config_json.read_text()))
    if args.weights == "dummy" and preset in PRESETS:
        return PRESETS[preset]
    raise FileNotFoundError(
        f"{config_json} not found; point model_path at a HF checkpoint folder"
        + (f" or use a preset with dummy weights ({', '.join(PRESETS)})" if not preset else "")
    )


class LLMEngine:
    def __init__(
        self, scheduler: Scheduler, model_runner: ModelRunner, async_scheduling: bool = False
    ) -> None:
        self.scheduler = scheduler
        self.model_runner = model_runner
        self.async_scheduling = async_scheduling
        self.num_steps = 0
        self.step_log = StepLog()  # tokens generated per step, for the steady-state rate
        self._next_generate_id = 1 << 48  # generate() ids: far from any caller's ids
        self._in_flight: tuple[SchedulerOutput, LaunchedStep, float] | None = None

    @classmethod
    def from_args(cls, args: EngineArgs) -> LLMEngine:
        check_device(args)
        if args.num_threads > 0:
            torch.set_num_threads(args.num_threads)
        device = torch.device(args.device)
        config = resolve_model_config(args)
        quant = engine_quant_config(args, config, device)
        model = build_model(
            config, quant, DTYPES[args.dtype], device, args.weights, args.model_path, args.seed
        )
        runner = build_runner(args, model, device)
        return cls(build_scheduler(args, runner), runner, args.async_scheduling)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.model_runner.model.config.eos_token_ids

    def add_request(self, request_id: int, prompt_token_ids: list[int], sampling: SamplingParams):
        self.scheduler.add_request(Request(request_id, list(prompt_token_ids), sampling))

    def step(self) -> list[RequestOutput]:
        """Schedule -> run the model -> apply sampled tokens; returns the events of the step
        applied: this one, or with async_scheduling the previous one (this one then runs)."""
        start = time.perf_counter()
        sched = self.scheduler.schedule()
        launched = None if sched.is_empty else self.model_runner.launch(sched)
        queue_s = time.perf_counter() - start
        self.step_log.queue_s += queue_s
        queued = None if launched is None else (sched, launched, queue_s)
        if self.async_scheduling:
            queued, self._in_flight = self._in_flight, queued
        return self._finish(*queued) if queued else []

    def _finish(
        self, sched: SchedulerOutput, launched: LaunchedStep, queue_s: float
    ) -> list[RequestOutput]:
        waited = time.perf_counter()
        runner_out = self.model_runner.collect(launched)
        self.num_steps += 1
        before = self.scheduler.num_output_tokens
        collected = time.perf_counter()
        events = self.scheduler.update_from_output(sched, runner_out)
        prefill = sched.num_batched_tokens > len(sched.scheduled)  # prompt tokens this step
        now = time.perf_counter()
        self.step_log.wait_s += collected - waited
        self.step_log.apply_s += now - collected
        # A step took its own queueing, waiting and applying. The loop's time is those three
        # for each step (and idle); async, the wall time between two steps' ends holds the
        # *next* step's queueing instead (an eager 70B step's launches: ~70 ms).
        took = queue_s + now - waited
        tokens = self.scheduler.num_output_tokens - before
        self.step_log.record(
            tokens, took, now, prefill, len(sched.scheduled), runner_out.gpu_seconds
        )
        return events

    def has_unfinished(self) -> bool:
        return self._in_flight is not None or self.scheduler.has_unfinished()

    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams | list[SamplingParams]
    ) -> list[list[int]]:
        """Run prompts to completion (tests, tools); returns output ids in prompt order."""
        params = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        base = self._next_generate_id
        self._next_generate_id += len(prompts)
        for i, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):
            self.add_request(base + i, prompt, sp)
        outputs: dict[int, list[int]] = {}
        while self.has_unfinished():
            for event in self.step():
                if event.is_finished:
                    outputs[event.request_id] = list(event.output_token_ids)
        return [outputs[base + i] for i in range(len(prompts))]
