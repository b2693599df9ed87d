"""A Server run replayed on lengths alone: Poisson arrivals, the engine's own scheduler, each
step timed at the replay time its CUDA graph logged in a measured run (schedule_replay's
measured-graph model) times a sustained-load factor; prints p99 (and p99.9) time to first
token, p99 time per output token and completed tokens/s for each rate and max_num_seqs, and how
much longer the decode-only steps' longest context is than their mean. Completed tokens/s is
LoadGen's: every output token over the time at which the last query to arrive is done (not the
last to finish). A model for choosing which rates and knobs to measure (each Server measurement
costs minutes of GPU time), never a measured figure.

Steps run one after another; a first token counts when its step ends. With the config's
async scheduling the engine schedules each step while the one before it runs, so a step sees
only the requests that arrived before that one began (a request waits one step longer; the
host's work it overlaps is carried by `--slowdown`). `--slowdown` scales every step: a measured
run's engine time over the model's time for the same run (e.g. an Offline run through
`schedule_replay --graph_log`, or a Server run's mean step times, from its bench "engine time"
line, over those this prints at --slowdown=1), which carries the clock under sustained load
and the host.
Near the engine's capacity the p99 first-token time swings by orders of magnitude with a few
percent of `--slowdown` (1.14 called 256 sequences at 9.13 q/s safe; the H100 measured a 17.8 s
p99 and 1,463 preemptions, which 1.22 reproduces): there only a LoadGen run decides.

Run: python -m harness.report.server_replay --config=llama2-70b-synthetic:Server:H100-SXM-80GBx1 \
    --kv_tokens=74864 --graph_log=session.log --slowdown=1.14 --qps=7.8 --qps=8.5 --seconds=300
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.engine.kv_cache import BlockManager
from harness.engine.outputs import ModelRunnerOutput
from harness.engine.request import Request, SamplingParams
from harness.engine.scheduler import Scheduler, SchedulerConfig
from harness.report.schedule_replay import (
    TOKEN,
    StepMs,
    config_knobs,
    graph_times_from_log,
    measured_step_ms,
    mixed_graph_tokens,
    pick_samples,
    step_shape,
    workload,
)


@dataclass
class ServerStats:
    ttft_s: list[float] = field(default_factory=list)  # one per request, arrival to first token
    tpot_s: list[float] = field(default_factory=list)  # per request with 2+ tokens
    output_tokens: int = 0
    end_s: float = 0.0  # the last step's end, from the first arrival
    final_done_s: float = 0.0  # when the last query to arrive finished: LoadGen's divisor
    preemptions: int = 0
    # step counts and summed times (s), as a bench run's "engine time" line gives them
    decode_steps: int = 0
    decode_s: float = 0.0
    prompt_steps: int = 0  # steps with prompt tokens
    prompt_s: float = 0.0
    # decode-only steps' longest and mean context (keys), summed over the steps: with each
    # request's keys in equal parts a launch waits on its longest request, longest / mean times
    # an even spread's time (engine.decode_split_keys caps every part instead)
    decode_longest_keys: int = 0
    decode_mean_keys: float = 0.0

    def line(self) -> str:
        tpot = "no TPOT (1-token answers)"
        if self.tpot_s:
            p99, mean = np.percentile(self.tpot_s, 99) * 1e3, np.mean(self.tpot_s) * 1e3
            tpot = f"p99 TPOT {p99:.1f} ms (mean {mean:.1f})"
        return (
            f"p99 TTFT {np.percentile(self.ttft_s, 99) * 1e3:,.0f} ms (p99.9 "
            f"{np.percentile(self.ttft_s, 99.9) * 1e3:,.0f}: LoadGen's early stopping counts the "
            f"tail), {tpot}, "
            f"{self.output_tokens / self.final_done_s:,.0f} tok/s completed (the last query "
            f"to arrive done at {self.final_done_s:.0f} s, all at {self.end_s:.0f} s), "
            f"{self.preemptions} preemptions; {self.decode_steps:,} decode-only steps at "
            f"{self.decode_s * 1e3 / max(self.decode_steps, 1):.1f} ms, {self.prompt_steps:,} "
            f"with prompt tokens at {self.prompt_s * 1e3 / max(self.prompt_steps, 1):.1f} ms; "
            f"decode-only steps' longest context {self.key_spread():.2f}x their mean"
        )

    def key_spread(self) -> float:
        """Decode-only steps' longest context over their mean context, summed over steps."""
        return self.decode_longest_keys / max(self.decode_mean_keys, 1e-9)


