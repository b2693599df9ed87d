"""StepLog: the steady-state rate between the 10% and 90% marks of all generated tokens."""

from __future__ import annotations

from harness.engine.stats import StepLog


def test_rate_between_ignores_a_slow_ramp_and_drain():
    log = StepLog()
    t = 0.0
    for _ in range(10):  # ramp: 1 token per second
        t += 1.0
        log.record(1, 0.0, now=t)
    for _ in range(80):  # full: 100 tokens per second
        t += 1.0
        log.record(100, 0.0, now=t)
    for _ in range(10):  # drain
        t += 1.0
        log.record(1, 0.0, now=t)
    assert log.num_tokens == 10 + 8000 + 10
    overall = log.num_tokens / (log.times[-1] - log.times[0])
    assert overall < 82
    assert 99.0 <= log.rate_between() <= 100.0


def test_rate_between_is_zero_without_enough_steps():
    log = StepLog()
    assert log.rate_between() == 0.0
    log.record(5, 0.0, now=1.0)
    assert log.rate_between() == 0.0


def test_time_split_counts_steps_with_prompt_tokens_apart():
    log = StepLog()
    log.record(4, 0.3, now=0.3, prefill=True)  # the first step counts from its own start
    log.record(4, 0.2, now=0.5, prefill=True)
    log.record(4, 0.1, now=0.6)
    log.record(4, 0.05, now=1.0)  # an idle gap before this step is not step time
    decode_n, decode_s, prefill_n, prefill_s = log.time_split()
    assert (decode_n, prefill_n) == (2, 2)
    assert abs(decode_s - 0.15) < 1e-9 and abs(prefill_s - 0.5) < 1e-9
    assert abs(log.span - 1.0) < 1e-9


def test_engine_splits_its_loop_time_into_queue_wait_apply():
    import time

    from harness.engine.llm_engine import EngineArgs, LLMEngine
    from harness.engine.model.llama import LlamaConfig
    from harness.engine.request import SamplingParams

    config = LlamaConfig(64, 32, 48, 2, 4, 2, max_position_embeddings=64)
    args = EngineArgs(model_config=config, weights="dummy", num_kv_blocks=40, max_num_seqs=4)
    engine = LLMEngine.from_args(args)
    start = time.perf_counter()
    engine.generate([[5, 6, 7]] * 3, SamplingParams(max_new_tokens=5))
    wall = time.perf_counter() - start
    log = engine.step_log
    assert log.queue_s > 0 and log.wait_s > 0 and log.apply_s > 0
    assert log.queue_s + log.wait_s + log.apply_s <= wall
    assert log.loop_split_ms()[0] == log.queue_s * 1e3 / len(log.times)


def test_decode_steps_grouped_by_their_sequences():
    log = StepLog()
    log.record(3, 0.5, now=0.5, prefill=True, rows=40)  # prompt steps are not grouped
    for rows in (200, 180, 129):  # 129-256
        log.record(rows, 0.05, rows=rows)
    log.record(16, 0.01, rows=16)  # 1-16, with 16 included
    log.record(17, 0.02, rows=17)  # 17-32
    log.record(30, 0.02, rows=32)  # two of the 32 sequences had already finished (async)
    log.record(1, 0.01, rows=1)
    groups = log.decode_steps_by_sequences()
    assert [(lo, hi, n, t) for lo, hi, n, _, t, _ in groups] == [
        (1, 16, 2, 17), (17, 32, 2, 47), (129, 256, 3, 509)
    ]  # fmt: skip
    assert abs(groups[2][3] - 0.15) < 1e-9
    assert sum(n for _, _, n, _, _, _ in groups) == log.time_split()[0]
    assert log.format_decode_steps_by_sequences().startswith(
        "1-16 sequences: 2 steps, 0.0 s, 17 tokens; 17-32 sequences: 2 steps"
    )  # no GPU time recorded (CPU): none printed
    assert StepLog().format_decode_steps_by_sequences() == ""


