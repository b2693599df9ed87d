"""`python -m harness bench`: LoadGen speed runs through the run_harness flow, with roofline.

Each (benchmark, backend, model_opt, scenario) runs in its own child process (one LoadGen
test per process, as run_harness does); this parent prints tokens/s, the roofline bound for
that workload on this GPU and the achieved fraction, and writes bench.json per run.
Examples (docs/benchmarks.md):
  python -m harness bench --compare=hf,torch --sample_limit=64 --min_query_count=64
  python -m harness bench --compare=hf,torch,torch:--cpu_gemm=mkl   # a variant's own flags
  python -m harness bench --benchmarks=llama2-70b-synthetic --model_opts=FP8,Sparse \
      --scenarios=Offline,Server
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.config.schema import HarnessConfig

logger = logging.getLogger(__name__)

KV_LINE = re.compile(r"KV cache: (\d+) blocks x (\d+) tokens = (\d+) tokens")
# The torch engine's closing line (TorchBackend.stop), one per engine copy: where its time went.
ENGINE_LINE = re.compile(
    r"engine: (\d+) tokens in (\d+) steps over ([\d.]+) s; steady state \(10-90% of tokens\) "
    r"([\d.]+) tokens/s; (\d+) preemptions; decode-only steps (\d+) \(([\d.]+) s\), steps with "
    r"prompt tokens (\d+) \(([\d.]+) s\); per step: queue ([\d.]+) ms, wait for tokens "
    r"([\d.]+) ms, apply ([\d.]+) ms(?: \(async scheduling\))?"
    r"(?:; GPU memory at the end: ([\d.]+) GiB free of ([\d.]+) GiB"
    r"(?:, ([\d.]+) GiB at the lowest)?)?"
)
# ... and its next line: the decode-only steps grouped by how many sequences they ran.
BY_SEQUENCES_LINE = re.compile(r"engine decode-only steps by sequences: (.+)$")
# ... how long each share of its tokens took (the ramp, the middle, the drain) ...
BY_SHARE_LINE = re.compile(r"engine time by share of its tokens: (.+)$")
# ... and on CUDA how much of the steps' time the GPU worked.
GPU_TIME_LINE = re.compile(r"engine GPU time \(forward to sampled tokens, CUDA events\): (.+)$")
ENGINE_FIELDS = (
    "tokens", "steps", "span_s", "steady_tokens_per_second", "preemptions", "decode_steps",
    "decode_s", "prompt_steps", "prompt_s", "queue_ms", "wait_ms", "apply_ms",
    "gpu_free_gib_at_end", "gpu_total_gib", "gpu_lowest_free_gib",
)  # fmt: skip


def parse_engine_line(line: str) -> dict[str, float] | None:
    """The engine's closing log line as numbers (ENGINE_FIELDS), or None if line is not it."""
    m = ENGINE_LINE.search(line)
    if m is None:
        return None
    return {
        k: float(v) if "." in v else int(v)  # counts stay integers
        for k, v in zip(ENGINE_FIELDS, m.groups(), strict=True)
        if v is not None  # GPU memory: CUDA runs only
    }


def _never_used(engine: dict[str, float]) -> str:
    """The GPU memory an engine copy never used: its lowest free, the graphs' capture included,
    where its line has it (older logs: the free memory at the end)."""
    gib = engine.get("gpu_lowest_free_gib", engine.get("gpu_free_gib_at_end"))
    return "" if gib is None else f"; {gib:.2f} GiB of GPU memory never used"


