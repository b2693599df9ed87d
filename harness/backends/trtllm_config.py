"""Our engine knobs in TensorRT-LLM's names: the one mapping table, plus greedy sampling.

Pure Python (no tensorrt_llm import): it yields plain dicts that trtllm.py turns into
LLM(...), KvCacheConfig(...) and SamplingParams(...) and trtllm_build.py into command lines.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from harness.backends.base import BackendError, GenerationRequest
from harness.backends.trtllm_version import RUNTIME_ENGINE, RUNTIME_PYTORCH, RUNTIMES
from harness.config.schema import EngineConfig, HarnessConfig

logger = logging.getLogger(__name__)

# EngineConfig field -> TensorRT-LLM name. "kv_cache_config.X" is a KvCacheConfig field.
# Where the value goes, per runtime (P: PyTorch backend, LLM API; E: TensorRT engine, 1.2.x):
KNOB_MAP: dict[str, str] = {
    # P: LLM(max_batch_size=)            E: trtllm-build --max_batch_size (baked into the engine)
    "max_num_seqs": "max_batch_size",
    # P: LLM(max_num_tokens=)            E: trtllm-build --max_num_tokens
    "max_num_batched_tokens": "max_num_tokens",
    # P+E: KvCacheConfig(free_gpu_memory_fraction=) (fraction of the memory left after weights)
    "gpu_memory_utilization": "kv_cache_config.free_gpu_memory_fraction",
    # P: KvCacheConfig(dtype="fp8"|"auto")  E: quantize.py --kv_cache_dtype fp8 (baked in)
    "kv_cache_dtype": "kv_cache_config.dtype",
    # P: KvCacheConfig(tokens_per_block=)   E: trtllm-build --tokens_per_block
    "block_size": "kv_cache_config.tokens_per_block",
    # P+E: KvCacheConfig(max_tokens=num_kv_blocks*block_size); 0 (ours) = sized from memory
    "num_kv_blocks": "kv_cache_config.max_tokens",
    # P: LLM(tensor_parallel_size=)      E: quantize.py --tp_size; LLM(tensor_parallel_size=)
    "tensor_parallelism": "tensor_parallel_size",
    # Not an EngineConfig field yet (1 unless a `pipeline_parallelism` field appears there).
    # P: LLM(pipeline_parallel_size=)    E: quantize.py --pp_size
    "pipeline_parallelism": "pipeline_parallel_size",
    # P: LLM(dtype=)                     E: quantize.py --dtype
    "dtype": "dtype",
}
# Fixed settings, not knobs: MLPerf forbids reusing KV blocks across requests (NVIDIA's
# harness: "Block reuse not allowed in MLPerf"); the harness sends token ids, never text.
FIXED_LLM_KWARGS: dict[str, Any] = {"skip_tokenizer_init": True}
FIXED_KV_CACHE: dict[str, Any] = {"enable_block_reuse": False}
# Greedy decoding as MLPerf's llama2-70b reference runs it. top_k=1 is argmax whatever the
# temperature, so temperature stays unset (older C++ samplers reject temperature=0).
GREEDY: dict[str, Any] = {"top_k": 1, "top_p": None, "n": 1, "use_beam_search": False,
                          "detokenize": False}  # fmt: skip
# Knobs of ours with no TensorRT-LLM counterpart: TensorRT-LLM schedules on its own. `validate`
# names those a config sets away from their defaults.
IGNORED_KNOBS = (
    "admission",
    "admission_batch",
    "admission_headroom_tokens",
    "num_threads",
    "batch_size",
    "use_cuda_graph",
    "cuda_graph_max_tokens",
    "cuda_graph_fastest_buckets",
    "cuda_graph_min_decode_rows",
    "decode_split_keys",
    "max_model_len",  # its engines hold max_seq_len (below)
    "fused_kernels",
    "fp8_triton_max_rows",
    "sparse_triton_max_rows",
    "sparse_kernel",
    "dense_triton_max_rows",
    "cpu_attention_kernel",
    "cpu_gemm",
    "cpu_kv_commit_gib",
    "async_scheduling",
    "embedding_on_host",
)

MAX_INPUT_LEN = 1024  # NVIDIA's llama2-70b engines: --max_input_len 1024 --max_seq_len 2048
RUNTIME_ENV = "HARNESS_TRTLLM_RUNTIME"  # pytorch | tensorrt_engine | auto (the default)


class TrtllmConfigError(BackendError):
    """The config asks for something the trtllm backend cannot do; the message says the fix."""


def pipeline_parallelism(cfg: HarnessConfig) -> int:
    return int(getattr(cfg.engine, "pipeline_parallelism", 1) or 1)


def max_seq_len(cfg: HarnessConfig) -> int:
    return MAX_INPUT_LEN + cfg.benchmark.max_new_tokens


def engine_values(cfg: HarnessConfig) -> dict[str, Any]:
    """Our knob values by EngineConfig name (pipeline_parallelism included)."""
    e = cfg.engine
    return {
        "max_num_seqs": e.max_num_seqs,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "gpu_memory_utilization": e.gpu_memory_utilization,
        "kv_cache_dtype": e.kv_cache_dtype,
        "block_size": e.block_size,
        "num_kv_blocks": e.num_kv_blocks,
        "tensor_parallelism": e.tensor_parallelism,
        "pipeline_parallelism": pipeline_parallelism(cfg),
        "dtype": e.dtype,
    }


def translate(cfg: HarnessConfig) -> dict[str, Any]:
    """KNOB_MAP applied: {TensorRT-LLM name: value}, "kv_cache_config.*" keys left flat."""
    values = engine_values(cfg)
    out = {KNOB_MAP[k]: v for k, v in values.items()}
    blocks = values["num_kv_blocks"]
    out["kv_cache_config.max_tokens"] = blocks * values["block_size"] if blocks > 0 else None
    return out


def llm_kwargs(cfg: HarnessConfig, runtime: str, model: str) -> dict[str, Any]:
    """Keyword arguments for LLM(...); kv_cache_config stays a dict for KvCacheConfig(**it)."""
    t = translate(cfg)
    kv = dict(FIXED_KV_CACHE)
    for key, value in t.items():
        if key.startswith("kv_cache_config.") and value is not None:
            kv[key.split(".", 1)[1]] = value
    kwargs: dict[str, Any] = {
        "model": model,
        **FIXED_LLM_KWARGS,
        "tensor_parallel_size": t["tensor_parallel_size"],
        "pipeline_parallel_size": t["pipeline_parallel_size"],
    }
    if runtime == RUNTIME_PYTORCH:
        kwargs["dtype"] = t["dtype"]
        kwargs["max_batch_size"] = t["max_batch_size"]
        kwargs["max_num_tokens"] = t["max_num_tokens"]
        kwargs["max_seq_len"] = max_seq_len(cfg)
        if cfg.engine.dummy_weights:
            kwargs["load_format"] = "dummy"  # random weights of the real shape: speed only
    else:
        # Engine runtime: batch/token limits, dtype and KV dtype are baked into the engine.
        kv.pop("dtype", None)
        kv.pop("tokens_per_block", None)
    kwargs["kv_cache_config"] = kv
    return kwargs


def resolve_runtime(cfg: HarnessConfig, runtime: str | None = None) -> str:
    """Explicit argument > HARNESS_TRTLLM_RUNTIME > auto (Sparse: engine; else: PyTorch)."""
    chosen = runtime or os.environ.get(RUNTIME_ENV, "") or "auto"
    if chosen == "auto":
        # 2:4 sparse kernels exist only on the engine path (trtllm-build --weight_sparsity).
        return RUNTIME_ENGINE if cfg.engine.model_opt == "Sparse" else RUNTIME_PYTORCH
    if chosen not in RUNTIMES:
        raise TrtllmConfigError(
            f"{RUNTIME_ENV}={chosen!r} is not a trtllm runtime; use one of "
            f"{', '.join(RUNTIMES)} or auto"
        )
    return chosen


def validate(cfg: HarnessConfig, runtime: str) -> None:
    """Refuse configs the trtllm backend cannot honour, before anything is loaded or built."""
    e = cfg.engine
    if e.device != "cuda":
        raise TrtllmConfigError(
            f"--backend=trtllm runs on NVIDIA GPUs only, device is {e.device!r}; "
            "pass --device=cuda on a CUDA machine, or use --backend=torch on CPU"
        )
    if e.data_parallelism != 1:
        raise TrtllmConfigError(
            f"data_parallelism={e.data_parallelism}: the trtllm backend runs one LLM instance; "
            "pass --data_parallelism=1 (use --tensor_parallelism=N to span N GPUs)"
        )
    if e.model_opt == "Sparse" and runtime == RUNTIME_PYTORCH:
        raise TrtllmConfigError(
            "model_opt=Sparse: TensorRT-LLM's PyTorch backend has no 2:4 sparse kernels; build "
            f"for the engine runtime: {RUNTIME_ENV}={RUNTIME_ENGINE} with tensorrt-llm==1.2.1"
        )
    if e.dummy_weights and runtime == RUNTIME_ENGINE:
        raise TrtllmConfigError(
            "dummy_weights: only the PyTorch runtime can load random weights "
            f"(load_format='dummy'); unset {RUNTIME_ENV} or set it to {RUNTIME_PYTORCH}"
        )
    if e.fp8_dense_layers_applied():
        raise TrtllmConfigError(
            f"fp8_dense_layers={e.fp8_dense_layers!r}: the trtllm backend quantizes every layer "
            "(ModelOpt); pass --fp8_dense_layers= to quantize all, or use --backend=torch"
        )
    if e.dummy_weights and e.model_opt != "Dense":
        raise TrtllmConfigError(
            f"dummy_weights with model_opt={e.model_opt}: random weights cannot be calibrated, "
            "and the trtllm backend would time bf16 instead; use --model_opt=Dense"
        )
    if e.max_num_batched_tokens < MAX_INPUT_LEN and cfg.benchmark.name == "llama2-70b":
        raise TrtllmConfigError(
            f"max_num_batched_tokens={e.max_num_batched_tokens} is below the longest prompt "
            f"({MAX_INPUT_LEN}); pass --max_num_batched_tokens={MAX_INPUT_LEN} or more"
        )
    default = EngineConfig()
    ignored = [
        f"{k}={getattr(e, k)!r}" for k in IGNORED_KNOBS if getattr(e, k) != getattr(default, k)
    ]
    if ignored:  # e.g. the torch engine's tuning in a system YAML: said once, not an error
        logger.warning(
            "no TensorRT-LLM counterpart, ignored (its own scheduler and kernels decide): %s",
            ", ".join(ignored),
        )


def sampling_kwargs(r: GenerationRequest, default_eos: int | None) -> dict[str, Any]:
    """SamplingParams(...) keywords for one request: greedy, our lengths, our EOS."""
    end_id = r.eos_token_id if r.eos_token_id is not None else default_eos
    kw: dict[str, Any] = {**GREEDY, "end_id": end_id, "pad_id": end_id}
    if r.fixed_output_len > 0:  # dummy-weight speed runs: exactly this many tokens
        n = r.fixed_output_len
        kw.update(max_tokens=n, min_tokens=n, ignore_eos=True)
    else:
        kw.update(
            max_tokens=r.max_new_tokens,
            min_tokens=min(r.min_new_tokens, r.max_new_tokens),
            ignore_eos=False,
        )
    return kw
