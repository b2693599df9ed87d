"""Per-round facts of the MLCommons submission rules (layout, seeds, limits, targets).

The round is a config value (`--version`); add an older layout by adding a `Round` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.submission.errors import SubmissionError

REFERENCE_MODEL = "llama2-70b"
CLOSED_MODEL_OPTS = ("Dense", "FP8")
DATASET_SIZE = 24576  # OpenOrca sampled set; perf sample count and Offline SPQ floor
MIN_DURATION_MS = 600_000
MAX_ACCURACY_LOG_BYTES = 10 * 1024
TRUNCATE_VIEW_BYTES = 4096
TEST06_RNG_SEED = 720381539243781796

# Reference FP16 accuracy (rouge1, rouge2, rougeL) and tokens/sample with its 0.9x..1.1x window.
REFERENCE_ROUGE = {"rouge1": 44.4312, "rouge2": 22.0352, "rougeL": 28.6162}
REFERENCE_TOKENS_PER_SAMPLE = 294.45

# The checker's accuracy regexes (ACC_PATTERN) for llama2.
ACC_PATTERNS = {
    "rouge1": r".*'rouge1':\s+'?([\d.]+)'?.*",
    "rouge2": r".*'rouge2':\s+'?([\d.]+)'?.*",
    "rougeL": r".*'rougeL':\s+'?([\d.]+)'?.*",
    "tokens_per_sample": r".*'tokens_per_sample':\s([\d.]+).*",
}
HASH_PATTERN = r"^hash=([\w\d]+)$"

# p99 (TTFT ms, TPOT ms) by scenario directory.
LLM_LATENCY_LIMITS_MS = {"Server": (2000.0, 200.0), "Interactive": (450.0, 40.0)}

SYSTEM_REQUIRED_FIELDS = (
    "division", "submitter", "status", "system_name", "number_of_nodes",
    "host_processor_model_name", "host_processors_per_node", "host_processor_core_count",
    "host_memory_capacity", "host_storage_capacity", "host_storage_type",
    "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
    "framework", "operating_system", "system_type", "other_software_stack",
    "host_processor_frequency", "host_processor_caches", "host_memory_configuration",
    "host_processor_interconnect", "host_networking", "host_networking_topology",
    "accelerator_frequency", "accelerator_host_interconnect", "accelerator_interconnect",
    "accelerator_interconnect_topology", "accelerator_memory_configuration",
    "accelerator_on-chip_memories", "cooling", "hw_notes", "sw_notes",
    "host_network_card_count", "system_type_detail",
)  # fmt: skip
SYSTEM_MEANINGFUL_FIELDS = (
    "division", "submitter", "system_type", "status", "system_name", "number_of_nodes",
    "host_processor_model_name", "host_processors_per_node", "host_processor_core_count",
    "host_memory_capacity", "host_memory_configuration", "host_storage_capacity",
    "host_storage_type", "host_networking", "host_network_card_count",
    "host_networking_topology", "accelerators_per_node", "accelerator_model_name",
    "accelerator_memory_capacity", "accelerator_host_interconnect",
    "accelerator_memory_configuration", "accelerator_interconnect", "cooling", "framework",
    "operating_system", "other_software_stack",
)  # fmt: skip
VALID_STATUS = ("available", "preview", "rdi")
VALID_SYSTEM_TYPES = ("datacenter", "edge", "datacenter,edge", "edge,datacenter")
MEASUREMENTS_FIELDS = (
    "input_data_types", "retraining", "starting_weights_filename", "weight_data_types",
    "weight_transformations",
)  # fmt: skip

PERF_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
ACC_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "accuracy.txt",
             "mlperf_log_accuracy.json")  # fmt: skip
MEASURE_FILES = ("measurements.json", "user.conf", "README.md")
TEST06_LINES = {
    "first_token": ("First token check pass: True", "First token check pass: Skipped"),
    "eos": ("EOS check pass: True",),
    "length": ("Sample length check pass: True",),
}


@dataclass(frozen=True)
class Round:
    """What one submission round (checker `--version`) expects."""

    version: str
    seeds: dict[str, int]  # effective_<name> in the detail log -> required value
    benchmarks: tuple[str, ...]  # closed benchmark directory names of the reference model
    code_dir: str = "src"  # "code" before v6.0
    compliance_in_results: bool = True  # v6.x: results/.../<scenario>/TEST06
    required_scenarios: tuple[str, ...] = ("Offline",)
    one_of_scenarios: tuple[str, ...] = ("Server", "Interactive")
    scenarios: tuple[str, ...] = field(default=("Offline", "Server", "Interactive"))

    def closed_target(self, benchmark_dir: str) -> str:
        """The closed benchmark an open result maps to (model_mapping.json)."""
        suffix = benchmark_dir.rsplit("-", 1)[-1]
        wanted = f"{REFERENCE_MODEL}-{suffix}"
        return wanted if wanted in self.benchmarks else self.benchmarks[-1]


ROUNDS = {
    "v6.0": Round(
        version="v6.0",
        seeds={
            "qsl_rng_seed": 2465351861681999779,
            "sample_index_rng_seed": 14276810075590677512,
            "schedule_rng_seed": 3936089224930324775,
        },
        benchmarks=("llama2-70b-99", "llama2-70b-99.9"),
    ),  # fmt: skip
    "v6.1": Round(
        version="v6.1",
        seeds={
            "qsl_rng_seed": 2085463073848966840,
            "sample_index_rng_seed": 2747215439041700203,
            "schedule_rng_seed": 16159082839903944936,
        },
        benchmarks=("llama2-70b-99.9",),
    ),  # fmt: skip
}


def get_round(version: str) -> Round:
    """The `Round` for a checker version string such as "v6.1"."""
    if version not in ROUNDS:
        raise SubmissionError(
            "--version", f"unknown round {version!r}", f"use one of {sorted(ROUNDS)}"
        )
    return ROUNDS[version]


def accuracy_targets(benchmark_dir: str) -> dict[str, float]:
    """Lower bounds per metric for `llama2-70b-99` / `-99.9` (x0.99 / x0.999 of reference)."""
    factor = 0.999 if benchmark_dir.endswith("-99.9") else 0.99
    targets = {k: v * factor for k, v in REFERENCE_ROUGE.items()}
    targets["tokens_per_sample"] = REFERENCE_TOKENS_PER_SAMPLE * 0.9
    return targets


def tokens_per_sample_upper() -> float:
    return REFERENCE_TOKENS_PER_SAMPLE * 1.1
