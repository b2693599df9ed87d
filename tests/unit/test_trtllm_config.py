"""trtllm backend without TensorRT-LLM: knob mapping, greedy sampling, version gating."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.backends import trtllm_version as tv
from harness.backends.base import BackendError, GenerationRequest
from harness.backends.trtllm_config import (
    KNOB_MAP,
    RUNTIME_ENV,
    TrtllmConfigError,
    engine_values,
    llm_kwargs,
    resolve_runtime,
    sampling_kwargs,
    translate,
    validate,
)
from harness.config.loader import load_config


def make_cfg(**overrides: str):
    return load_config(
        "llama2-70b", "Offline", "H100-SXM-80GBx1", {"backend": "trtllm", **overrides}
    )


# --- the knob table ----------------------------------------------------------------------


def test_knob_map_names_every_engine_value_and_trtllm_names():
    cfg = make_cfg()
    assert set(KNOB_MAP) == set(engine_values(cfg))
    assert KNOB_MAP["max_num_seqs"] == "max_batch_size"
    assert KNOB_MAP["max_num_batched_tokens"] == "max_num_tokens"
    assert KNOB_MAP["gpu_memory_utilization"] == "kv_cache_config.free_gpu_memory_fraction"
    assert KNOB_MAP["tensor_parallelism"] == "tensor_parallel_size"
    assert KNOB_MAP["pipeline_parallelism"] == "pipeline_parallel_size"
    assert KNOB_MAP["kv_cache_dtype"] == "kv_cache_config.dtype"


def test_translate_values():
    cfg = make_cfg(max_num_seqs="256", max_num_batched_tokens="2048",
                   gpu_memory_utilization="0.8", tensor_parallelism="2")  # fmt: skip
    t = translate(cfg)
    assert t["max_batch_size"] == 256
    assert t["max_num_tokens"] == 2048
    assert t["kv_cache_config.free_gpu_memory_fraction"] == 0.8
    assert t["tensor_parallel_size"] == 2
    assert t["pipeline_parallel_size"] == 1
    assert t["kv_cache_config.dtype"] == "fp8"
    assert t["kv_cache_config.max_tokens"] is None  # num_kv_blocks=0: sized from memory
    assert (
        translate(make_cfg(num_kv_blocks="100", block_size="32"))["kv_cache_config.max_tokens"]
        == 3200
    )


def test_llm_kwargs_pytorch_runtime():
    cfg = make_cfg(max_num_seqs="128")
    kw = llm_kwargs(cfg, "pytorch", model="ckpt")
    assert kw["model"] == "ckpt"
    assert kw["skip_tokenizer_init"] is True
    assert (kw["max_batch_size"], kw["max_seq_len"]) == (128, 2048)
    assert kw["max_num_tokens"] == cfg.engine.max_num_batched_tokens  # the system YAML's
    assert kw["dtype"] == "bfloat16"
    assert kw["kv_cache_config"] == {
        "enable_block_reuse": False,  # MLPerf: no KV reuse across requests
        "free_gpu_memory_fraction": cfg.engine.gpu_memory_utilization,  # the system YAML's
        "dtype": "fp8",
        "tokens_per_block": 16,
    }
    assert "load_format" not in kw


def test_llm_kwargs_engine_runtime_leaves_baked_settings_out():
    cfg = make_cfg()
    kw = llm_kwargs(cfg, "tensorrt_engine", model="engine")
    assert "max_batch_size" not in kw and "dtype" not in kw
    fraction = cfg.engine.gpu_memory_utilization  # the system YAML's
    assert kw["kv_cache_config"] == {
        "enable_block_reuse": False, "free_gpu_memory_fraction": fraction
    }  # fmt: skip


def test_dummy_weights_load_format():
    kw = llm_kwargs(make_cfg(model_opt="Dense", dummy_weights="true"), "pytorch", model="m")
    assert kw["load_format"] == "dummy"


# --- runtime choice and refusals ---------------------------------------------------------


def test_resolve_runtime(monkeypatch):
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    assert resolve_runtime(make_cfg()) == "pytorch"
    assert resolve_runtime(make_cfg(model_opt="Sparse")) == "tensorrt_engine"
    monkeypatch.setenv(RUNTIME_ENV, "tensorrt_engine")
    assert resolve_runtime(make_cfg()) == "tensorrt_engine"
    assert resolve_runtime(make_cfg(), "pytorch") == "pytorch"
    monkeypatch.setenv(RUNTIME_ENV, "onnx")
    with pytest.raises(TrtllmConfigError, match="onnx"):
        resolve_runtime(make_cfg())


@pytest.mark.parametrize(
    ("overrides", "runtime", "needle"),
    [
        ({"device": "cpu"}, "pytorch", "--device=cuda"),
        ({"data_parallelism": "8"}, "pytorch", "--data_parallelism=1"),
        ({"model_opt": "Sparse"}, "pytorch", "HARNESS_TRTLLM_RUNTIME=tensorrt_engine"),
        ({"model_opt": "Dense", "dummy_weights": "true"}, "tensorrt_engine", "load_format"),
        ({"dummy_weights": "true"}, "pytorch", "--model_opt=Dense"),
        ({"max_num_batched_tokens": "512"}, "pytorch", "--max_num_batched_tokens=1024"),
        ({"fp8_dense_layers": "0,-1"}, "pytorch", "--fp8_dense_layers= to quantize all"),
    ],
)
def test_validate_refuses_with_the_fix(overrides, runtime, needle):
    with pytest.raises(BackendError, match=needle.replace("+", r"\+")):
        validate(make_cfg(**overrides), runtime)


def test_validate_names_the_knobs_trtllm_ignores(caplog):
    cfg = make_cfg(decode_split_keys="256", admission="longest_first")
    with caplog.at_level("WARNING", logger="harness.backends.trtllm_config"):
        validate(cfg, "pytorch")
    (line,) = [
        r.getMessage() for r in caplog.records if "no TensorRT-LLM counterpart" in r.getMessage()
    ]
    assert "decode_split_keys=256" in line and "admission='longest_first'" in line
    assert "cpu_gemm" not in line  # at its default: not named


# --- greedy sampling ---------------------------------------------------------------------


def test_sampling_kwargs_greedy_and_lengths():
    r = GenerationRequest(1, [5, 6], max_new_tokens=1024, min_new_tokens=1, eos_token_id=2)
    kw = sampling_kwargs(r, default_eos=99)
    assert kw["top_k"] == 1 and kw["top_p"] is None and kw["n"] == 1
    assert not kw["use_beam_search"] and not kw["detokenize"]
    assert (kw["max_tokens"], kw["min_tokens"], kw["ignore_eos"]) == (1024, 1, False)
    assert kw["end_id"] == kw["pad_id"] == 2


def test_sampling_kwargs_fixed_length_and_default_eos():
    r = GenerationRequest(1, [5], max_new_tokens=1024, fixed_output_len=77)
    kw = sampling_kwargs(r, default_eos=2)
    assert (kw["max_tokens"], kw["min_tokens"], kw["ignore_eos"]) == (77, 77, True)
    assert kw["end_id"] == 2
    r = GenerationRequest(1, [5], max_new_tokens=4, min_new_tokens=9)
    assert sampling_kwargs(r, 2)["min_tokens"] == 4


# --- version gating ----------------------------------------------------------------------


def test_release_parsing():
    assert tv.release("1.2.1") == (1, 2, 1)
    assert tv.release("1.3.0rc24") == (1, 3, 0)
    assert tv.release("0.21.0") == (0, 21, 0)
    with pytest.raises(tv.TrtllmUnavailableError):
        tv.release("nightly")


@pytest.mark.parametrize(
    ("version", "pytorch", "engine"),
    [("0.21.0", False, False), ("1.0.0", True, True), ("1.2.1", True, True),
     ("1.3.0rc24", True, False), ("1.4.0", True, False)],
)  # fmt: skip
def test_supports(version, pytorch, engine):
    assert tv.supports(version, "pytorch") is pytorch
    assert tv.supports(version, "tensorrt_engine") is engine


def test_missing_library_message(monkeypatch):
    monkeypatch.setattr(tv, "installed_version", lambda d="tensorrt-llm": None)
    with pytest.raises(tv.TrtllmUnavailableError, match=r"pip install tensorrt-llm==1\.2\.1"):
        tv.require_trtllm("pytorch")
    with pytest.raises(BackendError, match="not installed"):
        tv.import_llm_class("tensorrt_engine")


def test_engine_runtime_refused_after_removal(monkeypatch):
    monkeypatch.setattr(tv, "installed_version", lambda d="tensorrt-llm": "1.3.0")
    with pytest.raises(tv.TrtllmUnavailableError, match="removed after 1.2.x") as info:
        tv.require_trtllm("tensorrt_engine")
    assert "pip install tensorrt-llm==1.2.1" in str(info.value)
    assert tv.require_trtllm("pytorch") == "1.3.0"  # allowed, with an 'untested' warning


def test_too_old_and_unknown_runtime(monkeypatch):
    monkeypatch.setattr(tv, "installed_version", lambda d="tensorrt-llm": "0.19.0")
    with pytest.raises(tv.TrtllmUnavailableError, match=">= 1.0"):
        tv.require_trtllm("pytorch")
    with pytest.raises(tv.TrtllmUnavailableError, match="unknown"):
        tv.require_trtllm("onnx")


def test_modelopt_missing(monkeypatch):
    monkeypatch.setattr(tv, "installed_version", lambda d="tensorrt-llm": None)
    with pytest.raises(tv.TrtllmUnavailableError, match="nvidia-modelopt"):
        tv.require_modelopt()


def test_cli_and_configs_do_not_import_tensorrt_llm():
    code = (
        "import sys, harness.cli, harness.backends.trtllm, harness.backends.trtllm_build, "
        "harness.backends.trtllm_modelopt; assert 'tensorrt_llm' not in sys.modules; "
        "assert 'modelopt' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
