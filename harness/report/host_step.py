"""Host time of a decode step's bookkeeping: schedule, input preparation, update.

These run on the CPU between two steps on the device (or, with async scheduling, while the
device runs the previous step). A tiny model fills `batch` sequences with prompts of 600-899
tokens; then steps are scheduled, their inputs prepared (tensors copied to --device) and
sampled tokens applied without running the model, and the median of each part is printed.
Run: python -m harness.report.host_step --batch=512 [--device=cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time


def measure(batch: int, device: str, steps: int) -> dict[str, float]:
    """Median milliseconds of schedule / prepare / update over `steps` decode steps."""
    from harness.engine.llm_engine import EngineArgs, LLMEngine
    from harness.engine.model.llama import LlamaConfig
    from harness.engine.outputs import ModelRunnerOutput
    from harness.engine.request import SamplingParams

    config = LlamaConfig(64, 32, 48, 2, 4, 2, max_position_embeddings=4096)
    args = EngineArgs(
        model_config=config, weights="dummy", device=device, num_kv_blocks=batch * 80,
        max_num_seqs=batch, max_num_batched_tokens=8192, max_model_len=2048,
    )  # fmt: skip
    engine = LLMEngine.from_args(args)
    scheduler, runner = engine.scheduler, engine.model_runner
    sp = SamplingParams(max_new_tokens=1000, min_new_tokens=1000, ignore_eos=True)
    for i in range(batch):
        engine.add_request(i, [3 + (i + j) % 60 for j in range(600 + i % 300)], sp)

    def step(times: dict[str, list[float]] | None) -> None:
        t0 = time.perf_counter()
        sched = scheduler.schedule()
        t1 = time.perf_counter()
        runner._prepare(sched)
        t2 = time.perf_counter()
        out = {s.request_id: 5 for s in sched.scheduled if s.needs_sample}
        scheduler.update_from_output(sched, ModelRunnerOutput(out))
        t3 = time.perf_counter()
        if times is not None:
            for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[name].append(seconds * 1e3)

    while scheduler.num_waiting:  # prefill without the model: only the bookkeeping matters
        step(None)
    for _ in range(20):
        step(None)
    times: dict[str, list[float]] = {"schedule": [], "prepare": [], "update": []}
    for _ in range(steps):
        step(times)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, action="append", help="sequences decoding (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args(argv)
    if min(a.batch or [1]) < 1 or a.steps < 1:
        p.error(f"--batch={a.batch} --steps={a.steps}: each must be >= 1")
    for batch in a.batch or [64, 512]:
        ms = measure(batch, a.device, a.steps)
        parts = ", ".join(f"{name} {value:.3f}" for name, value in ms.items())
        print(f"[host_step] {batch} sequences on {a.device}: {parts}; "
              f"total {sum(ms.values()):.3f} ms a step (medians of {a.steps})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
