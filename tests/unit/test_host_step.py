"""report/host_step: the host bookkeeping timer runs the real scheduler and runner on CPU."""

from __future__ import annotations

from harness.report.host_step import measure


def test_host_step_times_each_part_of_a_decode_step():
    ms = measure(batch=4, device="cpu", steps=5)
    assert list(ms) == ["schedule", "prepare", "update"]
    assert all(0 < value < 1000 for value in ms.values())
