"""`python -m harness bench --compare`: entries with their own flags become their own configs."""

from __future__ import annotations

import numpy as np
import pytest

from harness.bench import _configs, _parse


def test_compare_entries_carry_their_own_flags():
    a, extra = _parse(["--compare=hf,torch,torch:--cpu_gemm=mkl:--max_num_seqs=8",
                       "--sample_limit=4", "--system_name=cpu-default"])  # fmt: skip
    runs = _configs(a, extra, "Offline")
    assert [(c.engine.backend, flags) for c, flags in runs] == [
        ("hf", []), ("torch", []), ("torch", ["--cpu_gemm=mkl", "--max_num_seqs=8"]),
    ]  # fmt: skip
    assert [c.engine.cpu_gemm for c, _ in runs] == ["onednn", "onednn", "mkl"]
    assert runs[2][0].engine.max_num_seqs == 8 and runs[1][0].engine.max_num_seqs != 8
    assert all(c.run.sample_limit == 4 for c, _ in runs)  # shared flags reach every entry


def test_repeated_entries_get_their_own_log_folders(tmp_path):
    from harness.bench import new_run_dir

    label = "smollm2-135m Offline torch Dense --cpu_gemm=mkl"
    first = new_run_dir(tmp_path, label)
    assert first.name == "smollm2-135m-Offline-torch-Dense---cpu_gemm=mkl"
    first.mkdir()
    second = new_run_dir(tmp_path, label)
    assert second.name == first.name + "-run2" and not second.exists()


def test_a_bad_entry_flag_stops_the_bench_before_any_log(tmp_path):
    import subprocess
    import sys

    log_dir = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "bench", "--compare=hf,torch:--nonsense=1",
         f"--log_dir={log_dir}", "--system_name=cpu-default"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "--nonsense" in proc.stderr + proc.stdout
    assert not log_dir.exists()  # no empty timestamped folder left behind


def test_the_printed_account_says_tokens_a_step(tmp_path, capsys):
    """The engine's closing line (an H100 FP8 run's, docs/benchmarks.md) as bench prints it."""
    from harness.bench import BenchResult, _print_result, parse_engine_line

    line = (
        "engine: 585865 tokens in 4755 steps over 274.0 s; steady state (10-90% of tokens) "
        "2569.9 tokens/s; 6 preemptions; decode-only steps 4061 (200.7 s), steps with prompt "
        "tokens 694 (73.4 s); per step: queue 21.39 ms, wait for tokens 35.84 ms, apply 0.26 ms "
        "(async scheduling); GPU memory at the end: 1.63 GiB free of 79.18 GiB"
    )
    engine = parse_engine_line(line)
    engine["decode_steps_by_sequences"] = "1-16 sequences: 512 steps, 14.2 s, 4,100 tokens"
    engine["gpu_time"] = "decode-only steps 150.2 of 200.7 s, steps with prompt tokens 60.1 of 73.4"
    engine["time_by_token_share"] = "0%-10% 60.4 s (1,461 tok/s), 10%-90% 182.8 s (3,861 tok/s)"
    _print_result(BenchResult("llama2-70b Offline", tmp_path, 2137.6, True, 0, 67072, [engine]))
    out = capsys.readouterr().out
    assert "engine time: 123 tokens a step on average; 4061 decode-only steps in 200.7 s" in out
    assert "694 steps with prompt tokens in 73.4 s (105.8 ms each)" in out
    assert "decode-only steps by sequences: 1-16 sequences: 512 steps, 14.2 s" in out
    assert "GPU time (forward to sampled tokens): decode-only steps 150.2 of 200.7 s" in out
    assert "time by share of its tokens: 0%-10% 60.4 s (1,461 tok/s), 10%-90%" in out
    assert "6 preemptions; 1.63 GiB of GPU memory never used" in out  # an older line: at the end
    # a line with the lowest free memory (the graphs' capture included) reports that instead
    low = parse_engine_line(line + ", 0.12 GiB at the lowest (graph capture included: ...)")
    _print_result(BenchResult("llama2-70b Offline", tmp_path, 2137.6, True, 0, 67072, [low]))
    assert "6 preemptions; 0.12 GiB of GPU memory never used" in capsys.readouterr().out


