"""The engine's scheduler replayed on a dataset's lengths, without a model: steps, preemptions
and recomputed prompt tokens for a KV pool and the scheduler's knobs, in seconds on a CPU, and
how many steps with prompt tokens a mixed CUDA graph of `--graph_tokens` rows could replay
(engine knob `cuda_graph_max_tokens`; the others run eagerly, launch by launch).

It runs the engine's own Scheduler and BlockManager (harness/engine/scheduler.py) on each
sample's prompt length and reference output length (EOS ignored, as dummy-weight speed runs
do), one step after another; with `--async_scheduling=true` each step is scheduled before the
previous one's tokens are applied, as the engine's async scheduling does. Beside
the counts it prints a time from the roofline's peaks (report/roofline.py): each step reads
the weights and the KV of every scheduled token's context at the copy bandwidth, and its
prompt tokens cost their GEMM FLOPs at the GEMM peak. That time is a model, for choosing what
to measure, never a measured figure. With `--graph_log` (a bench log with the engine's
"CUDA graphs: ... replays:" lines) it also prints a second model built on measured times:
each step takes the replay time of the graph it pads to (a step the engine runs eagerly, as
if a graph of its rows), plus the KV its rows attend to read at `--attention_tbps`; that is the
step's time on a GPU fresh from idle, so a run that ends slower measures what sustained load
(power, clocks) and the host add. That model also splits its time by share of the output
tokens (first 10%, 10-90%, 90-99%, last 1%): the ramp, the middle and the drain.

Run: python -m harness.report.schedule_replay --config=llama2-7b-synthetic:Offline:H100-SXM-80GBx1 \
    --kv_tokens=244384 --queries=5000 --headroom=0 --headroom=32
    python -m harness.report.schedule_replay --config=llama2-70b-synthetic:Offline:H100-SXM-80GBx1 \
    --kv_tokens=74864 --queries=4000 --graph_tokens=1024 --graph_log=session.log
(--config takes the run's knobs from its merged config files, as `harness bench` does; flags
given override them. --kv_tokens: the pool the run logged, "KV cache: ... = N tokens"; an FP8
cache of the same memory holds twice a bf16 one's.)
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from harness.engine.cuda_graph import MAX_PROMPTS, fits_mixed_graph
from harness.engine.kv_cache import BlockManager
from harness.engine.outputs import ModelRunnerOutput, SchedulerOutput
from harness.engine.request import Request, SamplingParams
from harness.engine.scheduler import (
    ADMISSION_POLICIES,
    RequestTooLongError,
    Scheduler,
    SchedulerConfig,
)
from harness.engine.stats import time_by_token_share
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
    decode_ms: float = 0.0  # with replay's step_ms: the decode-only steps' modeled time
    prompt_ms: float = 0.0  # and the steps with prompt tokens'
    # with step_ms, per step: its modeled end (s) and the output tokens up to it
    step_ends_s: list[float] = field(default_factory=list)
    cumulative_tokens: list[int] = field(default_factory=list)

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
            f"a mixed graph of {graph_tokens:,} rows (at most {MAX_PROMPTS} new prompts, after "
            "any chunks over cached context)"
        )


# A step's modeled ms from its rows, the KV tokens it attends to and whether it has prompt tokens
StepMs = Callable[[int, int, bool], float]


class StepShape(NamedTuple):
    rows: int
    context: int  # KV tokens its rows attend to
    prompt: int  # prompt tokens
    mixed_graph: bool  # it has prompt tokens and runs as a mixed graph


def step_shape(step: SchedulerOutput, graph_tokens: int = 0) -> StepShape:
    """A scheduled step's shape. In a mixed graph of at most graph_tokens rows, each row of a
    chunk over cached context attends as a decode does and reads its keys itself
    (cuda_graph.py); eagerly the chunk reads them once."""
    rows = sum(s.num_tokens for s in step.scheduled)
    prompt = sum(s.num_tokens for s in step.scheduled if s.num_tokens > 1)
    fresh = [s.start_position == 0 for s in step.scheduled if s.num_tokens > 1]
    mixed_graph = bool(fresh) and fits_mixed_graph(rows, fresh, graph_tokens)
    context = 0
    for s in step.scheduled:
        n, start = s.num_tokens, s.start_position
        if mixed_graph and n > 1 and start > 0:  # row i attends to start + i + 1 keys
            context += n * start + n * (n + 1) // 2
        else:
            context += start + n
    return StepShape(rows, context, prompt, mixed_graph)


def mixed_graph_tokens(graph_tokens: int, max_num_batched_tokens: int) -> int:
    """The largest mixed graph, as the engine sizes it (llm_engine.cuda_graph_sizes): no step
    holds more than max_num_batched_tokens tokens."""
    return min(graph_tokens, max_num_batched_tokens)


def replay(
    input_lens: list[int], output_lens: list[int], kv_tokens: int, config: SchedulerConfig,
    block_size: int = 16, graph_tokens: int = 0, async_scheduling: bool = False,
    step_ms: StepMs | None = None,
) -> ReplayStats:  # fmt: skip
    """Schedule every sample to its reference output length; count what the steps did.
    graph_tokens: the largest mixed graph's rows (cuda_graph.fits_mixed_graph, as the engine
    decides; mixed_graph_tokens).
    async_scheduling: apply each step's tokens after the next step is scheduled (LLMEngine).
    step_ms: sums each step's modeled time into decode_ms / prompt_ms."""
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
        rows, context, prompt, mixed_graph = step_shape(step, graph_tokens)
        stats.steps += 1
        stats.decode_steps += prompt == 0
        stats.prompt_tokens += prompt
        stats.decode_rows += sum(s.num_tokens == 1 for s in step.scheduled)
        stats.context_tokens += context
        stats.graph_prompt_steps += mixed_graph
        sampled = {s.request_id: TOKEN for s in step.scheduled if s.needs_sample}
        if step_ms is not None:
            ms = step_ms(rows, context, prompt > 0)
            stats.prompt_ms += ms if prompt else 0.0
            stats.decode_ms += 0.0 if prompt else ms
            stats.step_ends_s.append((stats.decode_ms + stats.prompt_ms) / 1e3)
            done = stats.cumulative_tokens[-1] if stats.cumulative_tokens else 0
            stats.cumulative_tokens.append(done + len(sampled))
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


