"""Runs one engine over a tensor-parallel group: one process per rank (NCCL on GPU, gloo on CPU).

Rank 0 (the caller's process) owns the scheduler; it broadcasts each step's SchedulerOutput
to ranks 1..N-1, which run the same forward and sample the same tokens (the lm_head is
replicated) but never read them on the host.
"""

from __future__ import annotations

import atexit
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open

from harness.engine.llm_engine import (
    DTYPES,
    EngineArgs,
    LLMEngine,
    build_runner,
    build_scheduler,
    check_device,
    engine_quant_config,
    resolve_model_config,
)
from harness.engine.loader import (
    CheckpointError,
    build_model,
    init_dummy_weights,
    safetensors_files,
)
from harness.engine.model.llama import LlamaConfig, LlamaForCausalLM
from harness.engine.model_runner import LaunchedStep, ModelRunner
from harness.engine.outputs import ModelRunnerOutput, SchedulerOutput
from harness.engine.parallel.tp import ShardSpec, TensorParallelError, apply_tp, check_tp, take
from harness.engine.quant.base import QuantConfig

logger = logging.getLogger(__name__)

__all__ = ["TensorParallelError", "launch_tensor_parallel", "load_tp_model"]

DEFAULT_TIMEOUT_S = 1800.0  # a collective waits this long (70B loads take minutes per rank)
WATCH_S = 0.5  # how often rank 0 checks that the other ranks still run


def rank_device(device: str, rank: int) -> torch.device:
    """cuda -> cuda:rank; cuda:k -> cuda:(k + rank); cpu stays cpu."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    return torch.device("cuda", (dev.index or 0) + rank)


def load_tp_model(
    config: LlamaConfig, quant: QuantConfig, dtype: torch.dtype, device: torch.device,
    weights: str, path: str, seed: int, rank: int, world: int,
) -> LlamaForCausalLM:  # fmt: skip
    """Rank `rank`'s shard of the model, ready for inference on `device`.

    engine: shapes sharded on the meta device, then only this rank's slices are read from the
    files (no full copy anywhere). dummy: random shard. hf: full model on the host, then cut.
    """
    if weights == "hf":
        model = build_model(config, quant, dtype, torch.device("cpu"), "hf", Path(path),
                            for_inference=False)  # fmt: skip
        apply_tp(model, rank, world)
        model = model.to(device)
        model.init_buffers(device, dtype)
    else:
        with torch.device("meta"):
            model = LlamaForCausalLM(config, quant, dtype)
        specs = apply_tp(model, rank, world)
        model = model.to_empty(device=device)
        model.init_buffers(device, dtype)
        if weights == "dummy":
            init_dummy_weights(model, seed + rank)
        elif weights == "engine":
            _load_engine_shard(model, Path(path), specs)
        else:
            raise ValueError(f"weights={weights!r}: use hf, engine or dummy")
        if config.tie_word_embeddings:
            model.tie_weights()
    model.process_weights_after_loading()
    logger.info("TP rank %d/%d: %s shard on %s", rank, world, weights, device)
    return model.eval()


@torch.inference_mode()
def _load_engine_shard(model: LlamaForCausalLM, folder: Path, specs: dict[str, ShardSpec]) -> None:
    params = dict(model.named_parameters())
    pending = set(model.checkpoint_state_dict())
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name not in params:
                    raise CheckpointError(f"{folder}: unexpected tensor {name!r}; rebuild it")
                spec = specs.get(name)
                tensor = take(f.get_slice(name), spec) if spec else f.get_tensor(name)
                params[name].copy_(tensor)
                pending.discard(name)
    if pending:
        raise CheckpointError(
            f"{folder}: {len(pending)} tensors missing (e.g. {sorted(pending)[:3]}); rebuild it"
        )


def _build_runner(args: EngineArgs, rank: int, world: int, cpu_group) -> ModelRunner:  # noqa: ANN001
    """This rank's model shard, KV cache and CUDA graphs; the ranks agree on the number of
    blocks and on which decode graphs to keep."""
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    device = rank_device(args.device, rank)
    config = resolve_model_config(args)
    quant = engine_quant_config(args, config, device)
    model = load_tp_model(config, quant, DTYPES[args.dtype], device, args.weights,
                          args.model_path, args.seed, rank, world)  # fmt: skip
    if device.type == "cuda":  # NCCL's lazy init must not happen inside a graph capture
        dist.all_reduce(torch.zeros(1, device=device))
    return build_runner(
        args, model, device, lambda values, op: agree_across_ranks(values, op, cpu_group)
    )


def agree_across_ranks(values: list[float], op: str, group) -> list[float]:  # noqa: ANN001
    """Every rank's `values` reduced elementwise by op ("min" or "max") over `group`: each rank
    gets the same list (the KV blocks every rank can hold, the slowest graph replays)."""
    reduce_op = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=reduce_op, group=group)
    return tensor.tolist()


class BroadcastingRunner:
    """Rank 0's model runner: sends each step to the other ranks, then runs it itself."""

    def __init__(self, runner: ModelRunner, cpu_group, procs: list) -> None:  # noqa: ANN001
        self.runner = runner
        self.model = runner.model
        self.kv = runner.kv
        self.device = runner.device
        self.graphs = runner.graphs
        self.graph_replays = runner.graph_replays  # the same list, counted by runner.launch
        self._cpu_group = cpu_group
        self._procs = procs
        self.is_shut_down = False

    def watch_ranks(self, on_rank_exit: Callable[[str], None] | None) -> None:
        """A rank that exits before shutdown leaves rank 0 waiting in its next collective
        (up to the group's timeout, 30 min): a watchdog thread ends the other ranks at once and
        calls on_rank_exit with what happened (the torch backend in its own process reports it
        and exits, so the run fails now; process_backend.py)."""

        def watch() -> None:
            while not self.is_shut_down:
                for rank, proc in enumerate(self._procs, start=1):
                    if proc.exitcode is None or self.is_shut_down:
                        continue
                    msg = (f"tensor-parallel rank {rank} (pid {proc.pid}, {self.device.type}) "
                           f"exited with code {proc.exitcode} during the run")  # fmt: skip
                    logger.error("%s; ending the other ranks", msg)
                    for other in self._procs:
                        other.kill()
                    if on_rank_exit is not None:
                        on_rank_exit(msg)
                    return
                time.sleep(WATCH_S)

        threading.Thread(target=watch, name="tp-rank-watch", daemon=True).start()

    def launch(self, sched: SchedulerOutput) -> LaunchedStep:
        dist.broadcast_object_list([sched], src=0, group=self._cpu_group)
        return self.runner.launch(sched)

    def collect(self, step: LaunchedStep) -> ModelRunnerOutput:
        return self.runner.collect(step)

    def shutdown(self) -> None:
        """Tell the other ranks to exit, wait for them, leave the process group."""
        if self.is_shut_down:
            return
        self.is_shut_down = True
        try:
            if all(p.is_alive() for p in self._procs):  # else the watchdog has ended them
                dist.broadcast_object_list([None], src=0, group=self._cpu_group)
        finally:
            for p in self._procs:
                p.join(timeout=30)
                if p.is_alive():
                    logger.warning("TP rank process %d did not exit; terminating it", p.pid)
                    p.terminate()
            dist.destroy_process_group()


