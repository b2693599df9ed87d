"""TorchBackend + engine builder: build an engine dir, load it, stream events, refuse mismatches."""

from __future__ import annotations

import json
import queue
import time

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM

from harness.backends.base import BackendError, GenerationRequest
from harness.backends.torch_backend import TorchBackend
from harness.config.schema import HarnessConfig
from harness.engine.builder import EngineExistsError, build_engine
from tests.unit.sinks import RecordingSink, wait_for

VOCAB = 128
EOS = 2


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = HFLlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=EOS, initializer_range=0.2,
    )  # fmt: skip
    model = HFLlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return path, model


def make_cfg(model_path, engine_dir, **engine) -> HarnessConfig:
    cfg = HarnessConfig()
    cfg.benchmark.name = "tiny"
    cfg.benchmark.model_path = str(model_path)
    cfg.system.name = "test"
    cfg.engine.backend = "torch"
    cfg.engine.engine_dir = str(engine_dir)
    cfg.engine.num_kv_blocks = 64
    cfg.engine.block_size = 4
    cfg.engine.max_num_batched_tokens = 16
    for k, v in engine.items():
        setattr(cfg.engine, k, v)
    return cfg


def requests(n: int, **kw) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(7)
    return [
        GenerationRequest(
            request_id=100 + i,
            prompt_token_ids=torch.randint(3, VOCAB, (3 + 2 * i,), generator=g).tolist(),
            **{"max_new_tokens": 10, "eos_token_id": EOS, **kw},
        )
        for i in range(n)
    ]


