"""schedule_replay: the engine's scheduler replayed on lengths alone, and its time model."""

from __future__ import annotations

import pytest

from harness.engine.scheduler import SchedulerConfig
from harness.report.roofline import GpuPeaks, Workload
from harness.report.schedule_replay import ReplayStats, modeled_seconds, replay


def test_a_pool_that_holds_everything_computes_each_prompt_once():
    ins, outs = [5, 9, 3], [4, 1, 6]
    stats = replay(ins, outs, kv_tokens=1024, config=SchedulerConfig(max_num_seqs=8))
    assert stats.preemptions == 0
    assert stats.prompt_tokens == sum(ins) and stats.output_tokens == sum(outs)
    # all three prompts in step 1 (each samples its first token), then one decode a step
    assert stats.steps == max(outs) and stats.decode_steps == max(outs) - 1
    assert stats.decode_rows == sum(outs) - len(outs)
    # step 1 attends to the prompts; then each decode to its whole context so far
    decode_context = sum(n + k for n, o in zip(ins, outs, strict=True) for k in range(1, o))
    assert stats.context_tokens == sum(ins) + decode_context


def test_a_tight_pool_preempts_and_recomputes_and_headroom_avoids_it():
    ins, outs = [16] * 4, [64] * 4  # 80 tokens = 5 blocks each; the pool has 8 blocks
    greedy = replay(ins, outs, kv_tokens=128, config=SchedulerConfig(max_num_seqs=4))
    assert greedy.preemptions > 0 and greedy.prompt_tokens > sum(ins)  # recomputed prompts
    assert greedy.output_tokens == sum(outs)  # every sample still finishes
    config = SchedulerConfig(max_num_seqs=4, admission_headroom_tokens=64)
    careful = replay(ins, outs, kv_tokens=128, config=config)
    assert careful.preemptions == 0 and careful.prompt_tokens == sum(ins)
    assert careful.output_tokens == sum(outs)


def test_the_time_model_adds_bytes_at_the_copy_bandwidth_and_prompt_flops_at_the_peak():
    # one layer, hidden 2, intermediate 4, 1 head of 2, vocab 10: qkv 12, o 4, MLP 24 params
    w = Workload(1, 2, 4, 1, 1, 2, 10, 2.0, 2.0, 0.0, 0.0, 1.0)
    assert w.linear_params == 40 and w.kv_bytes_per_token == 8
    peaks = GpuPeaks("test", copy_tbps=1e-12, bf16_tflops=1e-12, fp8_tflops=2e-12)  # 1 B/s
    stats = ReplayStats(steps=3, prompt_tokens=5, context_tokens=7)
    moved = 3 * (40 * 2 + 2 * 10 * 2) + 7 * 8  # weights and head a step, KV a context token
    assert modeled_seconds(stats, w, peaks, fp8_gemm=False) == pytest.approx(moved + 5 * 80)
    assert modeled_seconds(stats, w, peaks, fp8_gemm=True) == pytest.approx(moved + 5 * 40)


def test_a_pool_too_small_for_a_sample_is_a_one_line_error(tmp_path, capsys):
    import numpy as np

    from harness.report.schedule_replay import main

    for name, values in (("input_ids_padded", [[1, 2], [1, 2]]), ("input_lens", [2, 2]),
                         ("output_lens", [3, 40])):  # fmt: skip
        np.save(tmp_path / f"{name}.npy", np.array(values, dtype=np.int32))
    with pytest.raises(SystemExit):
        main([f"--preprocessed_dir={tmp_path}", "--queries=2", "--kv_tokens=32"])
    err = capsys.readouterr().err
    assert "--kv_tokens=32 is too small" in err and "needs 3 KV blocks, the pool has 2" in err
    # the same 32 tokens in blocks of 8: the 42-token sample needs 6 of its 4 blocks
    with pytest.raises(SystemExit):
        main([f"--preprocessed_dir={tmp_path}", "--queries=2", "--kv_tokens=32", "--block_size=8"])
    assert "needs 6 KV blocks, the pool has 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([f"--preprocessed_dir={tmp_path}", "--kv_tokens=32", "--block_size=0"])
    assert "--block_size=0: use 1 or more" in capsys.readouterr().err


