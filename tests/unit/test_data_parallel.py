"""DataParallelBackend: 2 CPU engine copies give one copy's outputs, each request once, spread."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM as HFLlamaForCausalLM

from harness.backends.base import BackendError, GenerationRequest
from harness.backends.data_parallel import DataParallelBackend
from harness.backends.torch_backend import TorchBackend
from harness.cli import make_backend
from harness.config.schema import HarnessConfig
from harness.engine.builder import build_engine
from tests.unit.sinks import RecordingSink, wait_for

VOCAB = 128
EOS = 2


@pytest.fixture(scope="module")
def engine_cfg(tmp_path_factory) -> HarnessConfig:
    torch.manual_seed(0)
    hf = HFLlamaForCausalLM(
        HFLlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=EOS, initializer_range=0.2,
        )
    ).eval()  # fmt: skip
    root = tmp_path_factory.mktemp("dp")
    hf.save_pretrained(root / "hf")
    cfg = HarnessConfig()
    cfg.benchmark.name = "tiny"
    cfg.benchmark.model_path = str(root / "hf")
    cfg.system.name = "test"
    cfg.engine.backend = "torch"
    cfg.engine.engine_dir = str(root / "engine")
    cfg.engine.num_kv_blocks = 64
    cfg.engine.block_size = 4
    cfg.engine.max_num_batched_tokens = 16
    cfg.engine.num_threads = 1
    build_engine(cfg, root / "engine")
    return cfg


def requests(n: int) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(7)
    return [
        GenerationRequest(
            request_id=100 + i,
            prompt_token_ids=torch.randint(3, VOCAB, (3 + i % 5,), generator=g).tolist(),
            max_new_tokens=6,
            eos_token_id=EOS,
        )
        for i in range(n)
    ]


def run(backend, reqs: list[GenerationRequest]) -> RecordingSink:
    sink = RecordingSink()
    backend.start(sink)
    backend.submit(reqs[:3])
    backend.submit(reqs[3:])
    backend.stop()
    return sink


def test_two_cpu_copies_match_one_and_spread(engine_cfg):
    from dataclasses import replace

    reqs = requests(8)
    single = run(TorchBackend.from_config(engine_cfg), reqs)
    dp_cfg = replace(engine_cfg, engine=replace(engine_cfg.engine, data_parallelism=2))
    dp = make_backend(dp_cfg)
    assert isinstance(dp, DataParallelBackend) and len(dp.instances) == 2
    sink = run(dp, reqs)
    assert sink.num_finished_events == len(reqs)
    assert sink.finished == single.finished
    assert sink.first == single.first
    # Exact counts depend on how fast the first requests finish; both copies must get work.
    assert sum(dp.num_submitted) == len(reqs) and min(dp.num_submitted) >= 2
    assert [inst.num_finished for inst in dp.instances] == dp.num_submitted
    assert dp.num_outstanding == [0, 0]


class FakeBackend:
    """Finishes requests only when told to; can fail on stop."""

    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sink = None
        self.got: list[int] = []
        self.stopped = False

    def start(self, sink) -> None:  # noqa: ANN001
        self.sink = sink

    def submit(self, requests) -> None:  # noqa: ANN001
        self.got += [r.request_id for r in requests]

    def flush(self) -> None:
        pass

    def finish(self, request_id: int) -> None:
        self.sink.on_first_token(request_id, 5)
        self.sink.on_finished(request_id, [5])

    def stop(self) -> None:
        self.stopped = True
        if self.fail:
            raise BackendError("worker died: CUDA out of memory")


def req(i: int) -> GenerationRequest:
    return GenerationRequest(request_id=i, prompt_token_ids=[3], max_new_tokens=1)


def test_least_outstanding_placement():
    a, b = FakeBackend(), FakeBackend()
    dp = DataParallelBackend([a, b])
    sink = RecordingSink()
    dp.start(sink)
    dp.submit([req(0), req(1), req(2), req(3)])
    assert a.got == [0, 2] and b.got == [1, 3]
    for i in a.got:  # instance 0 drains: the next requests all go there
        a.finish(i)
    dp.submit([req(4), req(5)])
    assert a.got == [0, 2, 4, 5] and b.got == [1, 3]
    dp.submit([req(6)])  # 2 vs 2 outstanding: the tie goes to the index after the last pick
    assert b.got == [1, 3, 6]
    assert dp.num_outstanding == [2, 3]


def test_stop_stops_every_instance_and_reports_the_failed_one():
    a, b, c = FakeBackend(), FakeBackend(fail=True), FakeBackend()
    dp = DataParallelBackend([a, b, c])
    dp.start(RecordingSink())
    with pytest.raises(BackendError, match=r"1 of 3 .*instance 1: worker died: CUDA out of memory"):
        dp.stop()
    assert a.stopped and b.stopped and c.stopped


def test_factory_gets_one_config_per_instance(engine_cfg):
    from dataclasses import replace

    seen = []

    def factory(cfg, engine_dir):  # noqa: ANN001, ANN202
        seen.append((cfg.engine.device, cfg.engine.data_parallelism))
        return FakeBackend()

    cfg = replace(engine_cfg, engine=replace(engine_cfg.engine, data_parallelism=3))
    dp = DataParallelBackend.from_config(cfg, None, factory=factory)
    assert len(dp.instances) == 3 and seen == [("cpu", 1)] * 3


def test_tp2_x_dp2_on_cpu_gives_one_copys_tokens(engine_cfg):
    """Two tensor-parallel copies (gloo), each in a process of its own (process_backend.py)."""
    from dataclasses import replace

    from harness.backends.process_backend import ProcessBackend

    reqs = requests(6)
    single = run(TorchBackend.from_config(engine_cfg), reqs)
    e = replace(engine_cfg.engine, data_parallelism=2, tensor_parallelism=2)
    dp = make_backend(replace(engine_cfg, engine=e))
    assert all(isinstance(inst, ProcessBackend) for inst in dp.instances)
    sink = run(dp, reqs)
    assert sink.finished == single.finished and sink.first == single.first
    assert min(dp.num_submitted) >= 2
    assert not any(inst._proc.is_alive() for inst in dp.instances)


def test_process_backend_load_error_names_the_copy(engine_cfg, tmp_path):
    from harness.backends.process_backend import ProcessBackend

    backend = ProcessBackend.from_config(engine_cfg, tmp_path / "no-engine")
    with pytest.raises(BackendError, match=r"copy on cpu failed to load: .*no-engine"):
        backend.start(RecordingSink())
    assert not backend._proc.is_alive()


def test_process_backend_notices_a_copy_that_dies(engine_cfg):
    import os
    import signal

    from harness.backends.process_backend import ProcessBackend

    backend = ProcessBackend.from_config(engine_cfg)
    sink = RecordingSink()
    backend.start(sink)
    os.kill(backend._proc.pid, signal.SIGKILL)
    assert wait_for(sink.failures) == ["copy on cpu: process exited with code -9"]  # the SUT
    with pytest.raises(BackendError, match="copy on cpu failed: process exited with code -9"):
        backend.submit(requests(1))
    with pytest.raises(BackendError, match="exited with code -9"):
        backend.stop()


def test_gpu_and_tp_copies_get_processes_of_their_own(engine_cfg, monkeypatch):
    from dataclasses import replace

    from harness.backends import data_parallel
    from harness.backends.process_backend import ProcessBackend

    spawned = []

    def spawn(cls, cfg, engine_dir):  # noqa: ANN001, ANN202
        spawned.append(cfg.engine)
        return "proc"

    monkeypatch.setattr(ProcessBackend, "from_config", classmethod(spawn))
    for device, tp in (("cuda:3", 1), ("cpu", 2)):
        cfg = replace(engine_cfg, engine=replace(engine_cfg.engine, device=device,
                                                 tensor_parallelism=tp))  # fmt: skip
        assert data_parallel._default_factory(cfg, None) == "proc"
    assert [(e.device, e.tensor_parallelism) for e in spawned] == [("cuda:3", 1), ("cpu", 2)]
    cpu = data_parallel._default_factory(engine_cfg, None)  # CPU, no TP: this process
    assert isinstance(cpu, TorchBackend)
