"""A backend that dies mid-run ends the LoadGen test instead of hanging it (SUT.on_failed).

Each case runs real LoadGen in a subprocess of its own (one LoadGen test per process), with a
timeout: before the change, LoadGen waited forever for the samples the backend never finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 12
FINISHED_BEFORE_FAILURE = 3


class DyingBackend:
    """Finishes the first few requests, then reports that its worker died."""

    name = "dying"

    def __init__(self) -> None:
        self.sink = None
        self.num_served = 0
        self.lock = threading.Lock()

    def start(self, sink) -> None:  # noqa: ANN001
        self.sink = sink

    def submit(self, requests) -> None:  # noqa: ANN001
        threading.Thread(target=self._serve, args=(list(requests),), daemon=True).start()

    def _serve(self, requests) -> None:  # noqa: ANN001
        for r in requests:
            with self.lock:
                if self.num_served == FINISHED_BEFORE_FAILURE:
                    self.num_served += 1
                    self.sink.on_failed("CUDA out of memory (pretend)")
                if self.num_served > FINISHED_BEFORE_FAILURE:
                    return
                self.num_served += 1
            self.sink.on_first_token(r.request_id, 7)
            self.sink.on_finished(r.request_id, [7, 8, 9])

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        pass


class TinyDataset:
    output_lens = [3] * NUM_SAMPLES

    def __len__(self) -> int:
        return NUM_SAMPLES

    def prompt(self, index: int) -> list[int]:
        return [1, 2, 3 + index]


def _run(scenario: str, outdir: Path) -> dict:
    import mlperf_loadgen as lg

    from harness.config.schema import HarnessConfig
    from harness.loadgen.sut import SUT

    cfg = HarnessConfig()
    cfg.scenario.scenario = scenario
    sut = SUT(cfg, DyingBackend(), TinyDataset())
    sut.backend.start(sut)
    user_conf = outdir / "user.conf"
    user_conf.write_text(
        f"*.{scenario}.target_qps = 200\n*.{scenario}.min_duration = 0\n"
        f"*.{scenario}.min_query_count = {NUM_SAMPLES}\n"
    )
    settings = lg.TestSettings()
    settings.FromConfig(str(user_conf), "llama2-70b", scenario)
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.PerformanceOnly
    settings.use_token_latencies = True
    log = lg.LogSettings()
    log.log_output.outdir = str(outdir)
    log.log_output.copy_summary_to_stdout = False
    lg.StartTestWithLogSettings(sut.sut, sut.qsl, settings, log, str(outdir / "no-audit.config"))
    sut.destroy()
    return {"failure": sut.failure, "completed": sut.num_completed}


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_a_backend_failure_ends_the_loadgen_test(scenario: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, scenario, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"failure": "CUDA out of memory (pretend)",
                      "completed": FINISHED_BEFORE_FAILURE}  # fmt: skip
    assert "completing" in out.stderr and "pending samples empty" in out.stderr
    assert (tmp_path / "mlperf_log_summary.txt").is_file()  # LoadGen ended and wrote its logs


if __name__ == "__main__":
    print(json.dumps(_run(sys.argv[1], Path(sys.argv[2]))))