def run_backend(backend: TorchBackend, reqs: list[GenerationRequest]) -> RecordingSink:
    sink = RecordingSink()
    backend.start(sink)
    backend.submit(reqs[: len(reqs) // 2])
    backend.submit(reqs[len(reqs) // 2 :])
    backend.stop()
    return sink


def test_dense_engine_streams_hf_greedy_outputs(hf_dir, tmp_path):
    path, hf = hf_dir
    cfg = make_cfg(path, tmp_path / "engine")
    build_engine(cfg, tmp_path / "engine")
    manifest = json.loads((tmp_path / "engine" / "engine.json").read_text())
    assert manifest["model_opt"] == "Dense" and manifest["dtype"] == "float32"
    assert manifest["checksum"]["sha256"] and manifest["model_config"]["vocab_size"] == VOCAB
    reqs = requests(6)
    sink = run_backend(TorchBackend.from_config(cfg), reqs)
    for r in reqs:
        want = hf.generate(
            torch.tensor([r.prompt_token_ids]), max_new_tokens=10, do_sample=False,
            eos_token_id=EOS, pad_token_id=0,
        )[0, len(r.prompt_token_ids) :].tolist()  # fmt: skip
        assert sink.finished[r.request_id] == want
        assert sink.first[r.request_id] == want[0]


def test_build_refuses_to_overwrite_unless_forced(hf_dir, tmp_path):
    cfg = make_cfg(hf_dir[0], tmp_path / "e")
    build_engine(cfg, tmp_path / "e")
    with pytest.raises(EngineExistsError, match="force"):
        build_engine(cfg, tmp_path / "e")
    build_engine(cfg, tmp_path / "e", force=True)


def test_manifest_mismatch_names_file_key_values_and_command(hf_dir, tmp_path):
    build_engine(make_cfg(hf_dir[0], tmp_path / "e"), tmp_path / "e")
    cfg = make_cfg(hf_dir[0], tmp_path / "e", model_opt="FP8")
    with pytest.raises(BackendError) as err:
        TorchBackend.from_config(cfg)
    msg = str(err.value)
    assert "engine.json" in msg and "model_opt" in msg and "'Dense'" in msg and "'FP8'" in msg
    assert "make generate_engines" in msg and "--model_opt=FP8" in msg


def test_missing_engine_says_how_to_build(hf_dir, tmp_path):
    with pytest.raises(BackendError, match="make generate_engines"):
        TorchBackend.from_config(make_cfg(hf_dir[0], tmp_path / "nothing"))


def test_fp8_kv_cache_on_cpu_names_the_value_and_the_fix(hf_dir, tmp_path):
    cfg = make_cfg(hf_dir[0], tmp_path / "e", kv_cache_dtype="fp8")
    build_engine(cfg, tmp_path / "e")
    with pytest.raises(BackendError, match="kv_cache_dtype='fp8'.*on cpu use kv_cache_dtype=auto"):
        TorchBackend.from_config(cfg)


@pytest.mark.parametrize("model_opt", ["FP8", "Sparse"])
def test_fp8_engines_build_and_run_on_cpu(hf_dir, tmp_path, model_opt):
    cfg = make_cfg(hf_dir[0], tmp_path / "e", model_opt=model_opt)
    build_engine(cfg, tmp_path / "e")
    manifest = json.loads((tmp_path / "e" / "engine.json").read_text())
    assert manifest["quantization"]["weights"].startswith("float8_e4m3fn")
    reqs = requests(3)
    sink = run_backend(TorchBackend.from_config(cfg), reqs)
    assert sorted(sink.finished) == [r.request_id for r in reqs]


def test_fp8_dense_layers_are_built_dense_recorded_and_checked(hf_dir, tmp_path):
    """fp8_dense_layers=-1: the last decoder layer keeps fp32 weights in the engine (no FP8
    scales), the manifest records it, and a run that asks for other layers is refused."""
    from safetensors.torch import load_file

    cfg = make_cfg(hf_dir[0], tmp_path / "e", model_opt="FP8", fp8_dense_layers="-1")
    build_engine(cfg, tmp_path / "e")
    state = load_file(tmp_path / "e" / "model.safetensors")
    last, first = "model.layers.1.mlp.down_proj", "model.layers.0.mlp.down_proj"
    assert state[f"{last}.weight"].dtype == torch.float32 and f"{last}.weight_scale" not in state
    assert state[f"{first}.weight"].dtype == torch.float8_e4m3fn
    assert json.loads((tmp_path / "e" / "engine.json").read_text())["fp8_dense_layers"] == "-1"
    sink = run_backend(TorchBackend.from_config(cfg), requests(2))
    assert len(sink.finished) == 2
    with pytest.raises(BackendError) as err:
        TorchBackend.from_config(make_cfg(hf_dir[0], tmp_path / "e", model_opt="FP8"))
    msg = str(err.value)
    assert "fp8_dense_layers is '-1', this run wants ''" in msg
    cfg.engine.fp8_dense_layers = "2"  # the tiny model has layers 0 and 1
    with pytest.raises(ValueError, match="fp8_dense_layers='2': '2' is not a decoder layer"):
        build_engine(cfg, tmp_path / "e2")
    assert not (tmp_path / "e2").exists()  # refused before anything is written


def test_dummy_weights_fixed_output_len_ignores_eos(hf_dir, tmp_path):
    cfg = make_cfg(hf_dir[0], tmp_path / "e", dummy_weights=True)
    build_engine(cfg, tmp_path / "e")
    assert not list((tmp_path / "e").glob("*.safetensors"))
    reqs = requests(4, fixed_output_len=7)
    sink = run_backend(TorchBackend.from_config(cfg), reqs)
    assert all(len(v) == 7 and EOS not in v for v in sink.finished.values())
    assert len(sink.first) == 4


def test_max_model_len_sizes_the_engine_and_a_longer_dataset_is_refused(hf_dir, tmp_path):
    """engine.max_model_len reaches the engine (block tables, the scheduler's limit) and the
    run's preflight refuses a dataset whose longest prompt + max_new_tokens exceeds it."""
    import numpy as np

    from harness.cli import UserError, check_model_len
    from harness.dataset import Dataset

    cfg = make_cfg(hf_dir[0], tmp_path / "e", max_model_len=40)
    build_engine(cfg, tmp_path / "e")
    engine = TorchBackend.from_config(cfg).engine
    assert engine.model_runner.block_tables.width == 10  # 40 tokens in blocks of 4 (positions: 128)
    assert engine.scheduler.config.max_model_len == 40
    lens = np.array([5, 12], dtype=np.int32)
    data = Dataset(np.zeros((2, 12), np.int32), lens, lens, tmp_path)
    cfg.benchmark.max_new_tokens = 28
    check_model_len(cfg, data)  # 12 + 28 = 40: fits
    cfg.benchmark.max_new_tokens = 29
    with pytest.raises(UserError, match=r"engine.max_model_len = 40: .* prompt of 12 tokens, "
                       r"\+ benchmark.max_new_tokens 29 = 41; set --max_model_len=41"):  # fmt: skip
        check_model_len(cfg, data)
    cfg.engine.max_model_len = 0  # the model's positions: no dataset check
    check_model_len(cfg, data)


class SlowQueue(queue.SimpleQueue):
    """Each put takes a while, so a worker could wake up between the items of one submit."""

    def put(self, item, block=True, timeout=None):  # noqa: ANN001
        super().put(item, block, timeout)
        time.sleep(0.02)


def test_a_submit_enters_the_engine_at_once(hf_dir, tmp_path):
    """An Offline query's samples join the engine together, so its batches (and numerics) do
    not depend on when the worker thread wakes."""
    path, _ = hf_dir
    cfg = make_cfg(path, tmp_path / "engine")
    build_engine(cfg, tmp_path / "engine")
    backend = TorchBackend.from_config(cfg, tmp_path / "engine")
    backend._queue = SlowQueue()
    engine, seen = backend.engine, []
    step = engine.step

    def recording_step():  # -> list[RequestOutput]
        seen.append(len(engine.scheduler.requests))
        return step()

    engine.step = recording_step
    sink = RecordingSink()
    backend.start(sink)
    backend.submit(requests(6))
    backend.stop()
    assert seen[0] == 6 and len(sink.finished) == 6


def test_a_worker_failure_is_reported_to_the_sink_and_raised(hf_dir, tmp_path):
    """The sink hears of it (the SUT then ends the LoadGen test); submit and stop raise."""
    path, _ = hf_dir
    cfg = make_cfg(path, tmp_path / "engine")
    build_engine(cfg, tmp_path / "engine")
    backend = TorchBackend.from_config(cfg, tmp_path / "engine")

    def failing_step():  # -> list[RequestOutput]
        raise RuntimeError("CUDA out of memory (pretend)")

    backend.engine.step = failing_step
    sink = RecordingSink()
    backend.start(sink)
    backend.submit(requests(2))
    want = "torch backend worker failed: RuntimeError('CUDA out of memory (pretend)')"
    assert wait_for(sink.failures) == [want]
    with pytest.raises(BackendError, match="CUDA out of memory"):
        backend.submit(requests(1))
    with pytest.raises(BackendError, match="CUDA out of memory"):
        backend.stop()


def test_bench_parses_the_engines_closing_line(hf_dir, tmp_path, caplog):
    """bench.json's "engines" account comes from these lines: a format change must break here."""
    import logging

    from harness.bench import BY_SEQUENCES_LINE, BY_SHARE_LINE, parse_engine_line

    path, _ = hf_dir
    cfg = make_cfg(path, tmp_path / "engine")
    build_engine(cfg, tmp_path / "engine")
    backend = TorchBackend.from_config(cfg, tmp_path / "engine")
    with caplog.at_level(logging.INFO, logger="harness.backends.torch_backend"):
        run_backend(backend, requests(5))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine")]
    assert len(lines) == 4
    assert lines[3].startswith("engine host: ") and " full garbage collections " in lines[3]
    got = parse_engine_line(lines[0])
    log = backend.engine.step_log
    assert got is not None and got["tokens"] == log.num_tokens > 0
    assert got["steps"] == len(log.times) == got["decode_steps"] + got["prompt_steps"] > 1
    assert got["prompt_steps"] >= 1 and got["preemptions"] == 0
    assert parse_engine_line("engine: something else") is None
    groups = BY_SEQUENCES_LINE.search(lines[1])  # 5 requests: every decode step has 1-16 sequences
    assert groups and groups.group(1).startswith(f"1-16 sequences: {got['decode_steps']} steps")
    shares = BY_SHARE_LINE.search(lines[2])
    assert shares and shares.group(1).startswith("0%-10% ") and " 99%-100% " in shares.group(1)


def test_on_cuda_the_closing_line_says_what_memory_the_run_left(hf_dir, tmp_path, caplog,
                                                                 monkeypatch):  # fmt: skip
    """A pretend CUDA device (the run itself is on the CPU): the line gains the free memory at
    the end, which bench.json records per engine copy; steps with GPU seconds add a line."""
    import logging

    from harness.bench import GPU_TIME_LINE, parse_engine_line

    path, _ = hf_dir
    cfg = make_cfg(path, tmp_path / "engine")
    build_engine(cfg, tmp_path / "engine")
    backend = TorchBackend.from_config(cfg, tmp_path / "engine")
    run_backend(backend, requests(2))
    monkeypatch.setattr(backend.engine.model_runner, "device", torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 2 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 2.5 * 2**30)
    log = backend.engine.step_log
    for i in range(len(log.gpu_seconds)):  # as ModelRunner.collect's CUDA events give them
        log.gpu_seconds[i] = 0.25 * log.durations[i]
    with caplog.at_level(logging.INFO, logger="harness.backends.torch_backend"):
        backend.stop()  # logs the closing line again
    messages = [r.getMessage() for r in caplog.records]
    gpu = next(m for m in messages if "GPU time" in m)
    assert (m := GPU_TIME_LINE.search(gpu)) and m.group(1).startswith("decode-only steps ")
    assert "(GPU " in next(m for m in messages if "by sequences" in m)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("engine:"))
    # the allocator's peak held 0.5 GiB more than it holds now: free was 2.5 GiB at the lowest
    assert line.endswith("; GPU memory at the end: 3.00 GiB free of 80.00 GiB, 2.50 GiB at "
                         "the lowest (graph capture included: gpu_memory_utilization could "
                         "rise by about 0.031)")  # fmt: skip
    got = parse_engine_line(line)
    assert got["gpu_free_gib_at_end"] == 3.0 and got["gpu_total_gib"] == 80.0
    assert got["gpu_lowest_free_gib"] == 2.5
    assert got["tokens"] == backend.engine.step_log.num_tokens
