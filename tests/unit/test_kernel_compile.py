"""The FP8 GEMM configs and the other Triton kernels compile for Hopper (sm_90) without a GPU:
Triton's compiler and its bundled ptxas (harness/report/kernel_compile_check.py). Skipped
where Triton is not installed (the CPU CI); `pip install triton` runs it on any machine."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")


def test_every_gemm_config_compiles_for_hopper_without_spills():
    from harness.report.kernel_compile_check import (
        check_gemm_configs,
        check_other_kernels,
        spills,
    )

    gemms = check_gemm_configs()
    rows = gemms + check_other_kernels()
    failed = [(label, usage) for label, usage in rows if isinstance(usage, str)]
    assert not failed
    spilled = [label for label, usage in rows if spills(usage)]
    assert not spilled
    for label, usage in gemms:  # MMAs of 64+ rows run wgmma with fp32 promotion
        wide = usage["expect_wgmma"]
        assert usage["wgmma"] == wide and (usage["promote_adds"] > 0) == wide, label
        assert usage["sync_loads_in_k_loop"] == 0, label  # every tile copied ahead
        assert not usage["serialized_wgmma"], label  # ptxas keeps the MMAs in flight
