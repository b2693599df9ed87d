"""The engine's malloc settings: activation-sized tensors come back without page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Tensors of a Llama layer's sizes (SmolLM2 widths), allocated and freed in a layer's order,
# for steps of varying token counts; page faults counted over the later steps only. "0" pins
# glibc's documented defaults (128 KiB mmap and trim thresholds): left alone, glibc moves them
# as blocks are freed, and the same script then made anywhere from 0 to 330k faults a run.
SCRIPT = """
import resource, sys, torch
from harness.engine import host_memory
if sys.argv[1] == "1":
    assert host_memory.keep_freed_memory()
else:
    import ctypes
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    assert mallopt(host_memory.M_MMAP_THRESHOLD, 128 << 10) == 1
    assert mallopt(host_memory.M_TRIM_THRESHOLD, 128 << 10) == 1
def new(*shape):
    return torch.empty(*shape).fill_(1.0)
def layer(n, x):
    h = new(n, 576); qkv = new(n, 960); del h
    o = new(n, 576); del qkv
    x = x + o; del o
    gate_up = new(n, 3072); act = new(n, 1536); del gate_up
    out = new(n, 576); del act
    return x + out
def steps(token_counts):
    for n in token_counts:
        x = new(n, 576)
        for _ in range(30):
            x = layer(n, x)
steps([2048, 2048, 1500, 100, 2048, 900, 2048])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
steps([2048, 1800, 2048, 100, 100, 2048, 1200, 2048])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_activations_are_reused_without_page_faults():
    def faults(keep: str) -> int:
        out = subprocess.run([sys.executable, "-c", SCRIPT, keep], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    assert faults("0") > 100_000  # glibc's defaults, pinned: 2.83M on the dev VM
    assert faults("1") < 10_000  # kept: 0 there


def test_a_run_freezes_its_starting_heap_and_counts_its_full_collections():
    import gc

    from harness.engine.host_memory import GcPauses

    pauses = GcPauses.begin()
    try:
        assert pauses.frozen > 1000  # the modules, at least
        # frozen objects still die by reference count (another thread's, meanwhile): a few may
        # be gone already, none added
        assert 0 <= pauses.frozen - gc.get_freeze_count() < 100
        gc.collect(0)  # a young collection is not counted
        gc.collect()  # a full one is
        assert pauses.count == 1 and pauses.total_s > 0 and pauses.longest_s <= pauses.total_s
    finally:
        account = pauses.end()
    assert gc.get_freeze_count() == 0 and pauses._on_gc not in gc.callbacks
    gc.collect()
    assert pauses.count == 1  # no longer counting
    assert account.startswith("1 full garbage collections during the run, ")
    assert f"the starting heap of {pauses.frozen:,} objects frozen" in account
