"""Config loading: merge order, validation errors that name the file/key/allowed values."""

from pathlib import Path

import pytest

from harness.config import loader
from harness.config.loader import ConfigError, load_config, load_resolved, to_yaml
from harness.config.system_detect import CPU_SYSTEM, match_system


def test_default_benchmark_resolves_with_system_knobs():
    cfg = load_config("smollm2-135m", "Offline", "cpu-default")
    assert cfg.benchmark.name == "smollm2-135m"
    assert cfg.scenario.loadgen_scenario == "Offline"
    assert cfg.engine.max_num_seqs == 128  # from systems/cpu-default.yaml benchmarks section
    assert cfg.engine.admission == "longest_first"  # from configs/smollm2-135m/Offline.yaml


def test_command_line_wins_and_test_run_shortens():
    cfg = load_config("smollm2-135m", "Server", "cpu-default", {"max_num_seqs": "3"}, test_run=True)
    assert cfg.engine.max_num_seqs == 3
    assert cfg.scenario.min_duration_ms == 60000
    assert cfg.run.test_run is True


def test_llama2_70b_keeps_reference_targets():
    cfg = load_config("llama2-70b", "Interactive", "H100-SXM-80GBx1")
    assert cfg.benchmark.accuracy.rouge1 == pytest.approx(44.4312)
    assert cfg.benchmark.accuracy.tokens_per_sample == pytest.approx(294.45)
    assert cfg.benchmark.total_sample_count == 24576
    assert cfg.scenario.loadgen_scenario == "Server"
    assert cfg.scenario.loadgen_model_suffix == "-interactive"
    assert cfg.engine.model_opt == "FP8"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"no_such_key": "1"}, "unknown option --no_such_key"),
        ({"max_num_seqs": "many"}, "engine.max_num_seqs"),
        ({"backend": "vllm"}, "choose one of: hf, torch, trtllm"),
        ({"name": "x"}, "ambiguous"),
        ({"fp8_dense_layers": "first"}, "command line: engine.fp8_dense_layers = 'first'; give"),
        ({"decode_split_keys": "-64"}, r"engine.decode_split_keys = -64; .* set it to 0 or more"),
        ({"max_model_len": "-1"}, r"engine.max_model_len = -1; .* set it to 0 or more"),
        ({"cuda_graph_min_decode_rows": "-8"}, r"cuda_graph_min_decode_rows = -8; .* 0 or more"),
        (
            {"cuda_graph_min_decode_rows": "4096", "max_num_batched_tokens": "256"},
            r"command line: engine.cuda_graph_min_decode_rows = 4096 exceeds "
            r"engine.max_num_batched_tokens = 256: .* at most max_num_batched_tokens",
        ),
        (
            {"max_num_batched_tokens": "320", "max_num_seqs": "512"},
            r"engine.max_num_batched_tokens = 320 \(set by command line\) is under "
            r"engine.max_num_seqs = 512 \(set by command line\): .* at least 512",
        ),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smollm2-135m", "Offline", "cpu-default", overrides)


def test_unknown_benchmark_scenario_system_list_the_choices():
    with pytest.raises(ConfigError, match="available: llama2-70b, .*smollm2-135m"):
        load_config("gptj", "Offline", "cpu-default")
    with pytest.raises(ConfigError, match="has no scenario 'MultiStream'"):
        load_config("smollm2-135m", "MultiStream", "cpu-default")
    with pytest.raises(ConfigError, match="To add a machine"):
        load_config("smollm2-135m", "Offline", "my-laptop")


def _fake_root(tmp_path: Path, benchmark_yaml: str, system_yaml: str) -> Path:
    (tmp_path / "configs/b").mkdir(parents=True)
    (tmp_path / "systems").mkdir()
    (tmp_path / "configs/b/benchmark.yaml").write_text(benchmark_yaml)
    (tmp_path / "configs/b/Offline.yaml").write_text("scenario: {scenario: Offline}\n")
    (tmp_path / "systems/s.yaml").write_text(system_yaml)
    return tmp_path