GRAPH_LINE = re.compile(r"CUDA graphs: (decode|mixed) buckets .*; replays: (.*)$")


@dataclass(frozen=True)
class GraphTimes:
    """A run's CUDA-graph replay times, ms by rows, as the engine logs them after capture."""

    decode: dict[int, float]
    mixed: dict[int, float]

    def step_ms(self, rows: int, mixed: bool) -> float:
        """The fastest graph of at least `rows` rows (the engine pads a step up to it, having
        dropped any graph slower than a larger one); a step above the largest graph runs
        eagerly, modeled at the largest graph's time per row."""
        table = self.mixed if mixed else self.decode
        fits = [ms for r, ms in table.items() if r >= rows]
        if fits:
            return min(fits)
        top = max(table)
        return table[top] * rows / top


def graph_times_from_log(path: Path) -> GraphTimes:
    """The last decode and the last mixed replay line of an engine log (bench, profile_step)."""
    found: dict[str, dict[int, float]] = {}
    for line in path.read_text(errors="replace").splitlines():
        if m := GRAPH_LINE.search(line):
            pairs = re.findall(r"(\d+): ([\d.]+) ms", m.group(2))
            found[m.group(1)] = {int(rows): float(ms) for rows, ms in pairs}
    for kind in ("decode", "mixed"):
        if not found.get(kind):
            raise ValueError(
                f"{path}: no 'CUDA graphs: {kind} buckets ... replays: ...' line; give the log "
                "of a CUDA run with cuda_graph_max_tokens > 0 (the engine's INFO lines)"
            )
    return GraphTimes(found["decode"], found["mixed"])


def measured_step_ms(times: GraphTimes, kv_bytes_per_token: float, attention_tbps: float) -> StepMs:
    """A step: its graph's replay time plus the KV its rows attend to at attention_tbps (the
    replays were timed at capture, over contexts of a token or two)."""

    def step_ms(rows: int, context_tokens: int, has_prompt: bool) -> float:
        kv_ms = context_tokens * kv_bytes_per_token / (attention_tbps * 1e9)
        return times.step_ms(rows, has_prompt) + kv_ms

    return step_ms


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


# What a replay needs to know of a run; --config fills these from the run's own files.
DEFAULT_KNOBS: dict[str, object] = {
    "preset": "llama2-7b", "model_opt": "Dense", "kv_cache_dtype": "auto", "gpu": "H100",
    "preprocessed_dir": "build/preprocessed_data/synthetic-orca",
    "max_num_batched_tokens": 8192, "admission_batch": 1, "admission": "fifo",
    "max_num_seqs": [512], "headroom": [0], "async_scheduling": False, "graph_tokens": 2048,
    "block_size": 16,
}  # fmt: skip


