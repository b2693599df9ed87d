"""Where a step's time goes: step timings and torch.profiler's top CUDA kernels.

Builds the native engine with dummy weights of a preset shape, fills `batch` sequences
(prompts of --prompt_len tokens, 200 by default), then times eager and CUDA-graph decode
steps and profiles a few; with --prefill_prompts=N also one prefill step of N prompts, and
--no_fused for the torch ops; --graph_tokens=T also times mixed steps replayed as graphs
(cuda_graph_max_tokens).
Run on the GPU: python -m harness.report.profile_step --preset=llama2-70b --batch=192
"""

from __future__ import annotations

import argparse
import time

import torch

from harness.config.schema import SPARSE_KERNELS


def _engine(a: argparse.Namespace, batch: int, graphs: bool):  # -> LLMEngine
    from harness.engine.llm_engine import EngineArgs, LLMEngine
    from harness.engine.model.llama import PRESETS

    args = EngineArgs(
        weights="dummy", model_config=PRESETS[a.preset], model_opt=a.model_opt,
        dtype="bfloat16", device="cuda", kv_cache_dtype=a.kv_cache_dtype,
        max_num_seqs=batch + 8, max_num_batched_tokens=8192, use_cuda_graph=graphs,
        cuda_graph_max_tokens=a.graph_tokens,
        gpu_memory_utilization=a.gpu_memory_utilization, fused_kernels=not a.no_fused,
        fp8_triton_max_rows=a.fp8_triton_max_rows, sparse_triton_max_rows=a.sparse_triton_max_rows,
        dense_triton_max_rows=a.dense_triton_max_rows,
        async_scheduling=a.async_scheduling, sparse_kernel=a.sparse_kernel,
    )  # fmt: skip
    return LLMEngine.from_args(args)


def _timed_steps(engine, n: int) -> float:  # noqa: ANN001
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        engine.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e3


def _prefilling(scheduler) -> bool:  # noqa: ANN001
    return any(r.num_computed_tokens < r.num_tokens - 1 for r in scheduler.running)


def prefill_what_fits(engine) -> None:  # noqa: ANN001
    """Step until every added prompt is prefilled, or until a step admits no one and leaves no
    prompt half done: the rest do not fit the KV cache, and the batch that does is profiled."""
    sched = engine.scheduler
    while sched.num_waiting or _prefilling(sched):
        num_running = len(sched.running)
        engine.step()
        if sched.num_waiting and not _prefilling(sched) and len(sched.running) == num_running:
            break


