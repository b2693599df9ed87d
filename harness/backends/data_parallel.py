"""Data parallelism: N independent engine instances (one per GPU, or per TP group) behind one
Backend.

Owns request placement and event fan-in; each instance is an ordinary backend with its own
worker thread (on GPUs, in a process of its own). It knows nothing of LoadGen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from harness.backends.base import Backend, BackendError, GenerationRequest, OutputSink
from harness.backends.torch_backend import TorchBackend
from harness.config.schema import HarnessConfig

logger = logging.getLogger(__name__)

InstanceFactory = Callable[[HarnessConfig, Path | None], Backend]


class _InstanceSink:
    """Forwards one instance's events to the shared sink and counts its outstanding work."""

    def __init__(self, owner: DataParallelBackend, index: int) -> None:
        self.owner = owner
        self.index = index

    def on_first_token(self, request_id: int, token_id: int) -> None:
        with self.owner._sink_lock:
            self.owner.sink.on_first_token(request_id, token_id)

    def on_finished(self, request_id: int, token_ids: list[int]) -> None:
        with self.owner._lock:
            self.owner.num_outstanding[self.index] -= 1
        with self.owner._sink_lock:
            self.owner.sink.on_finished(request_id, token_ids)

    def on_failed(self, error: str) -> None:
        with self.owner._sink_lock:
            self.owner.sink.on_failed(f"data parallel instance {self.index}: {error}")


class DataParallelBackend:
    """Spreads requests over N backends by *least outstanding requests*.

    Why not round-robin: output lengths vary tenfold, so an instance that drew long requests
    falls behind; sending each new request to the instance with the fewest unfinished ones
    (ties: the next index after the last pick) keeps Server-scenario queues even. For Offline
    (all samples in one submit) it reduces to an even split of counts.
    """

    name = "data_parallel"

    def __init__(self, instances: Sequence[Backend]) -> None:
        if not instances:
            raise BackendError("data_parallelism needs at least one instance; set it to >= 1")
        self.instances = list(instances)
        self.sink: OutputSink | None = None
        self.num_outstanding = [0] * len(self.instances)  # per instance: submitted - finished
        self.num_submitted = [0] * len(self.instances)
        self._lock = threading.Lock()  # placement counters
        self._sink_lock = threading.Lock()  # one event at a time into the shared sink
        self._last_pick = -1

    @classmethod
    def from_config(
        cls,
        cfg: HarnessConfig,
        engine_dir: Path | None = None,
        factory: InstanceFactory | None = None,
    ) -> DataParallelBackend:
        """cfg.engine.data_parallelism instances of the same engine; with device=cuda, instance
        i owns GPUs [i * tp, (i + 1) * tp) (tp = tensor_parallelism); on CPU all share it."""
        e = cfg.engine
        n, tp = e.data_parallelism, max(1, e.tensor_parallelism)
        if n < 1:
            raise BackendError(f"data_parallelism={n}: use a positive number of engine copies")
        if factory is None:
            factory = _default_factory
        instances: list[Backend] = []
        try:
            for i in range(n):
                device = e.device
                if e.device == "cuda":
                    device = f"cuda:{i * tp}"
                    _check_gpu_count((i + 1) * tp, n, tp)
                sub = replace(cfg, engine=replace(e, device=device, data_parallelism=1))
                logger.info("data parallel: loading instance %d/%d on %s", i + 1, n, device)
                instances.append(factory(sub, engine_dir))
        except BaseException:
            for inst in instances:  # release what was built; the first error is the report
                _stop_quietly(inst)
            raise
        return cls(instances)

    # --- Backend protocol --------------------------------------------------------------

    def start(self, sink: OutputSink) -> None:
        """Start every instance; if one cannot, release them all and say which failed."""
        self.sink = sink
        for i, inst in enumerate(self.instances):
            try:
                inst.start(_InstanceSink(self, i))
            except BaseException as err:
                for other in self.instances:
                    _stop_quietly(other)
                raise BackendError(f"data parallel instance {i}: {err}") from err

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        batches: list[list[GenerationRequest]] = [[] for _ in self.instances]
        with self._lock:
            for r in requests:
                i = self._pick()
                batches[i].append(r)
                self.num_outstanding[i] += 1
                self.num_submitted[i] += 1
        for i, batch in enumerate(batches):
            if batch:
                try:
                    self.instances[i].submit(batch)
                except BackendError as err:
                    raise BackendError(f"data parallel instance {i}: {err}") from err

    def flush(self) -> None:
        for inst in self.instances:
            inst.flush()

    def stop(self) -> None:
        """Stop every instance (even after one fails), then report all failures at once."""
        errors: list[tuple[int, BaseException]] = []
        for i, inst in enumerate(self.instances):
            try:
                inst.stop()
            except Exception as err:  # noqa: BLE001 (collected and re-raised below)
                errors.append((i, err))
        if errors:
            detail = "; ".join(f"instance {i}: {err}" for i, err in errors)
            raise BackendError(
                f"{len(errors)} of {len(self.instances)} data parallel instances failed: {detail}"
            ) from errors[0][1]
        logger.info("data parallel: requests per instance %s", self.num_submitted)

    # --- placement ---------------------------------------------------------------------

    def _pick(self) -> int:
        """Fewest outstanding requests; ties go to the first index after the last pick."""
        n = len(self.instances)
        order = [(self._last_pick + 1 + k) % n for k in range(n)]
        best = min(order, key=lambda i: self.num_outstanding[i])
        self._last_pick = best
        return best


def _default_factory(cfg: HarnessConfig, engine_dir: Path | None) -> Backend:
    """One copy. On GPUs, or with tensor parallelism, in a process of its own
    (process_backend.py): copies load side by side, each has its own GIL for its host work
    (one GIL shared by 8 engine threads would bound short steps), and a process holds one
    torch.distributed group. CPU copies (tests) share this process."""
    if cfg.engine.tensor_parallelism > 1 or cfg.engine.device.startswith("cuda"):
        from harness.backends.process_backend import ProcessBackend

        return ProcessBackend.from_config(cfg, engine_dir)
    return make_torch_backend(cfg, engine_dir)


def make_torch_backend(
    cfg: HarnessConfig, engine_dir: Path | None, on_rank_exit: Callable[[str], None] | None = None
) -> TorchBackend:
    """A TorchBackend on cfg.engine.device; on a GPU, pinned to it."""
    if not cfg.engine.device.startswith("cuda"):
        return TorchBackend.from_config(cfg, engine_dir, on_rank_exit)
    import torch

    # Built under its device, so that CUDA graphs are captured on that GPU's streams.
    with torch.cuda.device(torch.device(cfg.engine.device)):
        return DeviceTorchBackend.from_config(cfg, engine_dir, on_rank_exit)


class DeviceTorchBackend(TorchBackend):
    """A TorchBackend whose worker thread makes its engine's GPU the current device
    (Triton launches and graph replays use the thread's current device, not the tensors')."""

    def _loop(self) -> None:
        import torch

        torch.cuda.set_device(self.engine.model_runner.device)
        super()._loop()


def _check_gpu_count(needed: int, dp: int, tp: int) -> None:
    import torch

    have = torch.cuda.device_count()
    if needed > have:
        raise BackendError(
            f"data_parallelism={dp} x tensor_parallelism={tp} needs {dp * tp} GPUs, this machine "
            f"has {have}; lower --data_parallelism (or --tensor_parallelism)"
        )


def _stop_quietly(inst: Backend) -> None:
    try:
        inst.stop()
    except Exception:  # noqa: BLE001 (cleanup after an earlier, reported failure)
        logger.exception("data parallel: error while releasing an instance")