def test_server_is_reported_as_a_share_of_the_same_runs_offline(tmp_path, monkeypatch, capsys):
    """bench --scenarios=Offline,Server prints Server's tokens/s against the Offline figure it
    has just measured for the same engine (the runs themselves replaced by fixed results)."""
    import harness.bench as bench
    from harness.bench import BenchResult

    figures = {"Offline": 2259.0, "Server": 1909.3}

    def fake_run(cfg, stamp, command, flags=()):  # noqa: ANN001, ANN202
        scenario = cfg.scenario.scenario
        return BenchResult(f"x {scenario}", tmp_path, figures[scenario], True, 0)

    monkeypatch.setattr(bench, "bench_one", fake_run)
    argv = ["--scenarios=Offline,Server", f"--log_dir={tmp_path}", "--system_name=cpu-default"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "[bench] x Server: 1,909.3 tokens/s = 84.5% of this bench's Offline 2,259.0" in out
    assert bench.main(["--scenarios=Server", *argv[1:]]) == 0  # no Offline: no share
    assert "of this bench's Offline" not in capsys.readouterr().out


def test_a_server_run_says_the_load_offered_against_the_engines_rate(tmp_path, capsys):
    """The twentieth session's H100 Server run (dummy weights): 7.03 queries/s scheduled at
    294 tokens each is about 2,067 tokens/s; the engine's 1,994.5 is 96.5% of it."""
    from harness.bench import BenchResult, _print_result, load_line

    line = load_line(7.03009, 6.83404, 294.0, 1994.5)
    assert line == (
        "load: LoadGen scheduled 7.03 queries/s, completed 6.83; about 2,067 tokens/s offered "
        "at the mean output of 294, engine steady state 1,994.5 = 96.5%"
    )
    real = load_line(2.0, 1.9)  # real weights: EOS sets the lengths, no token figure
    assert real == "load: LoadGen scheduled 2.00 queries/s, completed 1.90"
    # the thirtieth session's H100 Server at 9.2 qps: 2,807 queries, the last done 33.7 s late
    late = load_line(9.35315, 8.40794, queries=2807)
    assert late.endswith("the last query issued was scheduled at 300.0 s and done at 333.7 s, "
                         "the completed rates' divisor")  # fmt: skip
    _print_result(BenchResult("x Server", tmp_path, 1979.2, False, 1, load=line))
    assert f"[bench]   {line}" in capsys.readouterr().out


def test_a_dataset_longer_than_max_model_len_stops_bench_before_the_engine_build(
    tmp_path, monkeypatch
):
    import harness.cli
    from harness.bench import ensure_inputs
    from harness.cli import UserError
    from harness.config.schema import HarnessConfig

    for name, values in (("input_ids_padded", np.zeros((2, 12))), ("input_lens", [5, 12]),
                         ("output_lens", [3, 3])):  # fmt: skip
        np.save(tmp_path / f"{name}.npy", np.asarray(values, dtype=np.int32))
    cfg = HarnessConfig()
    cfg.benchmark.preprocessed_dir, cfg.benchmark.max_new_tokens = str(tmp_path), 30
    cfg.engine.backend, cfg.engine.max_model_len = "torch", 40
    built = []
    monkeypatch.setattr(harness.cli, "generate_engine", lambda c, force: built.append(c))
    with pytest.raises(UserError, match="max_model_len = 40: .* = 42; set --max_model_len=42"):
        ensure_inputs(cfg)
    assert not built  # refused before any engine work
    cfg.engine.max_model_len = 42
    ensure_inputs(cfg)
    assert built == [cfg]
