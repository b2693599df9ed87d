"""A torch backend in a child process: one engine copy of a data- or tensor-parallel run.

Every GPU copy gets a process of its own: copies load side by side, each has its own GIL for
its host work, and a process holds one torch.distributed group (there TP rank 0 runs an
ordinary TorchBackend, which spawns ranks 1..T-1). This class relays over two queues:
requests in; ready, first-token, finished, failed, stopped and error messages out. A copy
that dies without a word is noticed within a second by its exit code, and reported to the
sink like a failed worker.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from harness.backends.base import BackendError, GenerationRequest, OutputSink
from harness.config.schema import HarnessConfig

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often a waiting parent checks that the child still runs
LOAD_TIMEOUT_S = 3600.0  # a 70B copy loads in minutes; a hung load must not hang the run


class ProcessBackend:
    name = "torch-process"

    def __init__(
        self, proc, requests_q, events_q, label: str, load_timeout_s: float = LOAD_TIMEOUT_S
    ) -> None:  # noqa: ANN001
        self.label = label
        self.load_timeout_s = load_timeout_s
        self.sink: OutputSink | None = None
        self._proc = proc
        self._requests = requests_q
        self._events = events_q
        self._reader: threading.Thread | None = None
        self._error: str | None = None
        self._stopped = False

    @classmethod
    def from_config(
        cls, cfg: HarnessConfig, engine_dir: Path | None = None,
        load_timeout_s: float = LOAD_TIMEOUT_S,
    ) -> ProcessBackend:  # fmt: skip
        """Spawn the copy on cfg.engine.device; it loads while the caller goes on (copies of
        a DP run load side by side). start() waits for it: load errors surface there, before
        LoadGen starts."""
        ctx = mp.get_context("spawn")
        requests_q, events_q = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=_child_main, args=(cfg, engine_dir, requests_q, events_q),
                           name=f"torch-{cfg.engine.device}")  # fmt: skip
        proc.start()
        backend = cls(proc, requests_q, events_q, f"copy on {cfg.engine.device}", load_timeout_s)
        atexit.register(backend._kill)  # never leave a copy (and its TP ranks) behind
        return backend

    # --- Backend protocol --------------------------------------------------------------

    def start(self, sink: OutputSink) -> None:
        msg = self._next_message(self.load_timeout_s)
        if msg[0] != "ready":
            self._stopped = True
            self._kill()
            raise BackendError(f"torch backend {self.label} failed to load: {msg[1]}")
        self.sink = sink
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-events", daemon=True)
        self._reader.start()

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        self._raise_if_failed()
        self._requests.put(("submit", list(requests)))

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        """Finish what was submitted, then end the child (its engine log line is its own)."""
        if self._stopped:
            return
        self._stopped = True
        if self._proc.is_alive():
            self._requests.put(("stop",))
        if self._reader is not None:
            self._reader.join()
        self._proc.join(timeout=60)  # not started: a copy still loading is ended below
        self._kill()
        self._raise_if_failed()

    # --- relay -------------------------------------------------------------------------

    def _next_message(self, timeout_s: float) -> tuple:
        """The child's next message; ("error", ...) if it died or stayed silent too long."""
        waited = 0.0
        while True:
            try:
                return self._events.get(timeout=POLL_S)
            except queue.Empty:
                waited += POLL_S
            if not self._proc.is_alive():
                try:  # its last words may have arrived just before it exited
                    return self._events.get(timeout=POLL_S)
                except queue.Empty:
                    self._error = f"process exited with code {self._proc.exitcode}"
                    return ("error", self._error)
            if waited >= timeout_s:
                self._error = f"no message in {timeout_s:.0f} s"
                return ("error", self._error)

    def _read(self) -> None:
        while True:
            msg = self._next_message(float("inf"))
            kind = msg[0]
            if kind == "first_token":
                self.sink.on_first_token(msg[1], msg[2])
            elif kind == "finished":
                self.sink.on_finished(msg[1], msg[2])
            elif kind == "stopped":
                return
            else:  # failed / error: the child can serve nothing more (or has exited)
                self._error = self._error or msg[1]
                logger.error("torch backend %s failed: %s", self.label, self._error)
                self.sink.on_failed(f"{self.label}: {self._error}")
                return

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise BackendError(f"torch backend {self.label} failed: {self._error}")

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=30)


class _QueueSink:
    def __init__(self, events_q) -> None:  # noqa: ANN001
        self.events = events_q

    def on_first_token(self, request_id: int, token_id: int) -> None:
        self.events.put(("first_token", request_id, token_id))

    def on_finished(self, request_id: int, token_ids: list[int]) -> None:
        self.events.put(("finished", request_id, token_ids))

    def on_failed(self, error: str) -> None:
        self.events.put(("failed", error))


def _child_main(cfg: HarnessConfig, engine_dir: Path | None, requests_q, events_q) -> None:  # noqa: ANN001
    """The copy's process: build its engine, then serve submits until told to stop."""
    fmt = f"[{cfg.engine.device}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)
    # Terminated by the parent: exit normally, so that the TP ranks are told to end too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    from harness.backends.data_parallel import make_torch_backend

    def on_rank_exit(message: str) -> None:  # rank 0 would wait for the dead rank: end here
        events_q.put(("error", message))
        events_q.close()
        events_q.join_thread()  # the message reaches the parent before this process ends
        os._exit(1)

    try:
        backend = make_torch_backend(cfg, engine_dir, on_rank_exit)
    except BaseException as err:  # noqa: BLE001 (reported to the parent, which raises)
        events_q.put(("error", f"{type(err).__name__}: {err}"))
        return
    events_q.put(("ready",))
    backend.start(_QueueSink(events_q))
    try:
        while (msg := requests_q.get())[0] == "submit":
            backend.submit(msg[1])
        backend.stop()
    except BaseException as err:  # noqa: BLE001
        events_q.put(("error", f"{type(err).__name__}: {err}"))
        return
    events_q.put(("stopped",))