def knobs_from_config(benchmark: str, scenario: str, system: str) -> dict[str, object]:
    """The replay's knobs as `harness run/bench` would resolve them for this run."""
    from harness.config.loader import load_config

    cfg = load_config(benchmark, scenario, system)
    e = cfg.engine
    if e.model_opt not in ("Dense", "FP8"):
        raise ValueError(f"model_opt {e.model_opt}: the time model knows Dense and FP8 only")
    gpus = [g for g in sorted(PEAKS) if g in system]
    return {
        "preset": cfg.benchmark.name, "model_opt": e.model_opt,
        "kv_cache_dtype": e.kv_cache_dtype, "preprocessed_dir": cfg.benchmark.preprocessed_dir,
        "max_num_batched_tokens": e.max_num_batched_tokens, "admission": e.admission,
        "admission_batch": e.admission_batch, "max_num_seqs": [e.max_num_seqs],
        "headroom": [e.admission_headroom_tokens], "async_scheduling": e.async_scheduling,
        "graph_tokens": e.cuda_graph_max_tokens if e.use_cuda_graph else 0,
        "block_size": e.block_size, **({"gpu": gpus[0]} if gpus else {}),
    }  # fmt: skip


def config_knobs(p: argparse.ArgumentParser, value: str) -> dict[str, object]:
    """--config=BENCHMARK:SCENARIO:SYSTEM's knobs, or the parser's one-line error naming it."""
    parts = value.split(":")
    if len(parts) != 3:
        p.error(f"--config={value}: use BENCHMARK:SCENARIO:SYSTEM (configs/, systems/)")
    try:
        return knobs_from_config(*parts)
    except ValueError as ex:  # ConfigError is a ValueError
        p.error(f"--config={value}: {ex}")