def test_mixed_graph_steps_hold_few_fresh_prompts_within_the_graph_rows():
    ins, outs = [5] * 6, [3] * 6  # 4 prompts in step 1 (20 rows), the other 2 in step 4
    config = SchedulerConfig(max_num_seqs=4)
    assert replay(ins, outs, 1024, config, graph_tokens=20).graph_prompt_steps == 2
    assert replay(ins, outs, 1024, config, graph_tokens=19).graph_prompt_steps == 1
    assert replay(ins, outs, 1024, config).graph_prompt_steps == 0  # no graphs
    nine = replay([5] * 9, [3] * 9, 1024, SchedulerConfig(max_num_seqs=9), graph_tokens=64)
    assert nine.graph_prompt_steps == 0  # 9 prompts in one step: more than MAX_PROMPTS
    # a 40-token prompt in chunks of 16: the two chunks over cached context fit graphs too
    chunked = SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=16)
    stats = replay([40], [2], 1024, chunked, graph_tokens=64)
    assert stats.steps - stats.decode_steps == 3 and stats.graph_prompt_steps == 3


def test_more_queries_than_samples_take_each_sample_once_per_round():
    from harness.report.schedule_replay import pick_samples

    few = pick_samples(10, 7, seed=0)
    assert len(set(few.tolist())) == 7 and few.max() < 10
    many = pick_samples(10, 25, seed=0)
    assert len(many) == 25
    for start in (0, 10):  # two whole rounds, then 5 of a third
        assert sorted(many[start : start + 10].tolist()) == list(range(10))
    assert len(set(many[20:].tolist())) == 5


def test_async_scheduling_runs_the_same_tokens_one_step_behind():
    ins, outs = [16] * 4, [64] * 4  # the tight pool above: preemption under both modes
    config = SchedulerConfig(max_num_seqs=4)
    sync = replay(ins, outs, kv_tokens=128, config=config)
    late = replay(ins, outs, kv_tokens=128, config=config, async_scheduling=True)
    assert late.output_tokens == sync.output_tokens == sum(outs)
    assert late.decode_rows == sync.decode_rows
    # a finished request frees its blocks a step later, so the async run takes one step more
    assert late.steps == sync.steps + 1 and late.preemptions == sync.preemptions


def test_config_gives_the_runs_own_knobs_and_flags_still_win(tmp_path, capsys):
    import numpy as np

    from harness.report.schedule_replay import knobs_from_config, main

    knobs = knobs_from_config("llama2-7b-synthetic", "Offline", "H100-SXM-80GBx1")
    # the 5,000-query run's knobs, from configs/ and the H100 YAML
    assert knobs["admission"] == "fifo" and knobs["admission_batch"] == 32
    assert knobs["async_scheduling"] is True and knobs["kv_cache_dtype"] == "fp8"
    assert knobs["gpu"] == "H100" and knobs["max_num_seqs"] == [512]
    for name, values in (("input_ids_padded", [[1, 2], [1, 2]]), ("input_lens", [2, 2]),
                         ("output_lens", [3, 4])):  # fmt: skip
        np.save(tmp_path / f"{name}.npy", np.array(values, dtype=np.int32))
    main(["--config=llama2-7b-synthetic:Offline:H100-SXM-80GBx1", "--kv_tokens=1024",
          f"--preprocessed_dir={tmp_path}", "--queries=2",
          "--admission=longest_first"])  # fmt: skip
    out = capsys.readouterr().out
    assert "longest_first admission in groups of 32" in out and "async scheduling on" in out


@pytest.mark.parametrize("config", ["llama2-7b-synthetic:Offline", "nope:Offline:H100-SXM-80GBx1"])
def test_a_bad_config_is_a_one_line_error_naming_it(config, capsys):
    from harness.report.schedule_replay import main

    with pytest.raises(SystemExit):
        main([f"--config={config}", "--kv_tokens=1024"])
    assert f"--config={config}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag,named", [("--max_num_seqs=0", "max_num_seqs=0"), ("--headroom=-1", "=-1"),
                   ("--kv_tokens=0", "--kv_tokens=0"),
                   ("--max_num_seqs=99999", "--max_num_seqs=99999 is over --max_num_batched")],
)  # fmt: skip
def test_a_bad_count_is_a_one_line_error_naming_it(flag, named, tmp_path, capsys):
    import numpy as np

    from harness.report.schedule_replay import main

    for name, values in (("input_ids_padded", [[1, 2]]), ("input_lens", [2]),
                         ("output_lens", [3])):  # fmt: skip
        np.save(tmp_path / f"{name}.npy", np.array(values, dtype=np.int32))
    with pytest.raises(SystemExit) as ex:
        main(["--kv_tokens=1024", flag, f"--preprocessed_dir={tmp_path}", "--queries=1"])
    assert ex.value.code == 2 and named in capsys.readouterr().err


