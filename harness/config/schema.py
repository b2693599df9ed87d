"""Typed schema of the resolved configuration: every YAML key and every --flag is a field here.

OmegaConf checks each YAML layer against these dataclasses, so an unknown key or a wrong type
is an error before any work starts. Leaf names are unique across sections so that
`--<leaf>=<value>` on the command line names exactly one field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCENARIOS = ("Offline", "Server", "SingleStream", "Interactive")
TEST_MODES = ("PerformanceOnly", "AccuracyOnly")
CONFIG_VERS = ("default", "high_accuracy")
BACKENDS = ("hf", "torch", "trtllm", "openai")
MODEL_OPTS = ("Dense", "FP8", "Sparse")
SPARSE_KERNELS = ("triton", "mma", "wgmma", "cutlass")  # engine.sparse_kernel


@dataclass
class AccuracyTargets:
    """Reference scores; a run passes at target x fraction (tokens: inside the bounds)."""

    rouge1: float = 0.0
    rouge2: float = 0.0
    rougeL: float = 0.0
    tokens_per_sample: float = 0.0
    fraction_default: float = 0.99
    fraction_high_accuracy: float = 0.999
    tokens_lower_fraction: float = 0.9
    tokens_upper_fraction: float = 1.1


@dataclass
class BenchmarkConfig:
    """Hardware-independent facts of one benchmark (configs/benchmark/<name>.yaml)."""

    name: str = "???"
    loadgen_model: str = "???"  # the model name LoadGen's mlperf.conf keys use
    model_path: str = "???"  # HF checkpoint folder (weights + tokenizer)
    dataset_path: str = "???"  # OpenOrca-format pickle
    preprocessed_dir: str = "???"  # output of `make preprocess_data`
    calibration_path: str = ""
    total_sample_count: int = 0  # 0: the whole dataset
    max_new_tokens: int = 1024
    min_new_tokens: int = 1
    eos_token_id: int = 2
    accuracy: AccuracyTargets = field(default_factory=AccuracyTargets)


@dataclass
class ScenarioConfig:
    """LoadGen settings of the scenario; the ones set go into user.conf (-1 / 0: not set, so
    LoadGen's built-in mlperf.conf value applies)."""

    scenario: str = "Offline"
    loadgen_scenario: str = "Offline"  # Interactive runs LoadGen's Server scenario
    loadgen_model_suffix: str = ""  # "-interactive" picks the interactive mlperf.conf keys
    target_qps: float = 0.0  # Offline: offline_expected_qps; Server: server_target_qps
    min_duration_ms: int = -1
    min_query_count: int = -1
    max_query_count: int = 0
    performance_sample_count: int = 0
    single_stream_expected_latency_ms: float = 0.0
    # Token latencies: set for benchmarks that mlperf.conf does not know (it has llama2-70b's).
    use_token_latencies: bool = True
    ttft_latency_ms: int = 0
    tpot_latency_ms: int = 0
    target_latency_percentile: float = 0.0  # Server: percentile of TTFT/TPOT (0.99 by default)
    sample_concatenate_permutation: bool = False


@dataclass
class EngineConfig:
    """Knobs of the inference backend (engine build and runtime)."""

    backend: str = "torch"  # the native engine; hf is the accuracy reference
    model_opt: str = "Dense"
    dtype: str = "float32"  # activations / dense weights: float32, bfloat16, float16
    device: str = "cpu"
    engine_dir: str = ""  # default: build/engines/<system>/<benchmark>/<model_opt>
    dummy_weights: bool = False  # random weights of the real shape: speed only
    batch_size: int = 16  # hf backend: prompts per generate() call
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    # FP8 / Sparse: decoder layers kept in the model dtype, comma-separated indices, negative
    # ones from the end ("0,-1": the first and the last); "": every layer quantized
    fp8_dense_layers: str = ""
    num_kv_blocks: int = 0  # 0: computed from free memory
    admission: str = "fifo"  # fifo | longest_first
    admission_batch: int = 1  # torch: while others decode, admit new requests in groups
    # torch: a new request starts only if free KV still holds this many more tokens for
    # every running sequence (fewer preemptions when KV, not max_num_seqs, is the limit)
    admission_headroom_tokens: int = 0
    num_threads: int = 0  # torch intra-op threads on CPU; 0: torch's default
    tensor_parallelism: int = 1
    data_parallelism: int = 1
    use_cuda_graph: bool = True
    # CUDA, with use_cuda_graph: steps that mix prompt chunks (up to 8 new prompts, after any
    # chunks that continue a prompt) with decodes replay graphs too, up to this many tokens a
    # step (at most max_num_batched_tokens; 0: they run eagerly); costs capture time and graph
    # memory at start
    cuda_graph_max_tokens: int = 0
    # CUDA graphs: time each graph after capture and drop those a larger one of their kind
    # (decode, mixed) beats (a step then pads up to it); false keeps every bucket
    cuda_graph_fastest_buckets: bool = True
    # CUDA graphs: decode graphs reach at least this many rows (0: max_num_seqs), so that with
    # cuda_graph_fastest_buckets a batch may pad up to a larger graph that replays faster (the
    # 70B FP8's 48- and 64-row decode graphs replayed in 31.0-31.9 ms on an H100, its 80-128-row
    # ones in 29.3-29.9: docs/graph_times/); costs capture time and graph memory at start
    cuda_graph_min_decode_rows: int = 0
    # CUDA paged decode attention: each request's keys in splits of this many keys, as many
    # as its context needs, only those launched (a work list a step), so that every program
    # does about the same work (0: in equal parts, their number chosen per batch: a batch then
    # waits on its longest request)
    decode_split_keys: int = 0
    # Prompt + output tokens a request may hold (0: the model's positions, 4,096 for Llama-2):
    # sizes the block tables, the CUDA graphs' decode grid and the KV pool's useful cap. The
    # run refuses a dataset whose longest prompt plus max_new_tokens exceeds it
    max_model_len: int = 0
    fused_kernels: bool = True  # norm / RoPE / SwiGLU: Triton (CUDA), C (CPU fp32); false: torch
    # CUDA FP8 linears, with fused_kernels: steps of up to this many rows run the Triton GEMM
    # (engine/kernels/fp8_gemm.py), larger ones cuBLAS; 0: cuBLAS always
    fp8_triton_max_rows: int = 32
    # CUDA Sparse (weights stored compressed, quant/sparse24.py): the Triton GEMM on compressed
    # tiles up to this many rows; larger steps expand the weights and run cuBLAS. 256: on the
    # H100 the Triton kernel took 0.80 ms a 70B layer at 256 rows, expand + cuBLAS 0.98; at
    # 512 rows 1.31-1.49 against 1.29 (docs/benchmarks.md, fourteenth session)
    sparse_triton_max_rows: int = 256
    # CUDA Sparse: which kernel multiplies the 2:4 weights. triton: the above. mma: those steps
    # on the sparse tensor cores instead (mma.sp, engine/kernels/sparse24_mma.cu, built with
    # nvcc), larger ones from its packed layout to cuBLAS; on the H100 it beats the Triton kernel
    # up to 16 rows (0.24 against 0.29 ms a 70B layer at 1 row) and loses from 32 on: pair it
    # with sparse_triton_max_rows: 16. Hopper (sm_90a) only, experimental, every step: wgmma:
    # wgmma.mma_async.sp, FP8 at the sparse tensor cores' rate (kernels/sparse24_wgmma.py;
    # bound by its loads on an H100: 70B decode step at 160 sequences 1.02x the Triton path's
    # time, prefill 2x); cutlass: CUTLASS's SM90 sparse FP8 GEMM (kernels/sparse24_cutlass.py;
    # needs its headers: pip install --no-deps nvidia-cutlass, or CUTLASS_PATH): on the H100
    # the 70B decode step at 160 sequences took 40.6 ms against the Triton path's 70.1 (FP8:
    # 35.5), a 16 x 256 prefill 611 ms against 597; not yet through LoadGen
    sparse_kernel: str = "triton"
    # CUDA bf16 / fp16 linears (Dense models, every model's head): steps of up to this many
    # rows run the Triton GEMV (engine/kernels/gemv.py), larger ones cuBLAS; 0: cuBLAS always.
    # 1: at one row it beat cuBLAS on every 7B shape, 4.69 ms a step's linears against 5.18
    # (H100, docs/benchmarks.md, fifteenth session)
    dense_triton_max_rows: int = 1
    cpu_attention_kernel: bool = True  # CPU fp32: C paged decode attention; false: torch ops
    cpu_gemm: str = "onednn"  # CPU dense GEMMs: onednn | mkl (HF's rounding; quant/dense.py)
    # CPU: GiB of the KV pool written at start, so that its page faults are not paid in the
    # run's first steps (the rest commits on first use); 0: all on first use
    cpu_kv_commit_gib: float = 2.0
    # Queue each step before the previous step's tokens are applied, so the host's scheduling
    # and input preparation run while the device computes (tensor parallel ranks too).
    # Same tokens either way; events come one step later
    async_scheduling: bool = False
    # CUDA: the input embedding in pinned host memory, each step's rows read by the GPU over
    # PCIe (engine/kernels/embedding.py): its GPU bytes go to the KV cache instead (0.49 GiB
    # for Llama-2-70B's bf16 table, about 3,200 FP8 KV tokens)
    embedding_on_host: bool = False
    # backend=openai: any OpenAI-compatible server (docs/openai.md)
    endpoint_url: str = ""  # http://host:port (a trailing /v1 is accepted)
    endpoint_model: str = ""  # served model name; "": the server's only model
    endpoint_max_concurrency: int = 64  # open HTTP requests at once
    endpoint_api_key_env: str = ""  # NAME of the environment variable holding the key
    endpoint_timeout_s: float = 600.0  # total time per request

    def fp8_dense_layers_applied(self) -> str:
        """fp8_dense_layers where it applies (FP8 and Sparse), spaces dropped; "" for Dense."""
        return "" if self.model_opt == "Dense" else self.fp8_dense_layers.replace(" ", "")


@dataclass
class SystemConfig:
    """One machine (systems/<name>.yaml): hardware facts plus per-benchmark knobs."""

    name: str = "???"
    description: str = ""
    accelerator: str = "cpu"  # GPU product name as torch reports it, or "cpu"
    num_accelerators: int = 0
    accelerator_memory_gib: float = 0.0
    host_processor: str = ""
    submitter: str = "OpenHarness"
    # Extra fields for the submission's systems/<name>.json (cooling, host_storage_type, ...).
    submission: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    """What to do in this invocation (command line only)."""

    test_mode: str = "PerformanceOnly"
    config_ver: str = "default"
    test_run: bool = False
    log_dir: str = "build/logs"
    sample_limit: int = 0  # use only the first N dataset rows (quick runs, CI)
    audit_config: str = ""  # TEST06 audit.config to copy into the run directory


@dataclass
class HarnessConfig:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Counts that must be >= 1, checked after the merge (before any engine is built).
AT_LEAST_ONE: tuple[str, ...] = (
    "engine.max_num_seqs",
    "engine.max_num_batched_tokens",
    "engine.block_size",
    "engine.admission_batch",
)
# Counts that may be 0 (off) but not negative.
AT_LEAST_ZERO: tuple[str, ...] = (
    "engine.admission_headroom_tokens", "engine.cpu_kv_commit_gib", "engine.cuda_graph_max_tokens",
    "engine.fp8_triton_max_rows", "engine.sparse_triton_max_rows", "engine.dense_triton_max_rows",
    "engine.decode_split_keys", "engine.max_model_len", "engine.cuda_graph_min_decode_rows",
)  # fmt: skip

# engine.fp8_dense_layers: decoder layer indices separated by commas, or nothing.
LAYER_LIST = r"\s*(-?\d+\s*(,\s*-?\d+\s*)*)?"

# Values that must be one of a fixed set, checked after the merge.
CHOICES: dict[str, tuple[str, ...]] = {
    "scenario.scenario": SCENARIOS,
    "scenario.loadgen_scenario": ("Offline", "Server", "SingleStream"),
    "run.test_mode": TEST_MODES,
    "run.config_ver": CONFIG_VERS,
    "engine.backend": BACKENDS,
    "engine.model_opt": MODEL_OPTS,
    "engine.dtype": ("float32", "bfloat16", "float16"),
    "engine.admission": ("fifo", "longest_first"),
    "engine.kv_cache_dtype": ("auto", "fp8"),
    "engine.cpu_gemm": ("onednn", "mkl"),
    "engine.sparse_kernel": SPARSE_KERNELS,
}
