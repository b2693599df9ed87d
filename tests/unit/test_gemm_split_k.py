"""How the FP8 GEMM splits K (kernels/fp8_gemm.auto_split_k): plain Python, no GPU."""

from __future__ import annotations

from harness.engine.kernels.fp8_gemm import auto_split_k

H100_SMS = 132


def test_a_half_empty_wave_is_split() -> None:
    # 70B o at 128 rows: 64 tiles of 128 x 128 on 132 SMs; two K halves fill 128 of them.
    assert auto_split_k(64, 64, H100_SMS) == 2


def test_full_waves_are_not_split() -> None:
    assert auto_split_k(132, 64, H100_SMS) == 1
    assert auto_split_k(448, 64, H100_SMS) == 1  # 3.4 waves: splitting gains under 15%


def test_splits_keep_two_k_steps_each() -> None:
    assert auto_split_k(1, 64, H100_SMS) == 8  # at most 8
    assert auto_split_k(1, 6, H100_SMS) == 3
    assert auto_split_k(1, 3, H100_SMS) == 1
