"""server_replay: a Server run's arrivals through the engine's scheduler, timed by a model."""

from __future__ import annotations

import numpy as np
import pytest

from harness.engine.scheduler import SchedulerConfig
from harness.report.schedule_replay import GraphTimes, measured_step_ms
from harness.report.server_replay import poisson_arrivals, replay_server

TEN_MS = measured_step_ms(GraphTimes({64: 10.0}, {64: 10.0}), 0.0, 1.0)  # every step 10 ms


def test_arrivals_start_at_zero_stay_in_the_window_and_come_at_the_rate():
    t = poisson_arrivals(qps=20.0, seconds=500.0, seed=1)
    assert t[0] == 0.0 and t[-1] < 500.0 and np.all(np.diff(t) > 0)
    assert len(t) == pytest.approx(20 * 500, rel=0.05)


def test_first_tokens_and_tokens_per_output_come_from_step_ends():
    # request 0 alone: prompt step, then 2 decode steps; request 1 arrives while the engine is
    # idle; request 2 arrives mid-step and waits for that step to end
    arrivals = np.array([0.0, 1.0, 1.005])
    stats = replay_server([5, 5, 5], [3, 1, 2], arrivals, 1024, SchedulerConfig(), TEN_MS)
    assert stats.ttft_s == pytest.approx([0.010, 0.010, 0.015])
    assert stats.tpot_s == pytest.approx([0.010, 0.010])  # requests 0 and 2 (1 has one token)
    assert stats.output_tokens == 6 and stats.end_s == pytest.approx(1.030)
    assert stats.final_done_s == pytest.approx(1.030)  # request 2, the last to arrive
    # a prompt step for each request; decode-only: request 0's two, then request 2's one
    assert (stats.prompt_steps, stats.decode_steps) == (3, 3)
    assert stats.prompt_s == pytest.approx(0.030) and stats.decode_s == pytest.approx(0.030)
    # decode-only steps: contexts 6 and 7 (request 0 alone), then 6 (request 2 alone)
    assert stats.decode_longest_keys == 19 and stats.key_spread() == pytest.approx(1.0)


def test_with_async_scheduling_a_busy_engine_sees_an_arrival_one_step_later():
    """Request 1 arrives at 15 ms, during request 0's first decode step (10-20 ms). Without
    async scheduling the 20-30 ms step takes it; with it, that step was scheduled when the
    10-20 ms one began, so request 1's prompt runs 30-40 ms. An idle engine schedules at once."""
    arrivals = np.array([0.0, 0.015])
    sync = replay_server([5, 5], [3, 2], arrivals, 1024, SchedulerConfig(), TEN_MS)
    pipelined = replay_server([5, 5], [3, 2], arrivals, 1024, SchedulerConfig(), TEN_MS,
                              async_scheduling=True)  # fmt: skip
    assert sync.ttft_s == pytest.approx([0.010, 0.015])
    assert pipelined.ttft_s == pytest.approx([0.010, 0.025])


def test_a_decode_step_of_unequal_contexts_waits_on_its_longest():
    # both prompts run in one step, then both requests decode together: unequal contexts
    arrivals = np.array([0.0, 0.0])
    stats = replay_server([20, 4], [3, 3], arrivals, 1024, SchedulerConfig(), TEN_MS)
    assert stats.decode_steps == 2  # both prompts in one step, then two decode steps
    # contexts (21, 5) then (22, 6): longest 43 over mean 13 + 14
    assert stats.key_spread() == pytest.approx(43 / 27)


def test_completed_tokens_per_second_divide_by_the_last_arrivals_end_as_loadgen_does():
    # request 0 (arrives first) has the longest answer and finishes after request 1
    arrivals = np.array([0.0, 0.001])
    stats = replay_server([5, 5], [20, 1], arrivals, 1024, SchedulerConfig(), TEN_MS)
    assert stats.final_done_s == pytest.approx(0.020) and stats.end_s == pytest.approx(0.200)
    assert "1,050 tok/s completed (the last query to arrive done at 0 s" in stats.line()


def test_slowdown_scales_every_step():
    arrivals = np.array([0.0])
    stats = replay_server([5], [3], arrivals, 1024, SchedulerConfig(), TEN_MS, slowdown=2.0)
    assert stats.ttft_s == pytest.approx([0.020]) and stats.end_s == pytest.approx(0.060)


def test_a_bad_rate_is_a_one_line_error_naming_it(capsys):
    from harness.report.server_replay import main

    argv = ["--config=llama2-70b-synthetic:Server:H100-SXM-80GBx1", "--kv_tokens=74864",
            "--graph_log=x.log", "--qps=0"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(argv)
    assert "--qps=0.0: use a value above 0" in capsys.readouterr().err


def test_the_summary_line_gives_the_percentiles_and_one_token_answers_have_no_tpot():
    from harness.report.server_replay import ServerStats

    stats = ServerStats(ttft_s=[0.1] * 99 + [2.0], tpot_s=[0.05] * 4, output_tokens=100,
                        end_s=12, final_done_s=10)  # fmt: skip
    assert stats.line().startswith(
        "p99 TTFT 119 ms (p99.9 1,812: LoadGen's early stopping "
        "counts the tail), p99 TPOT 50.0 ms (mean 50.0), 10 tok/s"
    )
    assert "no TPOT (1-token answers)" in ServerStats(ttft_s=[0.1], final_done_s=1).line()


def test_step_sizes_compare_in_one_run_and_a_bad_one_is_named(tmp_path, monkeypatch, capsys):
    import harness.report.server_replay as server_replay

    for name, values in (("input_ids_padded", [[1, 2], [1, 2]]), ("input_lens", [2, 2]),
                         ("output_lens", [3, 4])):  # fmt: skip
        np.save(tmp_path / f"{name}.npy", np.array(values, dtype=np.int32))
    knobs = server_replay.config_knobs
    monkeypatch.setattr(
        server_replay, "config_knobs", lambda p, v: {**knobs(p, v), "preprocessed_dir": tmp_path}
    )
    log = tmp_path / "session.log"
    log.write_text(
        "CUDA graphs: decode buckets none dropped (a larger bucket replays faster); replays: "
        "1: 9.00 ms, 8: 9.50 ms\nCUDA graphs: mixed buckets none dropped (a larger bucket "
        "replays faster); replays: 32: 20.00 ms, 64: 30.00 ms\n"
    )
    argv = ["--config=llama2-70b-synthetic:Server:H100-SXM-80GBx1", "--kv_tokens=1024",
            f"--graph_log={log}", "--qps=1", "--seconds=5"]  # fmt: skip
    server_replay.main([*argv, "--max_num_batched_tokens=32", "--max_num_batched_tokens=64"])
    lines = [s for s in capsys.readouterr().out.splitlines() if "queries:" in s]
    assert [("32 tokens a step" in s, "64 tokens a step" in s) for s in lines] == [
        (True, False),
        (False, True),
    ]
    server_replay.main([*argv, "--seed=1", "--seed=2"])  # two arrival draws, each named
    lines = [s for s in capsys.readouterr().out.splitlines() if "queries:" in s]
    assert len(lines) == 2 and "seed 1," in lines[0] and "seed 2," in lines[1]
    with pytest.raises(SystemExit):
        server_replay.main([*argv, "--max_num_batched_tokens=0"])
    assert "max_num_batched_tokens=0" in capsys.readouterr().err
