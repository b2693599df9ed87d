"""`python -m harness bench --compare`: entries with their own flags become their own configs."""

from __future__ import annotations

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