@dataclass
class BenchResult:
    label: str
    run_dir: Path
    tokens_per_second: float
    valid: bool
    returncode: int
    kv_tokens: int = 0
    # parse_engine_line per engine copy, with its decode_steps_by_sequences,
    # time_by_token_share and gpu_time lines
    engines: list[dict[str, float | str]] = field(default_factory=list)
    latencies: dict[str, float] = field(default_factory=dict)  # p99 TTFT/TPOT, ms
    roofline: str = ""
    fraction: float = 0.0
    load: str = ""  # Server / Interactive: load_line

    @property
    def engine_steady_tps(self) -> float:
        """torch engine(s): tokens/s between 10% and 90% of each copy's tokens, summed."""
        return sum(e["steady_tokens_per_second"] for e in self.engines)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m harness bench", allow_abbrev=False)
    p.add_argument("--benchmarks", default="smollm2-135m")
    p.add_argument("--scenarios", default="Offline")
    p.add_argument(
        "--compare", default="",
        help="backends, e.g. hf,torch (default: config's); an entry may carry its own flags "
        "after colons: torch:--cpu_gemm=mkl:--max_num_seqs=64",
    )  # fmt: skip
    p.add_argument("--model_opts", default="", help="e.g. FP8,Sparse (default: config's)")
    p.add_argument("--system_name", default=None)
    p.add_argument("--log_dir", default="build/logs/bench")
    p.add_argument(
        "--server_fraction", type=float, default=0.0,
        help="Server target_qps = this x the Offline tokens/s just measured / mean output",
    )  # fmt: skip
    return p.parse_known_args(argv)


def _csv(s: str) -> list[str]:
    return [x for x in (v.strip() for v in s.split(",")) if x]


def _configs(
    a: argparse.Namespace, extra: list[str], scenario: str
) -> list[tuple[HarnessConfig, list[str]]]:
    """(config, the entry's own flags) for every --compare entry and model_opt."""
    from harness.cli import resolve_configs
    from harness.run_args import parse_run_args

    out = []
    for entry in _csv(a.compare) or [""]:
        backend, *flags = entry.split(":")
        for opt in _csv(a.model_opts) or [""]:
            argv = [f"--benchmarks={a.benchmarks}", f"--scenarios={scenario}", *extra, *flags]
            argv += [f"--backend={backend}"] if backend else []
            argv += [f"--model_opt={opt}"] if opt else []
            argv += [f"--system_name={a.system_name}"] if a.system_name else []
            out += [(cfg, flags) for cfg in resolve_configs(parse_run_args(argv))]
    return out


def ensure_inputs(cfg: HarnessConfig) -> None:
    """Dataset (the synthetic set for dummy-weight runs without one), checked against
    engine.max_model_len before the engine dir is built."""
    from harness.cli import check_model_len, generate_engine, preprocess_data
    from harness.dataset import Dataset

    b = cfg.benchmark
    if not (Path(b.preprocessed_dir) / "input_lens.npy").is_file():
        if cfg.engine.dummy_weights and not Path(b.dataset_path).is_file():
            from preprocess.synthetic import build

            build(Path(b.dataset_path), Path(b.preprocessed_dir))
        else:
            preprocess_data(cfg, force=False)
    check_model_len(cfg, Dataset.load(Path(b.preprocessed_dir)))
    if cfg.engine.backend == "torch":
        generate_engine(cfg, force=False)


