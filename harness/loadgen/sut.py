"""The LoadGen SUT and QSL over any Backend: issue_query only enqueues; events become responses."""

from __future__ import annotations

import logging
import threading

import mlperf_loadgen as lg
import numpy as np

from harness.backends.base import Backend, BackendError, GenerationRequest
from harness.config.schema import HarnessConfig
from harness.dataset import Dataset

logger = logging.getLogger(__name__)
PROGRESS_EVERY = 50  # completions between progress log lines


class SUT:
    """Maps LoadGen samples to backend requests and backend events to LoadGen responses."""

    def __init__(self, cfg: HarnessConfig, backend: Backend, dataset: Dataset) -> None:
        self.backend = backend
        self.dataset = dataset
        self.max_new_tokens = cfg.benchmark.max_new_tokens
        self.min_new_tokens = cfg.benchmark.min_new_tokens
        self.eos_token_id = cfg.benchmark.eos_token_id
        self.use_reference_lengths = cfg.engine.dummy_weights  # dummy: reference lengths, no EOS
        self.streams_first_token = cfg.scenario.loadgen_scenario != "Offline"
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, int] = {}  # request_id -> LoadGen sample id
        self._first_sent: set[int] = set()
        self.failure: str | None = None  # the backend's error, once it can finish nothing more
        self.num_completed = 0
        self.num_tokens = 0
        self.sut = lg.ConstructSUT(self.issue_query, self.flush_queries)
        self.qsl = lg.ConstructQSL(
            len(dataset), self.performance_sample_count, self._load, self._unload
        )

    @property
    def performance_sample_count(self) -> int:
        return len(self.dataset)

    def _load(self, indices: list[int]) -> None:
        pass  # the whole (memory-mapped) dataset is already in RAM

    def _unload(self, indices: list[int]) -> None:
        pass

    def issue_query(self, samples: list[lg.QuerySample]) -> None:
        requests = []
        with self._lock:
            failed = self.failure is not None
            for s in [] if failed else samples:
                request_id = self._next_id
                self._next_id += 1
                self._pending[request_id] = s.id
                fixed = int(self.dataset.output_lens[s.index]) if self.use_reference_lengths else 0
                requests.append(
                    GenerationRequest(
                        request_id=request_id,
                        prompt_token_ids=self.dataset.prompt(s.index),
                        max_new_tokens=self.max_new_tokens,
                        min_new_tokens=self.min_new_tokens,
                        eos_token_id=self.eos_token_id,
                        fixed_output_len=min(max(fixed, 2), self.max_new_tokens) if fixed else 0,
                    )
                )
        if failed:  # the backend is gone: answer at once, empty
            self._complete_empty([s.id for s in samples])
            return
        try:
            self.backend.submit(requests)
        except BackendError as err:  # failed since the check above: never raise into LoadGen
            self.on_failed(str(err))

    def flush_queries(self) -> None:
        self.backend.flush()

    def on_first_token(self, request_id: int, token_id: int) -> None:
        if not self.streams_first_token:
            return
        with self._lock:
            sample_id = self._pending.get(request_id)  # None: completed empty after a failure
            if request_id in self._first_sent or sample_id is None:
                return
            self._first_sent.add(request_id)
        data = np.array([token_id], dtype=np.int32)
        lg.FirstTokenComplete([lg.QuerySampleResponse(sample_id, data.ctypes.data, data.nbytes)])

    def on_finished(self, request_id: int, token_ids: list[int]) -> None:
        if token_ids and self.streams_first_token and request_id not in self._first_sent:
            self.on_first_token(request_id, token_ids[0])  # exactly one, before completion
        with self._lock:
            sample_id = self._pending.pop(request_id, None)
            if sample_id is None:  # completed empty after a failure
                return
            self._first_sent.discard(request_id)
            self.num_completed += 1
            self.num_tokens += len(token_ids)
            if self.num_completed % PROGRESS_EVERY == 0:
                logger.info("%d samples completed, %d tokens", self.num_completed, self.num_tokens)
        data = np.asarray(token_ids, dtype="<i4")  # little-endian int32, as the checker reads
        response = lg.QuerySampleResponse(sample_id, data.ctypes.data, data.nbytes, len(token_ids))
        lg.QuerySamplesComplete([response])  # copies the bytes before returning

    def on_failed(self, error: str) -> None:
        """The backend can finish nothing more: complete every pending sample empty, so that
        LoadGen ends the test instead of waiting forever; the run then fails with the error
        (backend.stop() raises it) and keeps its logs."""
        with self._lock:
            if self.failure is None:
                self.failure = error
                logger.error("backend failed: %s; completing %d pending samples empty so that "
                             "LoadGen can end the test", error, len(self._pending))  # fmt: skip
            pending = list(self._pending.items())
            self._pending.clear()
            needs_first = [sid for rid, sid in pending if rid not in self._first_sent]
            self._first_sent.clear()
        self._complete_empty([sid for _, sid in pending], needs_first)  # LoadGen: not under lock

    def _complete_empty(self, sample_ids: list[int], needs_first: list[int] | None = None) -> None:
        """Empty responses (a first token too, where one is due and not yet sent)."""
        if self.streams_first_token:
            first = sample_ids if needs_first is None else needs_first
            lg.FirstTokenComplete([lg.QuerySampleResponse(sid, 0, 0) for sid in first])
        lg.QuerySamplesComplete([lg.QuerySampleResponse(sid, 0, 0, 0) for sid in sample_ids])

    def destroy(self) -> None:
        lg.DestroyQSL(self.qsl)
        lg.DestroySUT(self.sut)
