"""Accuracy-log truncation (4 KiB head + tail) and the hash= line of the full log."""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.submission.rounds import MAX_ACCURACY_LOG_BYTES
from harness.submission.truncate import read_hash, stage_accuracy_log


def _log(path: Path, size: int) -> bytes:
    body = "[\n" + "".join(f'{{ "seq_id" : {i}, "data" : "0A000000" }},\n' for i in range(size))
    path.write_text(body + "]\n")
    return path.read_bytes()


def test_large_log_keeps_4k_head_and_tail(tmp_path: Path) -> None:
    full = tmp_path / "run" / "mlperf_log_accuracy.json"
    full.parent.mkdir()
    raw = _log(full, 5000)
    acc_txt = tmp_path / "accuracy.txt"
    acc_txt.write_text("{'rouge1': 44.6, 'tokens_per_sample': 291.9}")
    staged = tmp_path / "staged" / "mlperf_log_accuracy.json"
    digest = stage_accuracy_log(full, acc_txt, staged, tmp_path / "keep")
    assert digest == hashlib.sha256(raw).hexdigest()
    assert staged.read_bytes() == raw[:4096] + b"\n\n...\n\n" + raw[-4096:]
    assert staged.stat().st_size <= MAX_ACCURACY_LOG_BYTES
    assert (tmp_path / "keep" / "mlperf_log_accuracy.json").read_bytes() == raw
    assert acc_txt.read_text().splitlines() == [
        "{'rouge1': 44.6, 'tokens_per_sample': 291.9}",
        f"hash={digest}",
    ]
    assert read_hash(acc_txt) == digest
    # Staging the same log again does not append a second hash line.
    stage_accuracy_log(full, acc_txt, staged, tmp_path / "keep")
    assert acc_txt.read_text().count("hash=") == 1


def test_small_log_is_copied_unchanged(tmp_path: Path) -> None:
    full = tmp_path / "mlperf_log_accuracy.json"
    raw = _log(full, 10)
    assert len(raw) < 4096
    acc_txt = tmp_path / "accuracy.txt"
    staged = tmp_path / "out" / "mlperf_log_accuracy.json"
    digest = stage_accuracy_log(full, acc_txt, staged, tmp_path / "keep")
    assert staged.read_bytes() == raw
    assert acc_txt.read_text() == f"hash={digest}\n"