def run_child(
    cfg: HarnessConfig, run_dir: Path, command: str
) -> tuple[int, int, list[dict[str, float | str]]]:
    """One LoadGen test in a child process; echoes its output; returns (rc, KV tokens, the
    engine copies' closing lines, parsed)."""
    from harness.config.loader import to_yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    child = [sys.executable, "-m", "harness", "_run_one", str(run_dir), command]
    kv_tokens, engines = 0, []
    with subprocess.Popen(
        child, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        with open(run_dir / "bench_child.log", "w") as log:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                if m := KV_LINE.search(line):
                    kv_tokens = int(m.group(3))
                if (engine := parse_engine_line(line)) is not None:
                    engines.append(engine)
                elif (m := BY_SEQUENCES_LINE.search(line)) and engines:
                    engines[-1]["decode_steps_by_sequences"] = m.group(1)
                elif (m := BY_SHARE_LINE.search(line)) and engines:
                    engines[-1]["time_by_token_share"] = m.group(1)
                elif (m := GPU_TIME_LINE.search(line)) and engines:
                    engines[-1]["gpu_time"] = m.group(1)
        rc = proc.wait()
    return rc, kv_tokens, engines


def sample_lengths(cfg: HarnessConfig) -> tuple[list[int], list[int]]:
    """Input and reference output tokens of the samples the run may draw."""
    import numpy as np

    pre = Path(cfg.benchmark.preprocessed_dir)
    n = cfg.run.sample_limit or None
    ins = np.load(pre / "input_lens.npy")[:n].tolist()
    return ins, np.load(pre / "output_lens.npy")[:n].tolist()


def mean_lengths(
    cfg: HarnessConfig, lengths: tuple[list[int], list[int]] | None = None
) -> tuple[float, float]:
    """Mean input and reference output tokens of the samples the run may draw (lengths: what
    sample_lengths(cfg) gave, if the caller has them)."""
    ins, outs = lengths or sample_lengths(cfg)
    return sum(ins) / len(ins), sum(outs) / len(outs)


def load_line(scheduled_qps: float, completed_qps: float, mean_out: float = 0.0,
              steady_tps: float = 0.0, queries: int = 0) -> str:  # fmt: skip
    """Server / Interactive: the queries LoadGen scheduled and completed a second and, where
    answers have the reference lengths (dummy weights: mean_out > 0), the tokens/s that load
    offered against the engine's steady state. An engine below the offered load falls behind:
    its queue, and with it TTFT, grows for the rest of the run. With the query count, when the
    last query issued was scheduled and done: LoadGen's completed rates (samples and tokens)
    divide by the latter, so that one query's latency moves the run's figure."""
    line = f"load: LoadGen scheduled {scheduled_qps:.2f} queries/s, completed {completed_qps:.2f}"
    if mean_out:
        offered = scheduled_qps * mean_out
        line += f"; about {offered:,.0f} tokens/s offered at the mean output of {mean_out:.0f}"
        if steady_tps:
            line += f", engine steady state {steady_tps:,.1f} = {steady_tps / offered:.1%}"
    if queries > 1 and scheduled_qps > 0 and completed_qps > 0:
        line += (f"; the last query issued was scheduled at {(queries - 1) / scheduled_qps:.1f} s "
                 f"and done at {(queries - 1) / completed_qps:.1f} s, the completed rates' "
                 "divisor")  # fmt: skip
    return line


def workload_roofline(cfg: HarnessConfig, kv_tokens: int, concurrency_cap: int = 0):
    """The Roofline of this config on this GPU, or None (CPU, unknown GPU or model)."""
    from harness.engine.llm_engine import EngineArgs, resolve_model_config
    from harness.engine.quant.sparse24 import STORED_BYTES_PER_WEIGHT
    from harness.report.roofline import Workload, decode_context, peaks_for, roofline

    try:
        import torch

        if not torch.cuda.is_available():
            return None
        peaks = peaks_for(torch.cuda.get_device_name(0))
    except ImportError:
        return None
    if peaks is None:
        return None
    from harness.engine.builder import default_engine_dir

    args = EngineArgs(model_path=str(default_engine_dir(cfg)), weights="dummy")
    m = resolve_model_config(args, preset=cfg.benchmark.name)
    lengths = sample_lengths(cfg)
    mean_in, mean_out = mean_lengths(cfg, lengths)
    context = decode_context(*lengths)  # what a resident request holds, on average
    fp8 = cfg.engine.model_opt in ("FP8", "Sparse")
    act_bytes = 2 if cfg.engine.dtype in ("bfloat16", "float16") else 4
    weight_b = (
        STORED_BYTES_PER_WEIGHT if cfg.engine.model_opt == "Sparse" else 1 if fp8 else act_bytes
    )
    kv_b = 1 if cfg.engine.kv_cache_dtype == "fp8" else act_bytes
    seqs = cfg.engine.max_num_seqs
    if kv_tokens:
        seqs = min(seqs, kv_tokens / context)
    if concurrency_cap:
        seqs = min(seqs, concurrency_cap)
    w = Workload(
        m.num_hidden_layers, m.hidden_size, m.intermediate_size, m.num_attention_heads,
        m.num_key_value_heads, m.head_dim, m.vocab_size, weight_b, kv_b,
        mean_in, mean_out, max(seqs, 1.0), context,
    )  # fmt: skip
    return roofline(w, peaks, fp8_gemm=fp8)


def new_run_dir(stamp: Path, label: str) -> Path:
    """A folder named after the label that does not exist yet: an entry repeated in one bench
    gets -run2, -run3, ... (logs are never overwritten)."""
    name = re.sub(r"[^\w.=-]+", "-", label.replace(" ", "-")).strip("-")
    run_dir, repeat = stamp / name, 1
    while run_dir.exists():
        repeat += 1
        run_dir = stamp / f"{name}-run{repeat}"
    return run_dir


def bench_one(
    cfg: HarnessConfig, stamp: Path, command: str, flags: Sequence[str] = ()
) -> BenchResult:
    from harness.loadgen.logs import parse_detail

    e = cfg.engine
    label = " ".join([cfg.benchmark.name, cfg.scenario.scenario, e.backend, e.model_opt, *flags])
    run_dir = new_run_dir(stamp, label)
    ensure_inputs(cfg)
    rc, kv_tokens, engines = run_child(cfg, run_dir, command)
    detail = parse_detail(run_dir)
    key = "result_tokens_per_second"
    if cfg.scenario.loadgen_scenario != "Offline":
        key = "result_completed_tokens_per_second"
    tps = float(detail.get(key) or 0.0)
    lat = {
        k: float(v) / 1e6 for k, v in detail.items()
        if "99.00" in k and ("first_token" in k or "output_token" in k or k.startswith(
            "result_99.00_percentile_latency"))
    }  # fmt: skip
    res = BenchResult(label, run_dir, tps, detail.get("result_validity") == "VALID", rc,
                      kv_tokens, engines, lat)  # fmt: skip
    cap = 1 if cfg.scenario.loadgen_scenario == "SingleStream" else 0
    roof = workload_roofline(cfg, kv_tokens, cap) if e.device == "cuda" else None
    if roof is not None:
        res.roofline = roof.line(tps)
        res.fraction = roof.fraction(tps)
    scheduled = detail.get("result_scheduled_samples_per_sec")
    if scheduled:
        mean_out = mean_lengths(cfg)[1] if e.dummy_weights else 0.0  # else EOS sets lengths
        completed = float(detail.get("result_completed_samples_per_sec") or 0.0)
        queries = int(detail.get("result_query_count") or 0)
        res.load = load_line(float(scheduled), completed, mean_out, res.engine_steady_tps, queries)
    summary = {
        "label": label, "tokens_per_second": tps, "valid": res.valid, "returncode": rc,
        "kv_tokens": kv_tokens, "engine_steady_tokens_per_second": res.engine_steady_tps,
        "engines": engines, "p99_ms": lat,
        "roofline": roof.as_dict() if roof else None, "roofline_fraction": res.fraction,
        "scheduled_qps": float(scheduled) if scheduled else None, "command": command,
    }  # fmt: skip
    (run_dir / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    return res


def _print_result(r: BenchResult) -> None:
    validity = "VALID" if r.valid else "INVALID"
    lat = ", ".join(f"{k.replace('result_', '')}={v:.1f} ms" for k, v in r.latencies.items())
    print(f"[bench] {r.label}: {r.tokens_per_second:,.1f} tokens/s ({validity}, rc={r.returncode})"
          + (f"; p99 {lat}" if lat else ""), flush=True)  # fmt: skip
    if r.engine_steady_tps:
        print(f"[bench]   engine steady state (10-90% of its tokens): "
              f"{r.engine_steady_tps:,.1f} tokens/s (engine-side timing, not a LoadGen figure)",
              flush=True)  # fmt: skip
    for e in r.engines:  # where the engine's time went (one line per copy)
        dec, pre = e["decode_steps"], e["prompt_steps"]
        print(f"[bench]   engine time: {e['tokens'] / max(e['steps'], 1):.0f} tokens a step on "
              f"average; {dec:.0f} decode-only steps in {e['decode_s']:.1f} s "
              f"({e['decode_s'] / max(dec, 1) * 1e3:.1f} ms each), {pre:.0f} steps with prompt "
              f"tokens in {e['prompt_s']:.1f} s ({e['prompt_s'] / max(pre, 1) * 1e3:.1f} ms "
              f"each); per step the host queues {e['queue_ms']:.2f} ms, waits "
              f"{e['wait_ms']:.2f} ms for tokens, applies {e['apply_ms']:.2f} ms; "
              f"{e['preemptions']:.0f} preemptions"
              + _never_used(e), flush=True)  # fmt: skip
        if "decode_steps_by_sequences" in e:
            print(f"[bench]   decode-only steps by sequences: {e['decode_steps_by_sequences']}",
                  flush=True)  # fmt: skip
        if "time_by_token_share" in e:
            print(f"[bench]   time by share of its tokens: {e['time_by_token_share']}", flush=True)
        if "gpu_time" in e:
            print(f"[bench]   GPU time (forward to sampled tokens): {e['gpu_time']}", flush=True)
    if r.load:
        print(f"[bench]   {r.load}", flush=True)
    if r.roofline:
        print(f"[bench]   {r.roofline}", flush=True)


def offline_share_line(r: BenchResult, offline_tps: float) -> str:
    """A Server or Interactive run's completed tokens/s as a share of the same engine's Offline
    tokens/s measured earlier in this bench (issue 6's Server target: 85%)."""
    return (f"[bench] {r.label}: {r.tokens_per_second:,.1f} tokens/s = "
            f"{r.tokens_per_second / offline_tps:.1%} of this bench's Offline "
            f"{offline_tps:,.1f} (same engine, same run)")  # fmt: skip


def main(argv: list[str]) -> int:
    from harness.cli import _setup_logging
    from harness.loadgen.logs import new_timestamp_dir

    a, extra = _parse(argv)
    _setup_logging(False)
    command = "python -m harness " + shlex.join(["bench", *argv])
    # Every run's config is resolved first: a bad flag stops the bench before any run or log.
    plan = [(s, cfg, flags) for s in _csv(a.scenarios) for cfg, flags in _configs(a, extra, s)]
    stamp = new_timestamp_dir(Path(a.log_dir))
    runs: list[tuple[str, BenchResult]] = []  # (scenario, result)
    offline_tps: dict[str, float] = {}
    shares: list[str] = []  # Server / Interactive against this bench's Offline, same engine
    for scenario, cfg, flags in plan:
        engine = f"{cfg.engine.backend}/{cfg.engine.model_opt}"
        if scenario == "Server" and a.server_fraction > 0:
            cfg = _server_from_offline(cfg, offline_tps, a.server_fraction)
        r = bench_one(cfg, stamp, command, flags)
        if scenario == "Offline":
            offline_tps[engine] = r.tokens_per_second
        elif offline_tps.get(engine, 0) > 0:
            shares.append(offline_share_line(r, offline_tps[engine]))
        runs.append((scenario, r))
        _print_result(r)
    print("\n[bench] summary", flush=True)
    for _, r in runs:
        _print_result(r)
    for line in shares:
        print(line, flush=True)
    if a.compare or a.model_opts:  # each run against the first of its scenario
        firsts: dict[str, BenchResult] = {}
        for scenario, r in runs:
            base = firsts.setdefault(scenario, r)
            if r is not base and base.tokens_per_second > 0:
                ratio = r.tokens_per_second / base.tokens_per_second
                print(f"[bench] ratio {r.label} / {base.label}: {ratio:.2f}x", flush=True)
    return 0 if all(r.returncode == 0 for _, r in runs) else 1


def _server_from_offline(
    cfg: HarnessConfig, offline_tps: dict[str, float], fraction: float
) -> HarnessConfig:
    """Server target_qps from the Offline tokens/s measured in this bench (same engine)."""
    import dataclasses

    tps = offline_tps.get(f"{cfg.engine.backend}/{cfg.engine.model_opt}", 0.0)
    if tps <= 0:
        return cfg
    mean_out = mean_lengths(cfg)[1]
    qps = round(fraction * tps / mean_out, 3)
    logger.info("Server target_qps %.3f = %.2f x %.1f tok/s / %.1f", qps, fraction, tps, mean_out)
    return dataclasses.replace(cfg, scenario=dataclasses.replace(cfg.scenario, target_qps=qps))