def poisson_arrivals(qps: float, seconds: float, seed: int) -> np.ndarray:
    """Arrival times (s) of a Poisson process at qps over [0, seconds), as LoadGen's Server
    schedule draws them (exponential gaps)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / qps, size=int(qps * seconds * 1.5) + 16)
    times = np.cumsum(gaps) - gaps[0]
    return times[times < seconds]


def replay_server(
    input_lens: list[int], output_lens: list[int], arrivals_s: np.ndarray, kv_tokens: int,
    config: SchedulerConfig, step_ms: StepMs, slowdown: float = 1.0, block_size: int = 16,
    graph_tokens: int = 0, async_scheduling: bool = False,
) -> ServerStats:  # fmt: skip
    """Request i (input_lens[i] prompt tokens, exactly output_lens[i] outputs) arrives at
    arrivals_s[i]; the scheduler runs whenever work is waiting, each step taking step_ms x
    slowdown; first tokens and completions are stamped at the end of their step. graph_tokens:
    the largest mixed graph (schedule_replay.mixed_graph_tokens). async_scheduling: a busy
    engine schedules each step when the one before it begins, seeing the arrivals until then."""
    scheduler = Scheduler(config, BlockManager(kv_tokens // block_size, block_size))
    stats = ServerStats()
    first_s: dict[int, float] = {}
    clock, arrived = 0.0, 0
    previous_start: float | None = None  # the step before this one, while the engine is busy
    while arrived < len(arrivals_s) or scheduler.has_unfinished():
        if not scheduler.has_unfinished():
            clock = max(clock, float(arrivals_s[arrived]))  # idle until the next arrival
            previous_start = None  # an idle engine schedules at once
        seen = clock if previous_start is None or not async_scheduling else previous_start
        while arrived < len(arrivals_s) and arrivals_s[arrived] <= seen:
            n_out = output_lens[arrived]
            sampling = SamplingParams(max_new_tokens=n_out, min_new_tokens=n_out, ignore_eos=True)
            scheduler.add_request(Request(arrived, [TOKEN] * input_lens[arrived], sampling))
            arrived += 1
        step = scheduler.schedule()
        if step.is_empty:
            raise RuntimeError("the scheduler made an empty step with requests waiting")
        rows, context, prompt, _ = step_shape(step, graph_tokens)
        seconds = step_ms(rows, context, prompt > 0) * slowdown / 1e3
        previous_start = clock
        clock += seconds
        if prompt > 0:
            stats.prompt_steps += 1
            stats.prompt_s += seconds
        else:
            stats.decode_steps += 1
            stats.decode_s += seconds
            keys = [s.start_position + s.num_tokens for s in step.scheduled]
            stats.decode_longest_keys += max(keys)
            stats.decode_mean_keys += sum(keys) / len(keys)
        sampled = {s.request_id: TOKEN for s in step.scheduled if s.needs_sample}
        for event in scheduler.update_from_output(step, ModelRunnerOutput(sampled)):
            rid = event.request_id
            if event.is_first_token:
                first_s[rid] = clock
                stats.ttft_s.append(clock - float(arrivals_s[rid]))
            if event.is_finished and len(event.output_token_ids) > 1:
                stats.tpot_s.append((clock - first_s[rid]) / (len(event.output_token_ids) - 1))
            if event.is_finished and rid == len(arrivals_s) - 1:
                stats.final_done_s = clock
    stats.output_tokens = scheduler.num_output_tokens
    stats.end_s = clock
    stats.preemptions = scheduler.num_preemptions
    return stats


def main(argv: list[str] | None = None) -> int:
    from harness.dataset import Dataset, DatasetMissingError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config",
        required=True,
        metavar="BENCHMARK:SCENARIO:SYSTEM",
        help="the run's knobs, e.g. llama2-70b-synthetic:Server:H100-SXM-80GBx1",
    )
    p.add_argument("--kv_tokens", type=int, required=True, help="the KV pool, in tokens")
    p.add_argument(
        "--graph_log",
        type=Path,
        required=True,
        help="a measured run's log with the engine's 'CUDA graphs: ...' lines",
    )
    p.add_argument("--qps", type=float, action="append", required=True, help="repeat to compare")
    p.add_argument("--max_num_seqs", type=int, action="append", help="repeat to compare")
    p.add_argument("--headroom", type=int, action="append",
                   help="admission_headroom_tokens; repeat to compare")  # fmt: skip
    p.add_argument("--max_num_batched_tokens", type=int, action="append",
                   help="tokens a step (mixed graphs no larger, as in the engine); repeat to "
                   "compare")  # fmt: skip
    p.add_argument("--seconds", type=float, default=300.0, help="arrivals over this long")
    p.add_argument("--slowdown", type=float, default=1.0,
                   help="measured engine time / the model's, from a measured run")  # fmt: skip
    p.add_argument("--attention_tbps", type=float, default=2.3, help="KV read rate, TB/s")
    p.add_argument("--seed", type=int, action="append",
                   help="arrival and sample draw (default 0); repeat to compare")  # fmt: skip
    a = p.parse_args(argv)
    knobs = config_knobs(p, a.config)
    positive = {"--qps": min(a.qps), "--seconds": a.seconds, "--slowdown": a.slowdown,
                "--attention_tbps": a.attention_tbps}  # fmt: skip
    for name, value in positive.items():
        if value <= 0:
            p.error(f"{name}={value}: use a value above 0")
    if a.kv_tokens < int(knobs["block_size"]):
        p.error(f"--kv_tokens={a.kv_tokens}: use at least one block of {knobs['block_size']} "
                "tokens")  # fmt: skip
    try:
        times = graph_times_from_log(a.graph_log)
    except (OSError, ValueError) as ex:
        p.error(f"--graph_log: {ex}")
    try:
        data = Dataset.load(Path(str(knobs["preprocessed_dir"])))
    except DatasetMissingError as ex:  # the synthetic set: python -m preprocess.synthetic
        p.error(str(ex))
    w = workload(str(knobs["preset"]), str(knobs["model_opt"]), str(knobs["kv_cache_dtype"]),
                 data.input_lens.tolist(), data.output_lens.tolist())  # fmt: skip
    step_ms = measured_step_ms(times, w.kv_bytes_per_token, a.attention_tbps)
    print(f"[server] {a.config}: KV {a.kv_tokens:,} tokens, steps at the graph replays of "
          f"{a.graph_log} x {a.slowdown}, KV at {a.attention_tbps} TB/s"
          f"{', async scheduling' if knobs['async_scheduling'] else ''}; a model, not a "
          "measurement")  # fmt: skip
    all_seqs = a.max_num_seqs or list(knobs["max_num_seqs"])  # type: ignore[call-overload]
    headrooms = a.headroom or list(knobs["headroom"])  # type: ignore[call-overload]
    step_tokens = a.max_num_batched_tokens or [int(knobs["max_num_batched_tokens"])]
    seeds = a.seed or [0]
    runs = itertools.product(a.qps, all_seqs, headrooms, step_tokens, seeds)
    for qps, seqs, headroom, tokens, seed in runs:
        try:
            config = SchedulerConfig(
                max_num_seqs=seqs, max_num_batched_tokens=tokens,
                admission=str(knobs["admission"]), admission_headroom_tokens=headroom,
            )  # fmt: skip
        except ValueError as ex:  # a count below its minimum, named with its value
            p.error(f"{ex} (--max_num_seqs, --headroom, --max_num_batched_tokens)")
        arrivals = poisson_arrivals(qps, a.seconds, seed)
        pick = pick_samples(len(data), len(arrivals), seed)
        ins, outs = data.input_lens[pick].tolist(), data.output_lens[pick].tolist()
        graph_tokens = mixed_graph_tokens(int(knobs["graph_tokens"]), tokens)
        stats = replay_server(ins, outs, arrivals, a.kv_tokens, config, step_ms, a.slowdown,
                              int(knobs["block_size"]), graph_tokens,
                              bool(knobs["async_scheduling"]))  # fmt: skip
        print(
            f"[server] {qps} qps, max_num_seqs={seqs}, headroom={headroom}, {tokens} tokens a "
            f"step, seed {seed}, {len(arrivals)} queries: {stats.line()}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