def profile(a: argparse.Namespace, batch: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from harness.engine.request import SamplingParams

    engine = _engine(a, batch, graphs=not a.no_graphs)
    sp = SamplingParams(max_new_tokens=1000, min_new_tokens=1000, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    for i in range(batch):
        engine.add_request(i, torch.randint(3, 32000, (a.prompt_len,), generator=g).tolist(), sp)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prefill_what_fits(engine)  # mixed steps
    torch.cuda.synchronize()
    prefill_s = time.perf_counter() - t0
    engine.step()
    ms = _timed_steps(engine, 10)
    running = len(engine.scheduler.running)  # fewer than batch when the KV cache is too small
    fit = "" if running == batch else f" (only {running} of {batch} fit the KV cache)"
    print(f"[profile] {a.preset} {a.model_opt} kv={a.kv_cache_dtype} batch={batch}{fit} "
          f"fused={not a.no_fused} async={a.async_scheduling}"
          f"{'' if a.sparse_kernel == 'triton' else f' sparse_kernel={a.sparse_kernel}'}"
          f": prefill of "
          f"{batch}x{a.prompt_len} tokens {prefill_s:.2f} s; decode step {ms:.2f} ms "
          f"({'graphs' if engine.model_runner.graphs else 'eager'}) = "
          f"{running / ms * 1e3:,.0f} tok/s", flush=True)  # fmt: skip
    # Before the mixed steps below: each leaves one more sequence decoding.
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _timed_steps(engine, 5)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.top)
    print(f"[profile] top kernels, 5 decode steps, {running} sequences:\n{table}", flush=True)
    runner = engine.model_runner
    if runner.graphs is not None:  # the same step without graphs
        graphs, runner.graphs = runner.graphs, None
        print(f"[profile]   eager decode step {_timed_steps(engine, 5):.2f} ms", flush=True)
        runner.graphs = graphs
    # A mixed step: every decode plus one new 200-token prompt (Offline's steady state).
    graphs = runner.graphs
    modes = ["eager"] + (["graph"] if graphs is not None and graphs.mixed_sizes else [])
    for j in range(6):
        mode = modes[j % len(modes)]
        if graphs is not None:  # "eager": no mixed graph fits (decode graphs stay)
            graphs.max_tokens = graphs.mixed_sizes[-1] if mode == "graph" else 0
        engine.add_request(batch + j, torch.randint(3, 32000, (200,), generator=g).tolist(), sp)
        print(f"[profile]   mixed step (+1 prefill of 200, {mode}) "
              f"{_timed_steps(engine, 1):.2f} ms", flush=True)  # fmt: skip
    if a.prefill_prompts:
        _profile_prefill(a, engine, g)
    del engine, runner
    torch.cuda.empty_cache()


def _profile_prefill(a: argparse.Namespace, engine, g: torch.Generator) -> None:  # noqa: ANN001
    """One prefill-only step of prefill_prompts x prefill_len tokens, timed and profiled."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from harness.engine.request import SamplingParams

    sched = engine.scheduler  # drop the decodes: prefill only from here
    for req in sched.running:
        sched.block_manager.free_request(req)
    sched.running.clear()
    sched.requests.clear()
    sp = SamplingParams(max_new_tokens=1, min_new_tokens=1, ignore_eos=True)
    n, length = a.prefill_prompts, a.prefill_len

    def one_step(base: int) -> float:
        for i in range(n):
            engine.add_request(base + i, torch.randint(3, 32000, (length,), generator=g).tolist(),
                               sp)  # fmt: skip
        return _timed_steps(engine, 1)

    one_step(10**6)  # warm-up: kernels compile for these shapes
    ms = one_step(2 * 10**6)
    print(f"[profile] prefill step {n}x{length} tokens: {ms:.1f} ms = "
          f"{n * length / ms * 1e3:,.0f} prompt tok/s", flush=True)  # fmt: skip
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        one_step(3 * 10**6)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.top)
    print(f"[profile] top kernels, one prefill step of {n}x{length}:\n{table}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from harness.cli import _setup_logging
    from harness.engine.llm_engine import EngineArgs
    from harness.engine.model.llama import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama2-7b", choices=sorted(PRESETS))
    p.add_argument("--model_opt", default="Dense")
    p.add_argument("--kv_cache_dtype", default="auto")
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--gpu_memory_utilization", type=float, default=0.95)
    p.add_argument("--no_graphs", action="store_true")
    p.add_argument("--graph_tokens", type=int, default=0, help="mixed-step graphs up to T tokens")
    p.add_argument("--no_fused", action="store_true", help="torch ops instead of Triton kernels")
    defaults = EngineArgs()
    # Triton GEMM thresholds
    for knob in ("fp8_triton_max_rows", "sparse_triton_max_rows", "dense_triton_max_rows"):
        p.add_argument(f"--{knob}", type=int, default=getattr(defaults, knob))
    p.add_argument("--async_scheduling", action="store_true", help="queue steps ahead")
    kernels_help = "Sparse: the 2:4 weights' kernel (engine.sparse_kernel)"
    p.add_argument("--sparse_kernel", default="triton", choices=SPARSE_KERNELS, help=kernels_help)
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--prompt_len", type=int, default=200, help="context of the decode steps")
    p.add_argument("--prefill_prompts", type=int, default=0, help="also profile a prefill step")
    p.add_argument("--prefill_len", type=int, default=256)
    a = p.parse_args(argv)
    longest = PRESETS[a.preset].max_position_embeddings - 1000  # decodes run up to 1,000 more
    if not 1 <= a.prompt_len <= longest:
        p.error(f"--prompt_len={a.prompt_len}: use 1..{longest} for {a.preset}")
    _setup_logging(False)  # the engine's lines too: KV size, CUDA-graph replay times
    for batch in a.batch or [64]:
        profile(a, batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