def test_gpu_seconds_are_summed_by_kind_and_by_group():
    """On CUDA each step also records the device's seconds (ModelRunner.collect's events)."""
    log = StepLog()
    log.record(0, 0.100, prefill=True, rows=3, gpu_seconds=0.060)
    log.record(200, 0.050, rows=200, gpu_seconds=0.040)
    log.record(180, 0.050, rows=180, gpu_seconds=0.038)
    log.record(10, 0.030, rows=10, gpu_seconds=0.028)
    decode_gpu, prompt_gpu = log.gpu_split()
    assert abs(decode_gpu - 0.106) < 1e-6 and abs(prompt_gpu - 0.060) < 1e-6
    assert abs(log.decode_steps_by_sequences()[1][5] - 0.078) < 1e-6  # 129-256
    assert log.format_decode_steps_by_sequences() == (
        "1-16 sequences: 1 steps, 0.0 s (GPU 0.0 s), 10 tokens; "
        "129-256 sequences: 2 steps, 0.1 s (GPU 0.1 s), 380 tokens"
    )


class SlowLaunches:
    """A stand-in runner whose launch costs host time: 40 ms for a step with prompt tokens
    (as an eager 70B step's launches), 1 ms for a decode step; the device costs nothing."""

    def launch(self, sched):  # noqa: ANN001, ANN201
        import time

        from harness.engine.outputs import ModelRunnerOutput

        time.sleep(0.04 if sched.num_batched_tokens > len(sched.scheduled) else 0.001)
        return ModelRunnerOutput({s.request_id: 5 for s in sched.scheduled if s.needs_sample})

    def collect(self, step):  # noqa: ANN001, ANN201
        return step


def test_async_steps_keep_their_own_launch_time():
    """Async, the wall time between two steps' ends holds the next step's launch; the log
    gives each step its own: the decode step before a prompt step stays cheap."""
    from harness.engine.kv_cache import BlockManager
    from harness.engine.llm_engine import LLMEngine
    from harness.engine.request import SamplingParams
    from harness.engine.scheduler import Scheduler, SchedulerConfig

    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4), BlockManager(64, 16))
    engine = LLMEngine(scheduler, SlowLaunches(), async_scheduling=True)
    sampling = SamplingParams(max_new_tokens=6, ignore_eos=True)
    engine.add_request(0, [7] * 20, sampling)
    for _ in range(4):  # the prompt step, then decode steps
        engine.step()
    engine.add_request(1, [8] * 20, sampling)  # a prompt step right after a decode step
    while engine.has_unfinished():
        engine.step()
    log = engine.step_log
    kinds = list(log.with_prefill)
    assert kinds.count(1) == 2 and 0 in kinds[kinds.index(1) + 1 :]
    for prefill, seconds in zip(kinds, log.durations, strict=True):
        assert (seconds >= 0.04) if prefill else (seconds < 0.02), (kinds, list(log.durations))


def test_time_by_token_share_splits_a_run_into_its_ramp_middle_and_drain():
    from harness.engine.stats import time_by_token_share

    ends = [0.01 * (i + 1) for i in range(100)]  # one token every 10 ms
    tokens = list(range(1, 101))
    assert time_by_token_share(ends, tokens) == (
        "0%-10% 0.1 s (100 tok/s), 10%-90% 0.8 s (100 tok/s), 90%-99% 0.1 s (100 tok/s), "
        "99%-100% 0.0 s (100 tok/s)"
    )
    ends[-1] += 1.0  # the last token alone takes a second more
    assert time_by_token_share(ends, tokens).endswith("99%-100% 1.0 s (1 tok/s)")
    assert time_by_token_share([], []) == ""


def test_the_step_log_counts_from_its_first_steps_start():
    log = StepLog()
    for i in range(10):  # steps of 2 s ending at 102, 104, ...: the run starts at 100
        log.record(10, 2.0, now=100.0 + 2 * (i + 1))
    assert log.format_time_by_token_share().startswith("0%-10% 2.0 s (5 tok/s)")
