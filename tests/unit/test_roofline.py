"""The roofline's workload arithmetic (no GPU: peaks are given)."""

from __future__ import annotations

import pytest

from harness.report.roofline import GpuPeaks, Workload, decode_context, roofline


def test_decode_context_weighs_each_request_by_the_tokens_it_makes():
    # request 1: 10 prompt tokens, 2 answers decoded at contexts 10 and 11; request 2: no
    # prompt, 4 answers at 0, 1, 2, 3: (21 + 6) / 6 tokens
    assert decode_context([10, 0], [2, 4]) == pytest.approx(4.5)
    # equal answers: the mean prompt plus the middle of an answer
    assert decode_context([100, 300], [50, 50]) == pytest.approx(200 + 24.5)
    # spread answers hold more than mean input + mean output / 2 (50 + 137.5): the long one
    # is resident for 500 of the 550 tokens
    assert decode_context([50, 50], [50, 500]) == pytest.approx(153_475 / 550)  # 279.0


def test_the_memory_bound_reads_the_kv_at_the_token_weighted_context():
    def workload(context: float) -> Workload:  # one layer, hidden 2, 1 KV head of 2: 8 B a token
        return Workload(1, 2, 4, 1, 1, 2, 10, 2.0, 2.0, 10.0, 20.0, 4.0, context)

    plain, weighted = workload(0.0), workload(45.0)
    assert plain.context == 20.0 and weighted.context == 45.0
    weights = 40 * 2 + 2 * 10 * 2  # linear params x 2 bytes + the bf16 head
    assert plain.bytes_per_decode_step() == weights + 4 * 20 * 8
    assert weighted.bytes_per_decode_step() == weights + 4 * 45 * 8
    peaks = GpuPeaks("test", copy_tbps=1.0, bf16_tflops=1.0, fp8_tflops=1.0)
    slower, faster = (roofline(w, peaks, False).memory_bound_tps for w in (weighted, plain))
    assert slower < faster