LOG = """\
14:36:04 INFO harness.engine.cuda_graph: CUDA graphs: decode buckets none dropped (a larger bucket replays faster); replays: 1: 9.00 ms, 8: 9.00 ms
14:36:04 INFO harness.engine.cuda_graph: CUDA graphs: decode buckets [48] dropped (a larger bucket replays faster); replays: 1: 26.62 ms, 16: 27.34 ms, 48: 32.18 ms, 64: 31.58 ms
14:36:10 INFO harness.engine.cuda_graph: CUDA graphs: mixed buckets none dropped (a larger bucket replays faster); replays: 32: 30.95 ms, 64: 33.44 ms, 128: 40.00 ms
"""  # noqa: E501 (the engine's lines as it logs them; the second decode line is the run's)


def test_graph_times_come_from_the_last_lines_and_a_step_pads_to_the_fastest_graph(tmp_path):
    from harness.report.schedule_replay import graph_times_from_log

    path = tmp_path / "session.log"
    path.write_text(LOG)
    times = graph_times_from_log(path)
    assert times.decode == {1: 26.62, 16: 27.34, 48: 32.18, 64: 31.58}
    assert times.mixed == {32: 30.95, 64: 33.44, 128: 40.0}
    assert times.step_ms(1, mixed=False) == 26.62
    assert times.step_ms(17, mixed=False) == 31.58  # 48 rows replay slower than 64: padded
    assert times.step_ms(100, mixed=True) == 40.0
    assert times.step_ms(256, mixed=True) == pytest.approx(80.0)  # eager: the largest's per row


def test_a_log_without_mixed_graphs_is_an_error_naming_the_file(tmp_path):
    from harness.report.schedule_replay import graph_times_from_log

    path = tmp_path / "eager.log"
    path.write_text(LOG.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"eager\.log: no 'CUDA graphs: mixed buckets"):
        graph_times_from_log(path)


def test_the_measured_model_sums_graph_and_kv_time_by_kind_of_step():
    from harness.report.schedule_replay import GraphTimes, measured_step_ms

    times = GraphTimes(decode={4: 10.0}, mixed={64: 50.0})
    step_ms = measured_step_ms(times, kv_bytes_per_token=1e9, attention_tbps=1.0)  # 1 ms a token
    ins, outs = [5, 9, 3], [4, 1, 6]
    stats = replay(ins, outs, 1024, SchedulerConfig(max_num_seqs=8), step_ms=step_ms)
    # step 1 holds the three prompts (a mixed step, 17 context tokens); then decode-only steps
    assert stats.prompt_ms == pytest.approx(50.0 + sum(ins))
    decode_steps = stats.steps - 1
    decode_context = stats.context_tokens - sum(ins)
    assert stats.decode_ms == pytest.approx(10.0 * decode_steps + decode_context)
    # the timeline ends at the modeled total and every output token, one entry a step
    assert len(stats.step_ends_s) == len(stats.cumulative_tokens) == stats.steps
    assert stats.cumulative_tokens[-1] == sum(outs)
    assert stats.step_ends_s[-1] * 1e3 == pytest.approx(stats.decode_ms + stats.prompt_ms)


def test_a_continued_chunk_reads_its_keys_per_row_in_a_mixed_graph_and_once_eagerly():
    from harness.engine.outputs import ScheduledRequest, SchedulerOutput
    from harness.report.schedule_replay import step_shape

    def part(rid: int, start: int, n: int) -> ScheduledRequest:
        return ScheduledRequest(rid, [0] * n, start, [0], True, ())

    step = SchedulerOutput([part(0, 5, 1), part(1, 10, 4), part(2, 0, 3)])  # decode, chunk, new
    # graph: the chunk's rows attend to 11, 12, 13, 14 keys; the decode 6; the new prompt 3
    assert step_shape(step, graph_tokens=64) == (8, 6 + 50 + 3, 7, True)
    assert step_shape(step, graph_tokens=4) == (8, 6 + 14 + 3, 7, False)  # over the graph: eager


def test_the_mixed_graph_size_comes_from_the_config_as_the_engine_sizes_it():
    from harness.report.schedule_replay import knobs_from_config, mixed_graph_tokens

    knobs = knobs_from_config("llama2-70b-synthetic", "Offline", "H100-SXM-80GBx1")
    assert knobs["graph_tokens"] == 320  # the H100 YAML's cuda_graph_max_tokens
    assert mixed_graph_tokens(1024, 512) == 512  # no step, so no graph, above the step budget
    assert mixed_graph_tokens(256, 1024) == 256
