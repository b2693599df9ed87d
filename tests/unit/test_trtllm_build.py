"""trtllm engine builds without TensorRT-LLM: command lines, checkpoint paths, engine.json.

Steps are run by a fake runner that records argv (nothing is quantized or built here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from harness.backends import trtllm_version as tv
from harness.backends.base import BackendError
from harness.backends.trtllm_build import (
    TrtllmBuildError,
    TrtllmEngineExistsError,
    TrtllmManifestError,
    build_trtllm_engine,
    check_trtllm_engine,
    plan_build,
    trtllm_build_argv,
)
from harness.backends.trtllm_modelopt import (
    fp8_quant_config,
    load_calibration,
    write_calibration_text,
)
from harness.config.loader import load_config


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A checkpoint dir, a calibration subset, quantize.py, and installed library versions."""
    model = tmp_path / "models" / "llama"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    calib = tmp_path / "pre" / "calibration"
    calib.mkdir(parents=True)
    np.save(calib / "input_ids_padded.npy", np.array([[5, 6, 7], [8, 9, 0]], dtype=np.int32))
    np.save(calib / "input_lens.npy", np.array([3, 2], dtype=np.int32))
    script = tmp_path / "quantize.py"
    script.write_text("")
    monkeypatch.setenv("HARNESS_TRTLLM_QUANTIZE_SCRIPT", str(script))
    monkeypatch.delenv("HARNESS_TRTLLM_RUNTIME", raising=False)
    versions = {"tensorrt-llm": "1.2.1", "nvidia-modelopt": "0.37.0"}
    monkeypatch.setattr(tv, "installed_version", lambda d="tensorrt-llm": versions.get(d))
    return SimpleNamespace(root=tmp_path, model=model, calib=calib, versions=versions)


def make_cfg(world, **overrides: str):
    base = {"model_path": str(world.model), "preprocessed_dir": str(world.root / "pre"),
            "backend": "trtllm"}  # fmt: skip
    return load_config("llama2-70b", "Offline", "H100-SXM-80GBx1", {**base, **overrides})