def workload(preset: str, model_opt: str, kv_cache_dtype: str, ins: list[int], outs: list[int]
             ) -> Workload:  # fmt: skip
    """The roofline's workload for a preset and the replayed lengths (concurrency unused)."""
    from harness.engine.model.llama import PRESETS

    c = PRESETS[preset]
    return Workload(
        c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
        c.num_key_value_heads, c.head_dim, c.vocab_size, 1 if model_opt == "FP8" else 2,
        1 if kv_cache_dtype == "fp8" else 2, float(np.mean(ins)), float(np.mean(outs)), 1.0,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from harness.dataset import Dataset, DatasetMissingError
    from harness.engine.model.llama import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", metavar="BENCHMARK:SCENARIO:SYSTEM",
        help="take the knobs below from the run's merged config, e.g. "
        "llama2-7b-synthetic:Offline:H100-SXM-80GBx1 (flags given still win)",
    )  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--model_opt", choices=["Dense", "FP8"])
    p.add_argument("--kv_cache_dtype", choices=["auto", "fp8"])
    p.add_argument("--gpu", choices=sorted(PEAKS))
    p.add_argument("--kv_tokens", type=int, required=True, help="the KV pool, in tokens")
    p.add_argument("--preprocessed_dir")
    p.add_argument("--queries", type=int, default=1500, help="queries (pick_samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_num_batched_tokens", type=int)
    p.add_argument("--admission_batch", type=int)
    p.add_argument("--admission", choices=ADMISSION_POLICIES)
    p.add_argument("--max_num_seqs", type=int, action="append", help="repeat to compare")
    p.add_argument("--headroom", type=int, action="append", help="admission_headroom_tokens")
    p.add_argument("--graph_tokens", type=int,
                   help="cuda_graph_max_tokens: the largest mixed graph's rows")  # fmt: skip
    p.add_argument("--async_scheduling", choices=["true", "false"], help="the engine's knob")
    p.add_argument("--block_size", type=int, help="KV tokens a block (the engine's knob)")
    p.add_argument("--graph_log", type=Path,
                   help="a run's log: model steps at its graphs' replay times too")  # fmt: skip
    p.add_argument("--attention_tbps", type=float, default=2.3,
                   help="KV read rate of the paged decode kernel, TB/s, for --graph_log "
                   "(2.3: 70B FP8 KV at 160 rows on an H100, docs/benchmarks.md)")  # fmt: skip
    a = p.parse_args(argv)
    knobs = dict(DEFAULT_KNOBS)
    if a.config:
        knobs.update(config_knobs(p, a.config))
    knobs.update({k: getattr(a, k) for k in DEFAULT_KNOBS if getattr(a, k) is not None})
    knobs["async_scheduling"] = knobs["async_scheduling"] in (True, "true")  # flag: a string
    for name, value in knobs.items():  # flags over the config over DEFAULT_KNOBS
        setattr(a, name, value)
    if a.preset not in PRESETS:
        p.error(f"--preset={a.preset}: use one of {', '.join(sorted(PRESETS))}")
    if a.graph_tokens < 0:
        p.error(f"--graph_tokens={a.graph_tokens}: use 0 (no mixed graphs) or more")
    graph_tokens = mixed_graph_tokens(a.graph_tokens, a.max_num_batched_tokens)
    if a.block_size < 1:
        p.error(f"--block_size={a.block_size}: use 1 or more")
    if a.kv_tokens < a.block_size:
        p.error(f"--kv_tokens={a.kv_tokens}: use at least one block of {a.block_size} tokens")
    try:
        data = Dataset.load(Path(a.preprocessed_dir))
    except DatasetMissingError as ex:  # the synthetic set: python -m preprocess.synthetic
        p.error(str(ex))
    if a.queries < 1:
        p.error(f"--queries={a.queries}: use 1 or more")
    if a.attention_tbps <= 0:
        p.error(f"--attention_tbps={a.attention_tbps}: use a rate above 0")
    times = None
    if a.graph_log is not None:
        try:
            times = graph_times_from_log(a.graph_log)
        except (OSError, ValueError) as ex:
            p.error(f"--graph_log: {ex}")
    pick = pick_samples(len(data), a.queries, a.seed)
    ins, outs = data.input_lens[pick].tolist(), data.output_lens[pick].tolist()
    w = workload(a.preset, a.model_opt, a.kv_cache_dtype, ins, outs)
    fp8 = a.model_opt == "FP8"
    print(f"[replay] {a.preset} {a.model_opt}, KV {a.kv_cache_dtype} {a.kv_tokens:,} tokens, "
          f"{a.queries} samples (input mean {w.mean_input:.0f}, output mean "
          f"{w.mean_output:.0f}); {a.admission} admission in groups of {a.admission_batch}, "
          f"{a.max_num_batched_tokens:,} tokens a step, blocks of {a.block_size}, async "
          "scheduling "
          f"{'on' if a.async_scheduling else 'off'}; time: a bandwidth / GEMM-peak model on "
          f"{a.gpu}, not a measurement")  # fmt: skip
    over = [seqs for seqs in a.max_num_seqs if seqs > a.max_num_batched_tokens]
    if over:  # as the harness's config refuses it: the budget caps the decodes of a step
        p.error(f"--max_num_seqs={over[0]} is over --max_num_batched_tokens="
                f"{a.max_num_batched_tokens}: a step decodes at most the budget's sequences; "
                "give a budget of at least the sequences")  # fmt: skip
    try:  # every row's config before any row runs
        configs = [
            SchedulerConfig(
                max_num_seqs=seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                admission=a.admission, admission_batch=a.admission_batch,
                admission_headroom_tokens=headroom,
            )
            for seqs, headroom in itertools.product(a.max_num_seqs, a.headroom)
        ]  # fmt: skip
    except ValueError as ex:  # a count below its minimum, named with its value
        p.error(f"{ex} (--max_num_seqs, --max_num_batched_tokens, --admission_batch, "
                "--headroom)")  # fmt: skip
    step_ms = measured_step_ms(times, w.kv_bytes_per_token, a.attention_tbps) if times else None
    for config in configs:
        seqs, headroom = config.max_num_seqs, config.admission_headroom_tokens
        try:
            stats = replay(
                ins, outs, a.kv_tokens, config, a.block_size, graph_tokens=graph_tokens,
                async_scheduling=a.async_scheduling, step_ms=step_ms,
            )  # fmt: skip
        except RequestTooLongError as ex:  # a sample that could never run, even alone
            p.error(f"--kv_tokens={a.kv_tokens} is too small: {ex}")
        s = modeled_seconds(stats, w, PEAKS[a.gpu], fp8)
        print(f"[replay] max_num_seqs={seqs} headroom={headroom}: {stats.line(sum(ins))}; "
              f"model {s:.1f} s = {stats.output_tokens / s:,.0f} tok/s; "
              f"{stats.graph_line(graph_tokens)}", flush=True)  # fmt: skip
        if step_ms is not None:
            total = (stats.decode_ms + stats.prompt_ms) / 1e3
            print(f"[replay]   measured-graph model: decode-only steps {stats.decode_ms / 1e3:.1f} "
                  f"s, steps with prompt tokens {stats.prompt_ms / 1e3:.1f} s, {total:.1f} s = "
                  f"{stats.output_tokens / total:,.0f} tok/s (replays from {a.graph_log}, KV "
                  f"at {a.attention_tbps} TB/s; a model)", flush=True)  # fmt: skip
            shares = time_by_token_share(stats.step_ends_s, stats.cumulative_tokens)
            print(f"[replay]   time by share of output tokens: {shares}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
