"""fp8_gemm_sweep's --config spelling (the sweep itself needs a GPU: tests/gpu, or the device)."""

from __future__ import annotations

import argparse

import pytest

from harness.engine.kernels.fp8_gemm import GemmConfig
from harness.report.fp8_gemm_sweep import parse_config


def test_a_config_is_spelled_as_its_fields():
    assert parse_config("128,64,128,4,3,swap") == GemmConfig(128, 64, 128, 4, 3, swap=True)
    assert parse_config("256,128,128,8,4,0") == GemmConfig(256, 128, 128, 8, 4, split_k=0)


@pytest.mark.parametrize("text", ["128,64,128,4", "128,64,128,4,3,swapped", "a,64,128,4,3"])
def test_a_misspelled_config_names_the_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match="BLOCK_M,BLOCK_N,BLOCK_K,warps,stages"):
        parse_config(text)
