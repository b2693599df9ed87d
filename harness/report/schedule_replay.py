"""The engine's scheduler replayed on a dataset's lengths, without a model: steps, preemptions
and recomputed prompt tokens for a KV pool and the scheduler's knobs, in seconds on a CPU, and
how many steps with prompt tokens a mixed CUDA graph of `--graph_tokens` rows could replay
(engine knob `cuda_graph_max_tokens`; the others run eagerly, launch by launch).

It runs the engine's own Scheduler and BlockManager (harness/engine/scheduler.py) on each
sample's prompt length and reference output length (EOS ignored, as dummy-weight speed runs
do), one step after another; with `--async_scheduling` each step is scheduled before the
previous one's tokens are applied, as the engine's async scheduling does. Beside
the counts it prints a time from the roofline's peaks (report/roofline.py): each step reads
the weights and the KV of every scheduled token's context at the copy bandwidth, and its
prompt tokens cost their GEMM FLOPs at the GEMM peak. That time is a model, for choosing what
to measure, never a measured figure.

Run: python -m harness.report.schedule_replay --preset=llama2-7b --kv_tokens=122192 \
    --queries=1500 --max_num_seqs=512 --headroom=0 --headroom=32
(--kv_tokens: the pool a run logged, "KV cache: ... = N tokens"; an FP8 cache of the same
memory holds twice a bf16 one's. Pass the run's own knobs: the synthetic Offline configs
admit with --admission=longest_first, and the H100 YAML adds --async_scheduling.)
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.engine.cuda_graph import MAX_PROMPTS, fits_mixed_graph
from harness.engine.kv_cache import BlockManager
from harness.engine.outputs import ModelRunnerOutput
from harness.engine.request import Request, SamplingParams
from harness.engine.scheduler import (
    ADMISSION_POLICIES,
    RequestTooLongError,
    Scheduler,
    SchedulerConfig,
)
from harness.report.roofline import PEAKS, GpuPeaks, Workload

TOKEN = 7  # every prompt and output token; the scheduler never looks at the ids


@dataclass
class ReplayStats:
    steps: int = 0
    decode_steps: int = 0  # steps without prompt tokens
    preemptions: int = 0
    prompt_tokens: int = 0  # prompt tokens computed, recomputes after preemption included
    output_tokens: int = 0
    decode_rows: int = 0  # decode tokens over all steps
    context_tokens: int = 0  # KV tokens the steps attend to, summed over steps
    graph_prompt_steps: int = 0  # steps with prompt tokens that a mixed graph could take

    def line(self, first_prompts: int) -> str:
        return (
            f"{self.steps:,} steps ({self.decode_steps:,} decode-only), {self.preemptions:,} "
            f"preemptions, {self.prompt_tokens:,} prompt tokens computed "
            f"({self.prompt_tokens / max(first_prompts, 1):.2f}x the prompts), "
            f"{self.decode_rows / max(self.steps, 1):.0f} decode rows a step"
        )

    def graph_line(self, graph_tokens: int) -> str:
        prompt_steps = self.steps - self.decode_steps
        return (
            f"{self.graph_prompt_steps:,} of the {prompt_steps:,} steps with prompt tokens fit "
            f"a mixed graph of {graph_tokens:,} rows (at most {MAX_PROMPTS} prompts, none "
            "with cached context)"
        )


def replay(
    input_lens: list[int], output_lens: list[int], kv_tokens: int, config: SchedulerConfig,
    block_size: int = 16, graph_tokens: int = 0, async_scheduling: bool = False,
) -> ReplayStats:  # fmt: skip
    """Schedule every sample to its reference output length; count what the steps did.
    graph_tokens: a mixed graph's rows (cuda_graph.fits_mixed_graph, as the engine decides).
    async_scheduling: apply each step's tokens after the next step is scheduled (LLMEngine)."""
    scheduler = Scheduler(config, BlockManager(kv_tokens // block_size, block_size))
    for i, (n_in, n_out) in enumerate(zip(input_lens, output_lens, strict=True)):
        sampling = SamplingParams(max_new_tokens=n_out, min_new_tokens=n_out, ignore_eos=True)
        scheduler.add_request(Request(i, [TOKEN] * n_in, sampling))
    stats = ReplayStats()
    in_flight = None  # async: the step scheduled last, its tokens not yet applied
    while scheduler.has_unfinished():
        step = scheduler.schedule()
        if async_scheduling:
            step, in_flight = in_flight, (None if step.is_empty else step)
            if step is None:
                continue
        prompt = sum(s.num_tokens for s in step.scheduled if s.num_tokens > 1)
        stats.steps += 1
        stats.decode_steps += prompt == 0
        stats.prompt_tokens += prompt
        stats.decode_rows += sum(s.num_tokens == 1 for s in step.scheduled)
        stats.context_tokens += sum(s.start_position + s.num_tokens for s in step.scheduled)
        fresh = [s.start_position == 0 for s in step.scheduled if s.num_tokens > 1]
        rows = sum(s.num_tokens for s in step.scheduled)
        stats.graph_prompt_steps += bool(fresh) and fits_mixed_graph(rows, fresh, graph_tokens)
        sampled = {s.request_id: TOKEN for s in step.scheduled if s.needs_sample}
        scheduler.update_from_output(step, ModelRunnerOutput(sampled))
    stats.preemptions = scheduler.num_preemptions
    stats.output_tokens = scheduler.num_output_tokens
    return stats


def modeled_seconds(stats: ReplayStats, w: Workload, peaks: GpuPeaks, fp8_gemm: bool) -> float:
    """Weights once a step plus the attended KV at the copy bandwidth, prompt tokens' GEMM
    FLOPs at the GEMM peak (w's mean lengths and concurrency are not used)."""
    weight_bytes = w.linear_params * w.weight_bytes + w.hidden * w.vocab * 2  # bf16 head
    moved = stats.steps * weight_bytes + stats.context_tokens * w.kv_bytes_per_token
    tflops = peaks.fp8_tflops if fp8_gemm else peaks.bf16_tflops
    return moved / (peaks.copy_tbps * 1e12) + stats.prompt_tokens * 2 * w.linear_params / (
        tflops * 1e12
    )


def pick_samples(num_samples: int, queries: int, seed: int) -> np.ndarray:
    """Sample indices for `queries` queries: each sample once before any repeats (whole
    permutations of the set, one after another), as LoadGen's equal-issue mode
    (`sample_concatenate_permutation`) issues them. Without that mode, as in bench runs,
    LoadGen draws every query's sample uniformly, repeats included: the same length
    distribution, another order."""
    rng = np.random.default_rng(seed)
    if queries <= num_samples:
        return rng.choice(num_samples, queries, replace=False)
    rounds = -(-queries // num_samples)
    return np.concatenate([rng.permutation(num_samples) for _ in range(rounds)])[:queries]


def main(argv: list[str] | None = None) -> int:
    from harness.dataset import Dataset, DatasetMissingError
    from harness.engine.model.llama import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama2-7b", choices=sorted(PRESETS))
    p.add_argument("--model_opt", default="Dense", choices=["Dense", "FP8"])
    p.add_argument("--kv_cache_dtype", default="auto", choices=["auto", "fp8"])
    p.add_argument("--gpu", default="H100", choices=sorted(PEAKS))
    p.add_argument("--kv_tokens", type=int, required=True, help="the KV pool, in tokens")
    p.add_argument("--preprocessed_dir", default="build/preprocessed_data/synthetic-orca")
    p.add_argument("--queries", type=int, default=1500, help="queries (pick_samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_num_batched_tokens", type=int, default=8192)
    p.add_argument("--admission_batch", type=int, default=1)
    p.add_argument("--admission", default="fifo", choices=ADMISSION_POLICIES)
    p.add_argument("--max_num_seqs", type=int, action="append", help="repeat to compare")
    p.add_argument("--headroom", type=int, action="append", help="admission_headroom_tokens")
    p.add_argument("--graph_tokens", type=int, default=2048, help="a mixed graph's rows")
    p.add_argument("--async_scheduling", action="store_true", help="as the engine's knob")
    a = p.parse_args(argv)
    if a.graph_tokens < 0:
        p.error(f"--graph_tokens={a.graph_tokens}: use 0 (no mixed graphs) or more")
    try:
        data = Dataset.load(Path(a.preprocessed_dir))
    except DatasetMissingError as ex:  # the synthetic set: python -m preprocess.synthetic
        p.error(str(ex))
    if a.queries < 1:
        p.error(f"--queries={a.queries}: use 1 or more")
    pick = pick_samples(len(data), a.queries, a.seed)
    ins, outs = data.input_lens[pick].tolist(), data.output_lens[pick].tolist()
    c = PRESETS[a.preset]
    fp8 = a.model_opt == "FP8"
    w = Workload(
        c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
        c.num_key_value_heads, c.head_dim, c.vocab_size, 1 if fp8 else 2,
        1 if a.kv_cache_dtype == "fp8" else 2, float(np.mean(ins)), float(np.mean(outs)), 1.0,
    )  # fmt: skip
    print(f"[replay] {a.preset} {a.model_opt}, KV {a.kv_cache_dtype} {a.kv_tokens:,} tokens, "
          f"{a.queries} samples (input mean {w.mean_input:.0f}, output mean "
          f"{w.mean_output:.0f}); time: a bandwidth / GEMM-peak model on {a.gpu}, not a "
          f"measurement")  # fmt: skip
    for seqs, headroom in itertools.product(a.max_num_seqs or [512], a.headroom or [0]):
        config = SchedulerConfig(
            max_num_seqs=seqs, max_num_batched_tokens=a.max_num_batched_tokens,
            admission=a.admission, admission_batch=a.admission_batch,
            admission_headroom_tokens=headroom,
        )  # fmt: skip
        try:
            stats = replay(
                ins, outs, a.kv_tokens, config, graph_tokens=a.graph_tokens,
                async_scheduling=a.async_scheduling,
            )  # fmt: skip
        except RequestTooLongError as ex:  # a sample that could never run, even alone
            p.error(f"--kv_tokens={a.kv_tokens} is too small: {ex}")
        s = modeled_seconds(stats, w, PEAKS[a.gpu], fp8)
        print(f"[replay] max_num_seqs={seqs} headroom={headroom}: {stats.line(sum(ins))}; "
              f"model {s:.1f} s = {stats.output_tokens / s:,.0f} tok/s; "
              f"{stats.graph_line(a.graph_tokens)}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