def _worker_main(
    rank: int, world: int, init_method: str, backend: str, args: EngineArgs, timeout_s: float
) -> None:
    """Ranks 1..N-1: mirror rank 0's forward passes until it broadcasts None."""
    logging.basicConfig(level=logging.INFO, format=f"[tp rank {rank}] %(levelname)s %(message)s")
    cpu_group = _init_group(rank, world, init_method, backend, args, timeout_s)
    runner = _build_runner(args, rank, world, cpu_group)
    while True:
        box: list[SchedulerOutput | None] = [None]
        dist.broadcast_object_list(box, src=0, group=cpu_group)
        if box[0] is None:
            break
        # Queued, never collected: every rank samples the same tokens from the same replicated
        # logits, so a pending token (async scheduling) is on each rank's device already.
        runner.launch(box[0])
    dist.destroy_process_group()


def _init_group(
    rank: int, world: int, init_method: str, backend: str, args: EngineArgs, timeout_s: float
):  # noqa: ANN202 (-> ProcessGroup)
    device = rank_device(args.device, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )  # fmt: skip
    # Step broadcasts are small pickles: a gloo group keeps them off the GPU stream.
    return dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD


def launch_tensor_parallel(
    args: EngineArgs, tp: int, timeout_s: float = DEFAULT_TIMEOUT_S,
    on_rank_exit: Callable[[str], None] | None = None,
) -> LLMEngine:  # fmt: skip
    """An LLMEngine whose model is split over `tp` ranks: this process is rank 0, the others
    are spawned here. Call `engine.model_runner.shutdown()` when done (also run at exit).
    on_rank_exit(message): called (from a watchdog thread) if a rank dies during the run."""
    check_tp(resolve_model_config(args), tp)
    check_device(args)
    is_cuda = torch.device(args.device).type == "cuda"
    if is_cuda and rank_device(args.device, tp - 1).index >= torch.cuda.device_count():
        raise TensorParallelError(
            f"tensor_parallelism={tp} on {args.device} needs GPUs up to "
            f"{rank_device(args.device, tp - 1)}; this machine has {torch.cuda.device_count()}"
        )
    if dist.is_initialized():
        raise TensorParallelError(
            "a torch.distributed group already exists in this process; one TP engine per "
            "process (use data_parallelism=1 with tensor_parallelism > 1)"
        )
    backend = "nccl" if is_cuda else "gloo"
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(r, tp, init_method, backend, args, timeout_s),
            name=f"tp-rank-{r}",
            daemon=True,
        )  # fmt: skip
        for r in range(1, tp)
    ]
    for p in procs:
        p.start()
    cpu_group = _init_group(0, tp, init_method, backend, args, timeout_s)
    runner = _build_runner(args, 0, tp, cpu_group)
    scheduler = build_scheduler(args, runner)
    broadcasting = BroadcastingRunner(runner, cpu_group, procs)
    atexit.register(broadcasting.shutdown)
    broadcasting.watch_ranks(on_rank_exit)
    logger.info("tensor parallel engine: %d ranks (%s), %d KV blocks per rank",
                tp, backend, runner.kv.num_blocks)  # fmt: skip
    return LLMEngine(scheduler, broadcasting, args.async_scheduling)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