GOOD_BENCH = """
benchmark: {name: b, loadgen_model: b, model_path: m, dataset_path: d, preprocessed_dir: p}
"""


@pytest.mark.parametrize(
    "bench, system, message",
    [
        (
            GOOD_BENCH + "engine: {max_num_seq: 4}\n",
            "system: {name: s}\n",
            "benchmark.yaml: key 'engine.max_num_seq'",
        ),
        (
            GOOD_BENCH + "engine: {block_size: big}\n",
            "system: {name: s}\n",
            "could not be converted to Integer; expected int, e.g. the default 16",
        ),
        (GOOD_BENCH + "engines: {}\n", "system: {name: s}\n", "unknown section 'engines'"),
        (
            GOOD_BENCH,
            "system: {name: s}\nbenchmarks: {b: {Offline: {engin: {}}}}\n",
            "unknown section 'benchmarks.b.Offline.engin'",
        ),
        (GOOD_BENCH, "system: {name: s}\nknobs: {}\n", "unknown top-level key"),
        (
            GOOD_BENCH,
            "system: {name: s}\ndefaults: {engine: {dtype: fp4}}\n",
            "engine.dtype = 'fp4' is not allowed",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\nbenchmarks: {b: {Offline: {engine: {admission_batch: 0}}}}\n",
            r"systems/s.yaml \(benchmarks.b.Offline\): engine.admission_batch = 0; .* >= 1",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\ndefaults: {engine: {admission_headroom_tokens: -4}}\n",
            r"systems/s.yaml \(defaults\): engine.admission_headroom_tokens = -4; .* >= 0",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\ndefaults: {engine: {gpu_memory_utilization: 97}}\n",
            r"systems/s.yaml \(defaults\): engine.gpu_memory_utilization = 97.0; .* at most 1",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\nbenchmarks: {b: {Offline: {model_opts: {Sparse24: {}}}}}\n",
            "'benchmarks.b.Offline.model_opts' must map model_opt names",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\nbenchmarks: {b: {Offline: {model_opts: {Dense: {engin: {}}}}}}\n",
            "unknown section 'benchmarks.b.Offline.model_opts.Dense.engin'",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\nbenchmarks: {b: {Offline: {model_opts: "
            "{Dense: {engine: {model_opt: FP8}}}}}}\n",
            "'benchmarks.b.Offline.model_opts.Dense.engine.model_opt' cannot be set there",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\nbenchmarks: {b: {Offline: {backends: {vllm: {}}}}}\n",
            "'benchmarks.b.Offline.backends' must map backend names",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\nbenchmarks: {b: {Offline: {backends: "
            "{trtllm: {engine: {backend: torch}}}}}}\n",
            "'benchmarks.b.Offline.backends.trtllm.engine.backend' cannot be set there",
        ),
        (
            GOOD_BENCH,
            "system: {name: s}\nbenchmarks: {b: {Offline: {backends: "
            "{trtllm: {engine: {model_opt: FP8}}}}}}\n",
            "'benchmarks.b.Offline.backends.trtllm.engine.model_opt' cannot be set there",
        ),
        ("benchmark: {name: b}\n", "system: {name: s}\n", "missing required config key"),
        ("benchmark: [1, 2\n", "system: {name: s}\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_file_and_key(tmp_path, monkeypatch, bench, system, message):
    root = _fake_root(tmp_path, bench, system)
    monkeypatch.setattr(loader, "repo_root", lambda: root)
    with pytest.raises(ConfigError, match=message):
        load_config("b", "Offline", "s")


def test_model_opt_section_applies_to_its_model_opt_only():
    system, bench = "H100-SXM-80GBx1", "llama2-70b-synthetic"
    assert load_config(bench, "Offline", system).engine.max_num_seqs == 256  # FP8, the default
    sparse = load_config(bench, "Offline", system, {"model_opt": "Sparse"})
    assert sparse.engine.max_num_seqs == 512  # its model_opts.Sparse section
    assert sparse.engine.async_scheduling  # the scenario's own keys still apply
    cli = load_config(bench, "Offline", system, {"model_opt": "Sparse", "max_num_seqs": "300"})
    assert cli.engine.max_num_seqs == 300  # the command line still wins


def test_backend_section_applies_to_its_backend_only():
    # The H100's torch engine chunks prompts into 320-token steps; TensorRT-LLM's steps must
    # hold a whole prompt, so its backends.trtllm section raises the budget.
    system = "H100-SXM-80GBx1"
    assert load_config("llama2-70b", "Offline", system).engine.max_num_batched_tokens == 320
    trt = load_config("llama2-70b", "Offline", system, {"backend": "trtllm"})
    assert trt.engine.max_num_batched_tokens == 1024
    assert trt.engine.max_num_seqs == 256  # the scenario's own keys still apply
    sparse = load_config("llama2-70b-synthetic", "Offline", system,
                         {"backend": "trtllm", "model_opt": "Sparse"})  # fmt: skip
    assert sparse.engine.max_num_seqs == 512  # both layers apply,
    assert sparse.engine.max_num_batched_tokens == 4096  # the model_opt's, the narrower, last


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("smollm2-135m", "Offline", "cpu-default", {"block_size": "32"})
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_resolved(path) == cfg


def test_system_matching(tmp_path):
    assert match_system("cpu", 0) == CPU_SYSTEM
    assert match_system("NVIDIA H100 80GB HBM3", 1) == "H100-SXM-80GBx1"
    assert match_system("NVIDIA H200", 8) == "H200-SXM-141GBx8"
    with pytest.raises(ConfigError, match="num_accelerators: 3"):
        match_system("NVIDIA H100 80GB HBM3", 3)


def test_fp8_dense_layers_take_indices_from_either_end():
    cfg = load_config("smollm2-135m", "Offline", "cpu-default", {"fp8_dense_layers": "0, -1"})
    assert cfg.engine.fp8_dense_layers == "0, -1"


def _engine(cfg) -> dict:  # noqa: ANN001
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg.engine))


@pytest.mark.parametrize("system", ["H100-SXM-80GBx1", "H200-SXM-141GBx1"])
@pytest.mark.parametrize("scenario", ["Offline", "Server", "Interactive"])
@pytest.mark.parametrize("overrides", [{}, {"model_opt": "Sparse"}, {"backend": "trtllm"}])
def test_the_real_70b_runs_the_knobs_measured_on_the_synthetic_set(system, scenario, overrides):
    """The synthetic set's dummy-weight runs are where a GPU's knobs and rates are measured;
    the real benchmark on that GPU takes the same ones (only the weights differ)."""
    real = load_config("llama2-70b", scenario, system, dict(overrides))
    synthetic = load_config("llama2-70b-synthetic", scenario, system, dict(overrides))
    a, b = _engine(real), _engine(synthetic)
    assert (a.pop("dummy_weights"), b.pop("dummy_weights")) == (False, True)
    assert a == b
    assert real.scenario.target_qps == synthetic.scenario.target_qps


@pytest.mark.parametrize("one, eight", [("H100-SXM-80GBx1", "H100-SXM-80GBx8"),
                                        ("H200-SXM-141GBx1", "H200-SXM-141GBx8")])  # fmt: skip
@pytest.mark.parametrize("scenario", ["Offline", "Server", "Interactive"])
@pytest.mark.parametrize("overrides", [{}, {"model_opt": "Sparse"}])
def test_eight_gpus_run_one_gpus_knobs_per_copy_at_eight_times_its_rate(
    one, eight, scenario, overrides
):  # fmt: skip
    single = load_config("llama2-70b", scenario, one, dict(overrides))
    dgx = load_config("llama2-70b", scenario, eight, dict(overrides))
    a, b = _engine(single), _engine(dgx)
    assert (a.pop("data_parallelism"), b.pop("data_parallelism")) == (1, 8)
    assert a == b
    assert dgx.scenario.target_qps == pytest.approx(8 * single.scenario.target_qps)