class Recorder:
    def __init__(self, status: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.status = status

    def __call__(self, argv: list[str], log: Path) -> int:
        self.calls.append(argv)
        log.write_text("fake step\n")
        if "--output_dir" in argv:  # what the real step would leave behind
            Path(flag(argv, "--output_dir")).mkdir(parents=True, exist_ok=True)
        return self.status


# --- plans per model_opt and runtime -----------------------------------------------------


def test_pytorch_dense_points_at_the_hf_checkpoint(world):
    plan = plan_build(make_cfg(world, model_opt="Dense"), world.root / "e", "pytorch")
    assert plan.steps == [] and plan.model == plan.checkpoint_dir == world.model


def test_pytorch_fp8_runs_modelopt_on_the_calibration_subset(world):
    out = world.root / "e"
    plan = plan_build(make_cfg(world), out, "pytorch")
    assert plan.model == plan.checkpoint_dir == out / "checkpoint-fp8-hf"
    (step,) = plan.steps
    argv = step.argv
    assert argv[:4] == [sys.executable, "-m", "harness.backends.trtllm_modelopt", "fp8-checkpoint"]
    assert flag(argv, "--calib_dir") == str(world.calib)
    assert flag(argv, "--calib_size") == "1024"
    assert flag(argv, "--kv_cache_dtype") == "fp8"
    assert flag(argv, "--output_dir") == str(out / "checkpoint-fp8-hf")


@pytest.mark.parametrize(
    ("model_opt", "qformat"), [("Dense", "full_prec"), ("FP8", "fp8"), ("Sparse", "fp8")]
)
def test_engine_runtime_quantize_then_build(world, model_opt, qformat):
    out = world.root / "e"
    cfg = make_cfg(world, model_opt=model_opt, kv_cache_dtype="fp8", tensor_parallelism="2")
    plan = plan_build(cfg, out, "tensorrt_engine")
    names = [s.name for s in plan.steps]
    assert names == ["calibration_text", "quantize", "trtllm_build"]
    ckpt = out / f"checkpoint-{qformat}-tp2pp1"
    assert plan.checkpoint_dir == ckpt and plan.model == plan.engine_subdir == out / "engine"
    quantize = plan.steps[1].argv
    assert quantize[1] == str(world.root / "quantize.py")
    assert flag(quantize, "--qformat") == qformat
    assert flag(quantize, "--kv_cache_dtype") == "fp8"
    assert flag(quantize, "--calib_size") == "1024"
    assert flag(quantize, "--calib_dataset") == str(out / "calibration-text")
    assert (flag(quantize, "--tp_size"), flag(quantize, "--pp_size")) == ("2", "1")
    build = plan.steps[2].argv
    assert build[0] == "trtllm-build"
    assert flag(build, "--checkpoint_dir") == str(ckpt)
    assert ("--weight_sparsity" in build) is (model_opt == "Sparse")
    assert (
        (flag(build, "--gemm_swiglu_plugin") == "fp8")
        if model_opt != "Dense"
        else ("--gemm_swiglu_plugin" not in build)
    )
    assert flag(build, "--workers") == "2" and flag(build, "--reduce_fusion") == "enable"


def test_trtllm_build_flags_follow_nvidia(world):
    cfg = make_cfg(world, max_num_seqs="896", max_num_batched_tokens="4096")
    argv = trtllm_build_argv(cfg, Path("c"), Path("e"))
    expected = {
        "--max_batch_size": "896", "--max_num_tokens": "4096", "--max_input_len": "1024",
        "--max_seq_len": "2048", "--max_beam_width": "1", "--gpt_attention_plugin": "auto",
        "--context_fmha": "enable", "--use_paged_context_fmha": "enable",
        "--remove_input_padding": "enable", "--kv_cache_type": "paged",
        "--use_fused_mlp": "enable", "--gemm_swiglu_plugin": "fp8",
        "--use_fp8_context_fmha": "enable", "--workers": "1", "--tokens_per_block": "16",
    }  # fmt: skip
    assert {k: flag(argv, k) for k in expected} == expected
    assert "--reduce_fusion" not in argv and "--weight_sparsity" not in argv


def test_dense_engine_without_fp8_kv_needs_no_calibration(world):
    cfg = make_cfg(world, model_opt="Dense", kv_cache_dtype="auto")
    plan = plan_build(cfg, world.root / "e", "tensorrt_engine")
    assert [s.name for s in plan.steps] == ["quantize", "trtllm_build"]
    assert "--calib_dataset" not in plan.steps[0].argv


# --- build_trtllm_engine -----------------------------------------------------------------


def test_build_writes_manifest_and_runs_steps_in_order(world):
    run = Recorder()
    cfg = make_cfg(world, model_opt="Sparse")
    out = build_trtllm_engine(cfg, world.root / "engines", runner=run)
    assert out == world.root / "engines" / "trtllm"
    assert [c[0] for c in run.calls][-1] == "trtllm-build"
    manifest = json.loads((out / "engine.json").read_text())
    assert manifest["backend"] == "trtllm" and manifest["runtime"] == "tensorrt_engine"
    assert manifest["versions"] == {"tensorrt_llm": "1.2.1"}
    assert [c["argv"] for c in manifest["commands"]] == run.calls
    assert manifest["model"] == str(out / "engine")
    assert manifest["build"]["max_batch_size"] == cfg.engine.max_num_seqs  # the system YAML's
    assert check_trtllm_engine(cfg, world.root / "engines")["runtime"] == "tensorrt_engine"


def test_existing_dir_refused_unless_force(world):
    cfg = make_cfg(world, model_opt="Dense")
    build_trtllm_engine(cfg, world.root / "engines", runner=Recorder())
    with pytest.raises(TrtllmEngineExistsError, match="--force") as info:
        build_trtllm_engine(cfg, world.root / "engines", runner=Recorder())
    assert "matches this config" in str(info.value)
    (world.root / "engines" / "trtllm" / "stale").write_text("x")
    build_trtllm_engine(cfg, world.root / "engines", force=True, runner=Recorder())
    assert not (world.root / "engines" / "trtllm" / "stale").exists()


def test_failing_step_names_command_log_and_rebuild(world):
    with pytest.raises(TrtllmBuildError, match="modelopt_fp8 exited with 3") as info:
        build_trtllm_engine(make_cfg(world), world.root / "engines", runner=Recorder(3))
    assert "modelopt.log" in str(info.value) and "--force" in str(info.value)
    assert not (world.root / "engines" / "trtllm" / "engine.json").exists()


def test_preflight_errors_before_anything_is_written(world, monkeypatch):
    (world.calib / "input_lens.npy").unlink()
    with pytest.raises(TrtllmBuildError, match="make preprocess_data"):
        build_trtllm_engine(make_cfg(world), world.root / "engines", runner=Recorder())
    monkeypatch.setenv("HARNESS_TRTLLM_QUANTIZE_SCRIPT", str(world.root / "nope.py"))
    with pytest.raises(TrtllmBuildError, match="git clone"):
        cfg = make_cfg(world, model_opt="Dense", kv_cache_dtype="auto")
        build_trtllm_engine(cfg, world.root / "engines", runtime="tensorrt_engine")
    world.versions.pop("tensorrt-llm")
    with pytest.raises(BackendError, match="pip install tensorrt-llm"):
        build_trtllm_engine(make_cfg(world, model_opt="Dense"), world.root / "engines")
    assert not (world.root / "engines").exists()


def test_manifest_mismatch_and_baked_limits(world):
    cfg = make_cfg(world, model_opt="FP8")
    build_trtllm_engine(cfg, world.root / "engines", runtime="tensorrt_engine", runner=Recorder())
    with pytest.raises(TrtllmManifestError, match="model_opt is 'FP8', this run wants 'Dense'"):
        check_trtllm_engine(make_cfg(world, model_opt="Dense"), world.root / "engines")
    baked = f"max_batch_size={cfg.engine.max_num_seqs}"  # the system YAML's
    with pytest.raises(TrtllmManifestError, match=baked):
        wider = make_cfg(world, max_num_seqs="1024", max_num_batched_tokens="1024")
        check_trtllm_engine(wider, world.root / "engines")
    with pytest.raises(TrtllmManifestError, match="no trtllm engine"):
        check_trtllm_engine(cfg, world.root / "elsewhere")


# --- ModelOpt helpers (pure parts) -------------------------------------------------------


def test_load_calibration_drops_padding(world):
    assert load_calibration(world.calib, 10, max_len=1024) == [[5, 6, 7], [8, 9]]
    assert load_calibration(world.calib, 1, max_len=2) == [[5, 6]]


def test_fp8_quant_config_adds_kv_quantizers_without_editing_presets():
    mtq = SimpleNamespace(
        FP8_DEFAULT_CFG={"quant_cfg": {"*weight_quantizer": {"num_bits": (4, 3)}},
                         "algorithm": "max"},
        FP8_KV_CFG={"quant_cfg": {"*[kv]_bmm_quantizer": {"num_bits": (4, 3)},
                                  "default": {"enable": False}}, "algorithm": "max"},
    )  # fmt: skip
    cfg = fp8_quant_config(mtq, kv_cache_fp8=True)
    assert set(cfg["quant_cfg"]) == {"*weight_quantizer", "*[kv]_bmm_quantizer"}
    assert "*[kv]_bmm_quantizer" not in mtq.FP8_DEFAULT_CFG["quant_cfg"]
    assert set(fp8_quant_config(mtq, False)["quant_cfg"]) == {"*weight_quantizer"}


def test_write_calibration_text(world):
    path = write_calibration_text(world.calib, lambda ids: "-".join(map(str, ids)),
                                  world.root / "ct", 5)  # fmt: skip
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.name == "train.jsonl" and rows == [{"text": "5-6-7"}, {"text": "8-9"}]


# --- loading: TrtllmBackend.from_config and the CLI, with FAKE library symbols -------------


class FakeKvCacheConfig:  # NOT tensorrt_llm.llmapi.KvCacheConfig: records its keywords
    def __init__(self, **kw):
        self.kw = kw


class FakeLLMClass:  # NOT tensorrt_llm.LLM: records its keywords
    def __init__(self, **kw):
        self.kw = kw


def fake_symbols(monkeypatch):
    monkeypatch.setattr(tv, "import_llm_class", lambda runtime: FakeLLMClass)
    symbols = {"KvCacheConfig": FakeKvCacheConfig, "SamplingParams": dict}
    monkeypatch.setattr(tv, "import_symbol", lambda module, attr: symbols[attr])


def test_from_config_builds_llm_from_the_manifest(world, monkeypatch):
    from harness.backends.trtllm import TrtllmBackend

    fake_symbols(monkeypatch)
    cfg = make_cfg(world, model_opt="Dense", admission="fifo")
    build_trtllm_engine(cfg, world.root / "engines", runner=Recorder())
    backend = TrtllmBackend.from_config(cfg, world.root / "engines")
    kw = backend.llm.kw
    assert kw["model"] == str(world.model) and kw["max_batch_size"] == cfg.engine.max_num_seqs
    assert kw["kv_cache_config"].kw["enable_block_reuse"] is False
    assert backend.eos_token_id == 2 and backend.make_sampling_params is dict


def test_from_config_without_library_says_how_to_install(world, monkeypatch):
    from harness.backends.trtllm import TrtllmBackend

    world.versions.clear()
    with pytest.raises(BackendError, match=r"pip install tensorrt-llm==1\.2\.1"):
        TrtllmBackend.from_config(make_cfg(world), world.root / "engines")


def test_from_config_refuses_engine_runtime_on_newer_library(world, monkeypatch):
    from harness.backends.trtllm import TrtllmBackend

    fake_symbols(monkeypatch)
    cfg = make_cfg(world, model_opt="Sparse")
    build_trtllm_engine(cfg, world.root / "engines", runner=Recorder())
    world.versions["tensorrt-llm"] = "1.3.0"
    with pytest.raises(BackendError, match="removed after 1.2.x"):
        TrtllmBackend.from_config(cfg, world.root / "engines")


def test_cli_generate_engines_trtllm_reports_missing_library(world, capsys):
    from harness.cli import main

    world.versions.clear()
    rc = main(["generate_engines", "--benchmarks=llama2-70b", "--backend=trtllm",
               "--system_name=H100-SXM-80GBx1", f"--model_path={world.model}"])  # fmt: skip
    assert rc == 2
    assert "pip install tensorrt-llm==1.2.1" in capsys.readouterr().err
