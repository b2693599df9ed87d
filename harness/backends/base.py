"""The Backend protocol: what the LoadGen SUT needs from any inference engine.

A backend takes generation requests without blocking, runs them on its own thread(s), and
reports a first-token event and a finished event per request through an OutputSink.
It knows nothing of LoadGen.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GenerationRequest:
    request_id: int  # unique per submission; the SUT maps it back to LoadGen's sample id
    prompt_token_ids: list[int]
    max_new_tokens: int
    min_new_tokens: int = 1
    eos_token_id: int | None = None
    # Speed runs with dummy weights: ignore EOS and emit exactly this many tokens.
    fixed_output_len: int = 0


class OutputSink(Protocol):
    def on_first_token(self, request_id: int, token_id: int) -> None: ...

    # token_ids: all generated tokens, the first included; at most one EOS, at the end.
    def on_finished(self, request_id: int, token_ids: list[int]) -> None: ...

    # The backend can finish nothing more (its worker died): every request not yet finished
    # never will be. Called at most once per backend; submit() and stop() then raise.
    def on_failed(self, error: str) -> None: ...


class Backend(Protocol):
    name: str

    def start(self, sink: OutputSink) -> None: ...

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Enqueue and return at once."""
        ...

    def flush(self) -> None: ...

    def stop(self) -> None:
        """Finish what was submitted, then release the worker threads."""
        ...


class BackendError(RuntimeError):
    """A backend cannot start or run with the given settings (message says the fix)."""


class QueueWorkerBackend:
    """Base for backends that serve requests from one worker thread.

    Subclasses implement `_serve(batch)`, which runs a list of requests to completion and
    reports through `self.sink`. The queue gives `submit` its non-blocking contract.
    """

    name = "base"

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.sink: OutputSink | None = None
        self._queue: queue.Queue[GenerationRequest | None] = queue.Queue()
        self._submit_lock = threading.Lock()  # a submit's requests enter the queue together
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, sink: OutputSink) -> None:
        self.sink = sink
        self._thread = threading.Thread(target=self._loop, name=f"{self.name}-worker", daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        if self._error is not None:
            raise BackendError(f"{self.name} backend worker failed: {self._error!r}")
        with self._submit_lock:
            for r in requests:
                self._queue.put(r)

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise BackendError(
                f"{self.name} backend worker failed: {self._error!r}"
            ) from self._error

    def _next_batch(self) -> list[GenerationRequest] | None:
        """Block for one request, then take what else is already waiting (up to max_batch).
        A submit in progress finishes first, so batches do not depend on thread timing."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        with self._submit_lock:
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # keep the stop marker for the next round
                    break
                batch.append(item)
        return batch

    def _loop(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._serve(batch)
        except BaseException as e:  # surfaced by submit()/stop(); the thread must not vanish
            self._error = e
            if self.sink is not None:
                self.sink.on_failed(f"{self.name} backend worker failed: {e!r}")
            raise

    def _serve(self, batch: list[GenerationRequest]) -> None:
        raise NotImplementedError
